"""The one interface every trained model is scored through (numpy in, numpy out)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cifake.analysis.calibration import apply_temperature
from cifake.core.errors import ConfigError
from cifake.data.decode import RESAMPLING

log = logging.getLogger(__name__)

NO_TTA: Mapping[str, Any] = {"mode": "none"}
UNSURE = "UNSURE"  # the answer inside the unsure band
OUT_OF_SCOPE = "OUT_OF_SCOPE"  # the answer for an image unlike the training data (cifake.models.scope)


def device_name(device: Any) -> str:
    """``device`` as the files and answers record it: ``cpu``, ``cuda:0``, ..."""
    name = str(device)
    if name == "cuda":  # torch.device("cuda") runs on the current device: name it
        import torch  # only a checkpoint on CUDA gets here, and it has loaded torch already

        name = f"cuda:{torch.cuda.current_device()}"
    return name


@dataclass(frozen=True)
class Scorer:
    """A trained model as the jobs see it, whatever file it came from.

    ``score`` maps one uint8 batch ``(N, 3, S, S)`` to p(REAL) ``(N,)`` float32, with the
    test-time augmentation ``tta`` already applied; :meth:`p_real` feeds it any number of images
    in batches, computed in ``precision`` on ``device`` (:attr:`computed`, which every file and
    answer records). ``model`` is what was loaded; for a network (``explainable``) it is the PyTorch
    module Grad-CAM explains, at ``gradcam_layer`` by default.
    """

    kind: str  # "checkpoint", "safetensors", "forest" or "onnx" (see cifake.scoring.open_model_file.MODEL_KINDS)
    source: str  # the file it was opened from
    score: Callable[[np.ndarray], np.ndarray]
    classes: tuple[str, ...]
    image_size: int | None  # the side of the square images it was trained on, where recorded
    resample: str | None  # the Pillow filter its training images were resized with, where recorded
    threshold: float | None = None  # the decision threshold stored with the model (model.json), if any
    tta: Mapping[str, Any] = field(default_factory=lambda: dict(NO_TTA))
    model: Any = None  # what was loaded: a Classifier, a ForestClassifier or an onnxruntime session
    gradcam_layer: str | None = None
    device: Any = None  # where it runs: a torch.device for a network, "cpu" for a forest or an ONNX export
    # What its scores are computed in, as scoring.precision names it (cifake.models.precision.SCORING_PRECISIONS).
    precision: str | None = None
    unsure_band: tuple[float, float] | None = None  # (low, high): UNSURE when low < p(REAL) <= high
    training: Mapping[str, Any] | None = None  # the data settings it was trained with (augmentation, degradations)
    temperature: float | None = None  # the temperature applied to its p(REAL) (see with_temperature), if any
    compute: Mapping[str, Any] | None = None  # its training compute, where recorded (cifake.models.flops)
    # uint8 batch -> out-of-scope score (cifake.models.scope), on the images as they are (no TTA); None: the
    # model file has none. scope_settings: its method, threshold, validation_flagged and fit_images.
    scope: Callable[[np.ndarray], np.ndarray] | None = None
    scope_settings: Mapping[str, Any] | None = None

    @property
    def explainable(self) -> bool:
        """Whether Grad-CAM can explain this model (a PyTorch network; not a forest or ONNX)."""
        return self.kind in ("checkpoint", "safetensors") and self.model is not None

    @property
    def computed(self) -> dict[str, str]:
        """The precision and device that compute its scores, as metrics.json, results.json, predictions
        and the server's answers record them: ``{"precision": "32-true", "device": "cpu"}``."""
        return {"precision": str(self.precision), "device": device_name(self.device)}

    def p_real(self, images: np.ndarray, batch_size: int = 512, progress: str | None = None) -> np.ndarray:
        """p(REAL) float32 for uint8 ``images`` ``(N, 3, S, S)``, ``batch_size`` at a time (a
        progress bar titled ``progress`` when given)."""
        return self._batched(self.score, images, batch_size, progress, "probabilities")

    def out_of_scope(self, images: np.ndarray, batch_size: int = 512,
                     progress: str | None = None) -> np.ndarray | None:
        """The out-of-scope score of each uint8 image (:mod:`cifake.models.scope`), ``None`` for a model
        file that stores none."""
        if self.scope is None:
            return None
        return self._batched(self.scope, images, batch_size, progress, "out-of-scope scores")

    @property
    def scope_threshold(self) -> float | None:
        """The score above which an image is answered ``OUT_OF_SCOPE`` (``None``: never)."""
        return None if self.scope is None or not self.scope_settings else float(self.scope_settings["threshold"])

    def _batched(self, fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int,
                 progress: str | None, what: str) -> np.ndarray:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        starts = range(0, len(images), batch_size)
        out = [np.asarray(fn(np.ascontiguousarray(images[i:i + batch_size])), dtype=np.float32).reshape(-1)
               for i in tqdm(starts, desc=progress, unit="batch", disable=progress is None or len(starts) < 2)]
        values = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        if len(values) != len(images):
            raise RuntimeError(f"{self.source} returned {len(values)} {what} for {len(images)} images; "
                               "please report this as a bug")
        return values

    def check_image_size(self, image_size: int, key: str = "data.image_size") -> None:
        """Refuse to score images of another size than the model was trained on."""
        if self.image_size is not None and self.image_size != image_size:
            raise ConfigError(f"{self.source} was trained on {self.image_size}px images but {key}={image_size}; "
                              f"set {key}={self.image_size}")


