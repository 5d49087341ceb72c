"""Scoring with a PyTorch network: a train.py checkpoint, or a LightningModule being trained."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifake.core.atomic import atomic_path
from cifake.core.errors import ConfigError, ModelFileError
from cifake.data.augment import to_unit_float
from cifake.data.labels import CLASSES
from cifake.models.precision import check_scoring_precision, float32_matmul, scoring_arithmetic, warn_if_emulated
from cifake.models.scope import Mahalanobis, scope_from_record
from cifake.scoring.scorer import NO_TTA, Scorer, with_temperature

UNSURE_BAND_KEY = "unsure_band"  # the checkpoint entry holding (low, high)
TEMPERATURE_KEY = "temperature"  # the checkpoint entry holding the temperature fitted on validation
RUN_COMPUTE_KEY = "run_compute"  # best.ckpt's record of the whole run's training compute (train.py)
COMPUTE_KEY = "compute"  # every checkpoint's record of the compute spent up to it (Classifier.on_save_checkpoint)
SCOPE_KEY = "out_of_scope"  # the out-of-scope score fitted after training (cifake.models.scope.scope_record)


@dataclasses.dataclass(frozen=True)
class Answering:
    """How an exported model answers: REAL above ``threshold``; with what its checkpoint stores beside the
    weights, ``UNSURE`` inside the unsure ``band``, p(REAL) calibrated by ``temperature`` and ``OUT_OF_SCOPE``
    above the out-of-scope score's threshold (``scope``: :func:`cifake.models.scope.scope_record`)."""

    threshold: float
    band: list[float] | None
    temperature: float | None
    scope: Mapping[str, Any] | None

    @classmethod
    def of_checkpoint(cls, raw: Mapping[str, Any], threshold: float) -> Answering:
        """``threshold`` with the band, temperature and out-of-scope score the checkpoint ``raw`` stores (each
        ``None`` where it stores none)."""
        return cls(threshold=float(threshold), band=raw.get(UNSURE_BAND_KEY), temperature=raw.get(TEMPERATURE_KEY),
                   scope=raw.get(SCOPE_KEY))


@dataclasses.dataclass(frozen=True)
class TrainingRecord:
    """What a checkpoint records of the model's training: the data module's ``settings`` (augmentation,
    degradations), what that ``data`` was (:meth:`cifake.data.datamodule.CIFAKEDataModule.data_record`) and
    its training ``compute`` (the whole run's where recorded); each ``None`` where it records none."""

    settings: Mapping[str, Any] | None
    data: Mapping[str, Any] | None
    compute: Mapping[str, Any] | None

    @classmethod
    def of_checkpoint(cls, raw: Mapping[str, Any]) -> TrainingRecord:
        """The record in the checkpoint ``raw``."""
        return cls(settings=raw.get("datamodule_hyper_parameters"),
                   data=(raw.get("CIFAKEDataModule") or {}).get("data"),
                   compute=raw.get(RUN_COMPUTE_KEY) or raw.get(COMPUTE_KEY))


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA where there is one, else the CPU; ``gpu`` is CUDA, as Lightning names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device("cuda" if device == "gpu" else device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a device PyTorch knows; use auto, cpu or cuda") from err


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, unpickled with ``weights_only=True``: only tensors and plain
    containers are rebuilt, so a file that would run code is refused, not run."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(f"{path} holds objects a checkpoint never has and was refused unread (a pickle that "
                             f"could run code, or a file from another program); expected a .ckpt written by "
                             f"train.py. ({str(err).splitlines()[0]})") from err
    except Exception as err:  # torch raises many kinds on damaged archives (RuntimeError, EOFError, ...)
        raise ModelFileError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'damaged'}); "
                             "expected a .ckpt written by train.py") from err
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise ModelFileError(f"{path} is a PyTorch file but not a train.py checkpoint (no state_dict and "
                             "hyper_parameters); expected a .ckpt written by train.py")
    return raw


def load_classifier(path: str | Path) -> Any:
    """The :class:`~cifake.models.classifier.Classifier` saved in a train.py checkpoint (safely:
    see :func:`read_checkpoint`), on the CPU."""
    path = Path(path).expanduser()
    return rebuild_classifier(read_checkpoint(path), path)


def rebuild_classifier(raw: Mapping[str, Any], path: Path) -> Any:
    """The Classifier of a checkpoint's contents (:func:`read_checkpoint`)."""
    from cifake.models.classifier import Classifier

    try:
        model = Classifier.from_checkpoint(raw)
    except (TypeError, KeyError, RuntimeError, ConfigError) as err:
        raise ModelFileError(f"{path} is a checkpoint this version cannot rebuild ({err}); retrain, or use the "
                             "version that wrote it") from err
    return model


def trained_resample(raw: Mapping[str, Any]) -> str | None:
    """The ``data.resample`` a checkpoint's training images were resized with, if it records one
    (train.py's checkpoints do: Lightning stores the data module's settings)."""
    return (raw.get("datamodule_hyper_parameters") or {}).get("resample")


