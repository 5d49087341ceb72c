"""Scoring: open any trained model file and get p(REAL) for uint8 images through one interface.

:func:`open_scorer` reads a Lightning checkpoint (``.ckpt``), a random forest (``.skops``), an
ONNX export (``.onnx`` with its ``model.json``) or a safetensors export (``model.safetensors`` with
its ``config.json``, as the bundled model ships: :func:`model_or_bundled`) and returns a :class:`Scorer`. Every job and
callback scores through it. Importing this package loads neither torch nor scikit-learn: each
kind of file pulls in only what it needs when it is opened, so predicting from ONNX stays light.
"""

from cifake.scoring.open_model_file import MODEL_KINDS, model_kind, model_or_bundled, open_scorer
from cifake.scoring.scorer import Scorer, check_threshold, choose_resample, resolve_band

__all__ = ["MODEL_KINDS", "Scorer", "check_threshold", "choose_resample", "model_kind", "model_or_bundled",
           "open_scorer", "resolve_band"]
