"""The evaluation job behind ``evaluate.py``: score a checkpoint on the test split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from cifake import schemas  # noqa: F401  (registers the config schemas)
from cifake.audit import find_leaks
from cifake.data.augment import to_unit_float
from cifake.errors import ConfigError
from cifake.forest_job import evaluate_forest
from cifake.metrics import binary_report, report_scalars
from cifake.models.classifier import Classifier
from cifake.report import Predictions, threshold_on_validation, write_report, write_robustness_report
from cifake.tracking import log_hparams, run_hparams
from cifake.utils import build_trainer, instantiate_all, require, silence_known_warnings

log = logging.getLogger(__name__)


def load_classifier(ckpt_path: str | Path) -> Classifier:
    """Load a checkpoint written by ``train.py`` (with ``weights_only=True``: no code runs)."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a file; pass a checkpoint written by train.py, "
            "e.g. ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt"
        )
    try:
        return Classifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError, TypeError) as err:
        raise ConfigError(f"{path} is not a cifake checkpoint this version can read: {err}") from err


def predict_split(model: L.LightningModule, datamodule: L.LightningDataModule,
                  trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """p(REAL), label and dataset row of every test image, ordered by row."""
    batches = trainer.predict(model, datamodule=datamodule)
    out = {k: torch.cat([b[k].cpu() for b in batches]) for k in batches[0]}
    if trainer.world_size > 1:
        out = _gather(trainer, out)
    # Rows are unique per image; a distributed sampler may have repeated some to even out ranks.
    _, first = np.unique(out["row"].numpy(), return_index=True)
    return {k: v[torch.from_numpy(first)] for k, v in out.items()}


def _gather(trainer: L.Trainer, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's predictions on every rank (ranks may hold different numbers of images)."""
    n = torch.tensor([len(out["row"])], device=trainer.strategy.root_device)
    longest = int(trainer.strategy.all_gather(n).max())
    gathered = {}
    for key, value in out.items():
        padded = torch.full((longest,), -1, dtype=value.dtype, device=trainer.strategy.root_device)
        padded[: len(value)] = value.to(padded.device)
        gathered[key] = trainer.strategy.all_gather(padded).reshape(-1).cpu()
    keep = gathered["row"] >= 0
    return {k: v[keep] for k, v in gathered.items()}


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold} must lie in [0, 1] (it applies to p(REAL))")


def network_predictor(model: nn.Module, device: torch.device,
                      precision: str = "32-true") -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch (on the CPU) -> p(REAL) (on the CPU), as training scales its inputs, with the
    model's test-time augmentation (``Classifier.set_tta``) and, for ``bf16-mixed``, under bf16
    autocast as the trainer runs it. The model is put in eval mode on ``device`` at each call: a
    trainer's teardown may have moved it back."""
    bf16 = str(precision).startswith("bf16")

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        model.eval().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model.p_real(to_unit_float(images.to(device))).float().cpu()

    return predict


def evaluate_checkpoint(ckpt_path: str | Path, datamodule: L.LightningDataModule, trainer: L.Trainer,
                        threshold: float, out_dir: Path, settings: dict[str, Any] | DictConfig,
                        threshold_choice: dict[str, Any] | None = None, robustness: bool = False,
                        exclude: set[str] | None = None, tta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``ckpt_path`` on the test split; write and log the report (:func:`write_report`).
    With ``threshold_choice["method"]`` the threshold is chosen on the validation split first;
    with ``robustness`` the test split is scored again under perturbations; ``tta`` (``mode``,
    ``shift``, ``padding``) averages every score over augmented views (recorded in metrics.json)."""
    check_threshold(threshold)
    model = load_classifier(ckpt_path)
    tta = dict(tta) if tta else {"mode": "none"}
    model.set_tta(tta["mode"], tta.get("shift", 1), tta.get("padding", "reflect"))
    predictor = network_predictor(model, trainer.strategy.root_device, str(trainer.precision))
    batch = datamodule.hparams.eval_batch_size or datamodule.hparams.batch_size
    if threshold_choice and threshold_choice.get("method"):
        threshold = threshold_on_validation(predictor, datamodule, threshold_choice,
                                            tuple(model.hparams.get("classes", datamodule.classes)), batch)
    image_size = model.hparams.get("image_size")
    if image_size != datamodule.hparams.image_size:
        raise ConfigError(
            f"the checkpoint was trained on {image_size}px images but data.image_size="
            f"{datamodule.hparams.image_size}; set data.image_size={image_size}"
        )
    classes = tuple(model.hparams.get("classes", datamodule.classes))
    raw = predict_split(model, datamodule, trainer)
    pred = Predictions.of_rows(datamodule.decoded(datamodule.hparams.test_split), raw["row"].numpy(),
                               raw["p_real"].numpy())
    if not np.array_equal(pred.labels, raw["label"].numpy()):
        raise RuntimeError("predictions and labels are misaligned; please report this as a bug")
    if not trainer.is_global_zero:  # every rank predicted its share; rank zero writes the report
        return binary_report(raw["p_real"], raw["label"], threshold, classes)
    report = write_report(pred, classes, threshold, out_dir, settings, trainer.loggers, trainer.global_step,
                          source=str(ckpt_path), model=model, exclude=exclude, tta=tta)
    if robustness:
        write_robustness_report(predictor, pred, threshold, settings, out_dir, trainer.loggers, trainer.global_step)
    return report


def leaking_test_files(datamodule: L.LightningDataModule, near_distance: int | None) -> set[str]:
    """Test files (as ``Predictions.files`` names them) identical to, or within ``near_distance``
    pHash bits of, a train file (see ``python audit.py``)."""
    hp = datamodule.hparams
    train, test = datamodule.decoded(hp.train_split), datamodule.decoded(hp.test_split)
    leaks = {str(test.root / leak.path) for leak in find_leaks(train, test, near_distance)}
    log.info("%d test images leak from train (exact copies%s)", len(leaks),
             f" and pHash within {near_distance} bits" if near_distance is not None else "")
    return leaks


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (a network's ``.ckpt`` or a forest's ``.skops``) on ``cfg.data``'s
    test split; write the report files and log them."""
    require(cfg, "ckpt_path", "pass a checkpoint written by train.py, e.g. "
            "ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt (or forest.skops for model=rf)")
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    check_threshold(cfg.threshold)
    datamodule = instantiate(cfg.data, _convert_="all")
    out = Path(cfg.paths.output_dir)
    exclude = leaking_test_files(datamodule, cfg.leak_near_distance) if cfg.exclude_leaks else None
    if str(cfg.ckpt_path).endswith(".skops"):
        if (cfg.get("tta") or {}).get("mode", "none") != "none":
            raise ConfigError("tta averages a network's predictions over flipped and shifted views; a forest of "
                              "image statistics would score every view alike: leave tta.mode=none for .skops")
        loggers = instantiate_all(cfg.get("logger"))
        report = evaluate_forest(cfg.ckpt_path, datamodule, cfg.threshold, out, cfg.report, loggers,
                                 cfg.threshold_choice, cfg.robustness, exclude)
    else:
        trainer: L.Trainer = build_trainer(cfg)
        loggers = trainer.loggers
        report = evaluate_checkpoint(cfg.ckpt_path, datamodule, trainer, cfg.threshold, out, cfg.report,
                                     cfg.threshold_choice, cfg.robustness, exclude, cfg.get("tta"))
    params = {"ckpt_path": str(cfg.ckpt_path), "threshold": cfg.threshold, **run_hparams(cfg, keys=("data", "seed"))}
    log_hparams(loggers, params, report_scalars(report))
    for lg in loggers:
        lg.finalize("success")
    return report
