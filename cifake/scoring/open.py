"""Which kind of model file a path is, checked before anything in it is read, and opening it."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cifake.core.errors import ConfigError, ModelFileError
from cifake.scoring.scorer import NO_TTA, PRECISIONS, Scorer, check_precision

log = logging.getLogger(__name__)

# Suffix -> kind; what each kind is, for messages.
MODEL_KINDS: dict[str, tuple[str, ...]] = {"checkpoint": (".ckpt",), "forest": (".skops",), "onnx": (".onnx",)}
DESCRIPTIONS = {
    "checkpoint": "a .ckpt checkpoint written by train.py (e.g. outputs/train/runs/<run>/checkpoints/best.ckpt)",
    "forest": "a .skops forest written by train.py model=rf (<run>/checkpoints/forest.skops)",
    "onnx": "a model.onnx written by export.py (with its model.json beside it)",
}


def expected(kinds: Sequence[str]) -> str:
    """``kinds`` in words, for messages."""
    return " or ".join(DESCRIPTIONS[k] for k in kinds)


def model_kind(path: str | Path, allowed: Sequence[str] = tuple(MODEL_KINDS), key: str = "ckpt_path") -> str:
    """The kind of model file at ``path`` (``checkpoint``, ``forest`` or ``onnx``), from its suffix,
    checked against ``allowed`` and against its first bytes; raises :class:`ModelFileError` with what
    was expected when it is missing, empty, truncated or not what its name says. Nothing is loaded."""
    path = Path(path).expanduser()
    want = expected(allowed)
    if not path.is_file():
        raise ModelFileError(f"{key}={str(path)!r} is not a file; pass {want}")
    kind = next((k for k, suffixes in MODEL_KINDS.items() if path.suffix.lower() in suffixes), None)
    if kind is None:
        raise ModelFileError(f"{path} is not a model file this version knows (suffix {path.suffix or 'none'!r}); "
                             f"pass {want}")
    if kind not in allowed:
        raise ModelFileError(f"{path} is {DESCRIPTIONS[kind].split(' written')[0]}, but this job needs {want}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); expected {DESCRIPTIONS[kind]}")
    # Checkpoints and forests are zip archives (torch.save's and skops' formats): a file that is
    # not one is truncated, or something else under the name, possibly a raw pickle, never opened.
    if kind in ("checkpoint", "forest") and not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a readable {'checkpoint' if kind == 'checkpoint' else 'forest'} "
                             f"(not a complete zip archive: truncated, or another kind of file); "
                             f"expected {DESCRIPTIONS[kind]}")
    return kind


def open_scorer(path: str | Path, *, precision: str, allowed: Sequence[str] = tuple(MODEL_KINDS),
                device: str = "auto", tta: Mapping[str, Any] | None = None, contract: str | Path | None = None,
                key: str = "ckpt_path") -> Scorer:
    """A :class:`Scorer` for the model file at ``path``. Checkpoints run on ``device`` (``auto``:
    CUDA when present) at ``precision`` (``scoring.precision``: ``32-true`` or ``bf16-mixed``); a
    forest or an ONNX export computes as it does (float32, on the CPU) whatever ``precision`` says;
    ``tta`` (``mode``, ``shift``, ``padding``) averages every score over test-time views;
    ``contract``: an ONNX file's ``model.json`` (default: beside it). The precision and device
    that will compute the scores are logged (and recorded by :attr:`Scorer.computed`)."""
    check_precision(precision)
    kind = model_kind(path, allowed, key)
    path = Path(path).expanduser()
    tta = dict(tta or NO_TTA)
    if kind == "checkpoint":
        from cifake.scoring.network import checkpoint_scorer  # torch and lightning: only for checkpoints

        scorer = checkpoint_scorer(path, device, precision, tta)
    elif kind == "forest":
        from cifake.scoring.forest import forest_scorer  # scikit-learn: only for forests

        if tta.get("mode", "none") != "none":
            raise ConfigError("tta averages a network's predictions over flipped and shifted views; a forest of "
                              "image statistics would score every view alike: leave tta.mode=none for .skops")
        scorer = forest_scorer(path)
    else:
        from cifake.scoring.onnx import onnx_scorer

        scorer = onnx_scorer(path, Path(contract).expanduser() if contract else path.with_suffix(".json"), tta)
    if scorer.precision != precision:
        log.warning("scoring.precision=%s applies to PyTorch checkpoints; %s is %s, which computes in %s", precision,
                    path.name, "a forest" if kind == "forest" else "an ONNX export", PRECISIONS[scorer.precision])
    computed = scorer.computed
    log.info("Scoring %s in %s on %s (scoring.precision=%s)", path.name, PRECISIONS[computed["precision"]],
             computed["device"], precision)
    return scorer