def network_score(module: nn.Module, device: torch.device, precision: str = "32-true") -> Callable[
        [np.ndarray], np.ndarray]:
    """uint8 batch -> p(REAL) through ``module.p_real`` (which applies its test-time augmentation),
    scaled as training scales its inputs, on ``device``, in ``precision``
    (:func:`cifake.models.precision.scoring_arithmetic`: true float32, or bf16 autocast for ``bf16-mixed``).
    The module is put in eval mode for the call and given back in the mode it was in; it is moved to
    ``device`` at each call, as a trainer's teardown may have moved it back."""
    precision = check_scoring_precision(str(precision))

    @torch.no_grad()
    def score(images: np.ndarray) -> np.ndarray:
        was_training = module.training
        module.eval().to(device)
        try:
            with scoring_arithmetic(precision, device):
                p = module.p_real(to_unit_float(torch.from_numpy(np.asarray(images)).to(device)))
        finally:
            module.train(was_training)
        return p.float().cpu().numpy()

    return score


def network_features(module: nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> the penultimate features ``(N, D)`` of ``module.net`` in true float32, what an
    out-of-scope score is fitted on."""
    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        was_training = module.training
        module.eval().to(device)
        try:
            with float32_matmul("highest"):
                x = to_unit_float(torch.from_numpy(np.asarray(images)).to(device))
                return module.net.embed(x).float().cpu().numpy()
        finally:
            module.train(was_training)

    return features


def network_scope(module: nn.Module, head: nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> out-of-scope score: ``head`` (:class:`~cifake.models.scope.Mahalanobis`) over
    :func:`network_features`, on the images as they are, in true float32 (as the score was fitted and as
    an export computes it)."""
    features = network_features(module, device)

    @torch.no_grad()
    def scope(images: np.ndarray) -> np.ndarray:
        head.to(device)
        with float32_matmul("highest"):
            return head(torch.from_numpy(features(images)).to(device)).cpu().numpy()

    return scope


def read_scope(raw: Mapping[str, Any], source: str) -> tuple[Mahalanobis | None, dict[str, Any] | None]:
    """The out-of-scope score a checkpoint stores (``SCOPE_KEY``), or ``(None, None)``."""
    record = raw.get(SCOPE_KEY)
    if record is None:
        return None, None
    try:
        return scope_from_record(record)
    except ValueError as err:
        raise ModelFileError(f"{source}: {err}; fit it again with evaluate.py out_of_scope_fit.method=mahalanobis "
                             "store=true") from err


def module_scorer(module: nn.Module, device: torch.device, precision: str = "32-true", source: str = "model",
                  resample: str | None = None, raw: Mapping[str, Any] | None = None) -> Scorer:
    """A :class:`Scorer` for a Classifier in memory (a checkpoint just loaded, or the module a
    trainer is fitting, as the dashboards' callbacks score it); ``raw``: the checkpoint's contents,
    for what it records beside the weights (data settings, the unsure band, the temperature)."""
    hp = getattr(module, "hparams", {})
    raw = raw or {}
    band = raw.get(UNSURE_BAND_KEY)
    mode, shift, padding = getattr(module, "tta", ("none", 1, "reflect"))
    scorer = Scorer(kind="checkpoint", source=source, score=network_score(module, device, precision),
                    classes=tuple(hp.get("classes", CLASSES)), image_size=hp.get("image_size"), resample=resample,
                    tta={"mode": mode, "shift": shift, "padding": padding}, model=module,
                    gradcam_layer=hp.get("gradcam_layer"), device=device, precision=precision,
                    unsure_band=None if band is None else (float(band[0]), float(band[1])),
                    training=raw.get("datamodule_hyper_parameters"),
                    compute=raw.get(RUN_COMPUTE_KEY) or raw.get(COMPUTE_KEY))
    head, settings = read_scope(raw, source)
    if head is not None:
        scorer = dataclasses.replace(scorer, scope=network_scope(module, head, device), scope_settings=settings)
    return with_temperature(scorer, raw.get(TEMPERATURE_KEY))


def checkpoint_scorer(path: Path, device: str, precision: str, tta: Mapping[str, Any] | None = None) -> Scorer:
    """A train.py checkpoint on ``device`` (``auto``: CUDA where there is one), in eval mode, at
    ``precision`` (``scoring.precision``: ``32-true`` or ``bf16-mixed``; NHWC where that is faster)."""
    check_scoring_precision(precision)
    raw = read_checkpoint(path)
    model = rebuild_classifier(raw, path)
    tta = dict(tta or NO_TTA)
    model.set_tta(tta.get("mode", "none"), tta.get("shift", 1), tta.get("padding", "reflect"))
    target = pick_device(device)
    warn_if_emulated(precision, target)
    model = model.to(target).eval()
    model.set_channels_last(model.uses_channels_last(target))
    return module_scorer(model, target, precision, str(path), trained_resample(raw), raw)


def record_in_checkpoint(path: str | Path, band: tuple[float, float] | None = None,
                         temperature: float | None = None, run_compute: Mapping[str, Any] | None = None,
                         scope: Mapping[str, Any] | None = None) -> None:
    """Store what was chosen after training (the unsure band and the temperature, on validation; the
    out-of-scope score, :func:`cifake.models.scope.scope_record`) and the whole run's training compute
    in the checkpoint itself (Lightning ignores keys it does not know), so evaluation, prediction and
    export find them with the weights; ``None`` leaves an entry as it is."""
    path = Path(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if scope is not None:
        raw[SCOPE_KEY] = dict(scope)
    if band is not None:
        raw[UNSURE_BAND_KEY] = [float(band[0]), float(band[1])]
    if temperature is not None:
        raw[TEMPERATURE_KEY] = float(temperature)
    if run_compute is not None:
        raw[RUN_COMPUTE_KEY] = dict(run_compute)
    with atomic_path(path) as tmp:
        torch.save(raw, tmp)