def with_temperature(scorer: Scorer, temperature: float | None) -> Scorer:
    """``scorer`` whose every p(REAL) (TTA views averaged first) goes through :func:`apply_temperature`;
    on a scorer that already has one the two combine (``T1 * T2``). ``None`` or 1: ``scorer`` itself."""
    if temperature is None or float(temperature) == 1.0:
        return scorer
    temperature = float(temperature)
    apply_temperature(np.zeros(0), temperature)  # checked now, not at the first batch
    raw = scorer.score

    def score(images: np.ndarray) -> np.ndarray:
        return apply_temperature(raw(images), temperature)

    return dataclasses.replace(scorer, score=score, temperature=(scorer.temperature or 1.0) * temperature)


def check_band(band: tuple[float, float] | None, threshold: float) -> tuple[float, float] | None:
    """``band`` as floats if it contains ``threshold`` within [0, 1] (``None``: no band); a
    :class:`ConfigError` otherwise."""
    if band is not None and not 0.0 <= band[0] <= threshold <= band[1] <= 1.0:
        raise ConfigError(f"unsure band {list(band)} must satisfy 0 <= low <= threshold ({threshold}) <= high <= 1")
    return None if band is None else (float(band[0]), float(band[1]))


def parse_band(setting: Any, threshold: float) -> str | tuple[float, float] | None:
    """An ``unsure_band`` setting, checked: ``auto`` (the band recorded with the model, whatever it is),
    ``None`` (no band) or ``[low, high]``, which must contain ``threshold``."""
    if setting == "auto" or setting is None:
        return setting
    try:
        band = (float(setting[0]), float(setting[1]))
    except (TypeError, ValueError, IndexError, KeyError):
        raise ConfigError(f"unsure_band={setting!r}; use auto, null or [low, high]") from None
    return check_band(band, threshold)


def resolve_band(setting: Any, scorer: Scorer, threshold: float) -> tuple[float, float] | None:
    """The unsure band to answer with: ``auto``, the one recorded with the model (none if it has
    none); ``None``, no band; ``[low, high]``, that band. It must contain ``threshold``."""
    if setting == "auto":
        return check_band(scorer.unsure_band, threshold)
    band = parse_band(setting, threshold)
    assert not isinstance(band, str)
    return band


def check_threshold(threshold: float) -> None:
    """Refuse a decision threshold outside [0, 1]."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold} must lie in [0, 1] (it applies to p(REAL))")


def choose_resample(configured: str | None, recorded: str | None, source: str) -> str:
    """The resampling filter to resize inputs with: ``configured`` if set, else the one the model
    was trained with (``recorded``, from ``source``)."""
    choice = configured or recorded
    if choice is None:
        raise ConfigError(
            f"{source} does not record how its training images were resized; set resample=bicubic "
            f"(data.resample's default, as CIFAKE was made by downscaling) or one of {sorted(RESAMPLING)}"
        )
    if choice not in RESAMPLING:
        raise ConfigError(f"resample={choice!r}; choose one of {sorted(RESAMPLING)}")
    if recorded and configured and configured != recorded:
        log.warning("resample=%s, but %s was trained on images resized with %s", configured, source, recorded)
    return choice


def resolve_scope(setting: Any, scorer: Scorer) -> Scorer:
    """``scorer`` answering out of scope as ``out_of_scope`` says (conf/scoring/default.yaml): ``auto``, with
    the score and threshold stored in its model file (none if it has none); ``None``, never; a number, the
    stored score with that threshold."""
    if setting == "auto":
        return scorer
    if setting is None:
        return dataclasses.replace(scorer, scope=None, scope_settings=None)
    try:
        threshold = float(setting)
    except (TypeError, ValueError):
        raise ConfigError(f"out_of_scope={setting!r}; use auto, null or a score threshold > 0") from None
    if scorer.scope is None:
        raise ConfigError(f"out_of_scope={setting!r}, but {scorer.source} stores no out-of-scope score; train it with "
                          "out_of_scope_fit.method=mahalanobis, or leave out_of_scope=auto")
    if not threshold > 0:
        raise ConfigError(f"out_of_scope={setting!r}; a score threshold is > 0 (about 1 is a typical training image)")
    return dataclasses.replace(scorer, scope_settings={**dict(scorer.scope_settings or {}), "threshold": threshold})


def verdicts(p_real: np.ndarray, classes: tuple[str, ...] | list[str], threshold: float,
             band: tuple[float, float] | None = None, scope: np.ndarray | None = None,
             scope_threshold: float | None = None) -> list[str]:
    """The answer for each image, as every job and the server give it: ``OUT_OF_SCOPE`` where its
    out-of-scope score exceeds ``scope_threshold`` (whatever p(REAL) says: the model has no ground
    there), else ``UNSURE`` inside the unsure ``band`` (low, high], else ``classes[1]`` when
    p(REAL) > ``threshold`` and ``classes[0]`` otherwise."""
    answers = [classes[1] if p > threshold else classes[0] for p in np.asarray(p_real).tolist()]
    if band is not None:
        answers = [UNSURE if band[0] < p <= band[1] else a for p, a in zip(np.asarray(p_real).tolist(), answers,
                                                                             strict=True)]
    if scope is not None and scope_threshold is not None:
        answers = [OUT_OF_SCOPE if d > scope_threshold else a for d, a in zip(np.asarray(scope).tolist(), answers,
                                                                               strict=True)]
    return answers


def scope_reason(score: float, settings: Mapping[str, Any]) -> str:
    """Why an image was answered ``OUT_OF_SCOPE``, in one line."""
    return (f"its features lie {score:.2f} from the training images' (out-of-scope score; above "
            f"{float(settings['threshold']):.2f}, as only {100 * float(settings['validation_flagged']):.0f}% of CIFAKE "
            "validation images do): the model was not trained on images like this one, so its p(REAL) means little")
