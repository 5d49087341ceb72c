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
# What scoring.precision may be (conf/scoring/default.yaml), in Lightning's names.
PRECISIONS: Mapping[str, str] = {"32-true": "float32", "bf16-mixed": "bf16 autocast"}


def check_precision(precision: str) -> str:
    """``precision`` if ``scoring.precision`` may be it; a :class:`ConfigError` that says what it may be otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"scoring.precision={precision!r}; choose 32-true (float32 on every device: the same "
                          "numbers on every machine and in an ONNX export) or bf16-mixed (bf16 autocast: faster "
                          "where bf16 is native, p(REAL) within about 1e-2 of float32)")
    return precision


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

    kind: str  # "checkpoint", "safetensors", "forest" or "onnx" (see cifake.scoring.open.MODEL_KINDS)
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
    precision: str | None = None  # what its scores are computed in, as scoring.precision names it (see PRECISIONS)
    unsure_band: tuple[float, float] | None = None  # (low, high): UNSURE when low < p(REAL) <= high
    training: Mapping[str, Any] | None = None  # the data settings it was trained with (augmentation, degradations)
    temperature: float | None = None  # the temperature applied to its p(REAL) (see with_temperature), if any
    compute: Mapping[str, Any] | None = None  # its training compute, where recorded (cifake.models.flops)

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
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        starts = range(0, len(images), batch_size)
        out = [np.asarray(self.score(np.ascontiguousarray(images[i:i + batch_size])), dtype=np.float32).reshape(-1)
               for i in tqdm(starts, desc=progress, unit="batch", disable=progress is None or len(starts) < 2)]
        p = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        if len(p) != len(images):
            raise RuntimeError(f"{self.source} returned {len(p)} probabilities for {len(images)} images; "
                               "please report this as a bug")
        return p

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


def resolve_band(setting: Any, scorer: Scorer, threshold: float) -> tuple[float, float] | None:
    """The unsure band to answer with: ``auto``, the one recorded with the model (none if it has
    none); ``None``, no band; ``[low, high]``, that band. It must contain ``threshold``."""
    if setting == "auto":
        band = scorer.unsure_band
    elif setting is None:
        band = None
    else:
        try:
            band = (float(setting[0]), float(setting[1]))
        except (TypeError, ValueError, IndexError, KeyError):
            raise ConfigError(f"unsure_band={setting!r}; use auto, null or [low, high]") from None
    if band is not None and not 0.0 <= band[0] <= threshold <= band[1] <= 1.0:
        raise ConfigError(f"unsure band {list(band)} must satisfy 0 <= low <= threshold ({threshold}) <= high <= 1")
    return None if band is None else (float(band[0]), float(band[1]))


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
