"""Which kind of model file a path is, checked before anything in it is read, and opening it."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cifake.core.errors import ConfigError, ModelFileError
from cifake.models.precision import SCORING_PRECISIONS, check_scoring_precision
from cifake.scoring.scorer import NO_TTA, Scorer
from cifake.scoring.weights import WEIGHTS_FILE, bundled_weights

log = logging.getLogger(__name__)

# Suffix -> kind; what each kind is, for messages.
MODEL_KINDS: dict[str, tuple[str, ...]] = {"checkpoint": (".ckpt",), "forest": (".skops",), "onnx": (".onnx",),
                                           "safetensors": (".safetensors",)}
DESCRIPTIONS = {
    "checkpoint": "a .ckpt checkpoint written by train.py (e.g. outputs/train/runs/<run>/checkpoints/best.ckpt)",
    "forest": "a .skops forest written by train.py model=rf (<run>/checkpoints/forest.skops)",
    "onnx": "a model.onnx written by export.py (with its model.json beside it)",
    "safetensors": "a folder written by export.py format=safetensors (model.safetensors and config.json)",
}


def model_file(path: str | Path) -> Path:
    """``path``, or for a folder holding a safetensors export, its weights file."""
    path = Path(path).expanduser()
    return path / WEIGHTS_FILE if path.is_dir() and (path / WEIGHTS_FILE).is_file() else path


def model_or_bundled(ckpt_path: str | Path | None) -> str:
    """``ckpt_path``, or without one the model that ships with the package (``cifake/bundled/``: its
    folder), said in one log line; a :class:`ConfigError` when this copy has no bundled model."""
    if ckpt_path is not None and str(ckpt_path) != "":
        return str(ckpt_path)
    weights = bundled_weights()
    if weights is None:
        raise ConfigError("no ckpt_path given and this copy of cifake has no bundled model (cifake/bundled/); pass "
                          "ckpt_path=<a train.py checkpoint, a forest.skops, an export.py model.onnx or safetensors "
                          "folder>")
    log.info("No ckpt_path: using the bundled model %s (%s; its model card: docs/model_card.md)", weights.parent,
             bundled_name())
    return str(weights.parent)


def bundled_name() -> str:
    """The bundled model in a few words: ``the bundled model (experiment=cpu_photo)``."""
    import json

    from cifake.scoring.weights import BUNDLED_DIR, CONFIG_FILE

    try:
        recipe = json.loads((BUNDLED_DIR / CONFIG_FILE).read_text()).get("recipe") or {}
    except (OSError, ValueError, AttributeError):
        recipe = {}
    return f"the bundled model (experiment={recipe.get('experiment') or 'unknown'})"


def expected(kinds: Sequence[str]) -> str:
    """``kinds`` in words, for messages."""
    return " or ".join(DESCRIPTIONS[k] for k in kinds)


def model_kind(path: str | Path, allowed: Sequence[str] = tuple(MODEL_KINDS), key: str = "ckpt_path") -> str:
    """The kind of model file at ``path`` (``checkpoint``, ``forest`` or ``onnx``), from its suffix,
    checked against ``allowed`` and against its first bytes; raises :class:`ModelFileError` with what
    was expected when it is missing, empty, truncated or not what its name says. Nothing is loaded.
    A folder holding a safetensors export stands for its ``model.safetensors``."""
    path = model_file(path)
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
    ``contract``: an ONNX file's ``model.json`` (default: beside it). A safetensors export (its
    folder or its ``model.safetensors``) runs like a checkpoint, without Lightning. The precision and
    device that will compute the scores are logged (and recorded by :attr:`Scorer.computed`)."""
    check_scoring_precision(precision)
    kind = model_kind(path, allowed, key)
    path = model_file(path)
    tta = dict(tta or NO_TTA)
    if kind == "checkpoint":
        from cifake.scoring.network import checkpoint_scorer  # torch and lightning: only for checkpoints

        scorer = checkpoint_scorer(path, device, precision, tta)
    elif kind == "safetensors":
        from cifake.scoring.weights import weights_scorer  # torch and safetensors, no Lightning

        scorer = weights_scorer(path, device, precision, tta)
    elif kind == "forest":
        from cifake.models.forest import FOREST_COMPUTED, ForestClassifier, forest_score  # scikit-learn: forests only

        if tta.get("mode", "none") != "none":
            raise ConfigError("tta averages a network's predictions over flipped and shifted views; a forest of "
                              "image statistics would score every view alike: leave tta.mode=none for .skops")
        # Read by skops, which builds only trusted types (ForestClassifier.load); it records the resampling its
        # training images were resized with.
        forest = ForestClassifier.load(path)
        scorer = Scorer(kind="forest", source=str(path), score=forest_score(forest), classes=tuple(forest.classes),
                        image_size=forest.image_size, resample=forest.resample, model=forest, **FOREST_COMPUTED)
    else:
        from cifake.scoring.onnx import onnx_scorer

        scorer = onnx_scorer(path, Path(contract).expanduser() if contract else path.with_suffix(".json"), tta)
    if scorer.precision != precision:
        log.warning("scoring.precision=%s applies to PyTorch networks; %s is %s, which computes in %s", precision,
                    path.name, "a forest" if kind == "forest" else "an ONNX export",
                    SCORING_PRECISIONS[scorer.precision])
    computed = scorer.computed
    log.info("Scoring %s in %s on %s (scoring.precision=%s)", path.name, SCORING_PRECISIONS[computed["precision"]],
             computed["device"], precision)
    return scorer


def network_weights(path: str | Path, key: str = "init_from") -> dict[str, Any]:
    """The network weights (``state_dict``) of a checkpoint or a safetensors export (``bundled``: the
    package's model), on the CPU, to start a fit from."""
    path = model_or_bundled(None) if str(path) == "bundled" else path
    scorer = open_scorer(path, precision="32-true", allowed=("checkpoint", "safetensors"), device="cpu", key=key)
    return {name: value.detach().clone() for name, value in scorer.model.net.state_dict().items()}
