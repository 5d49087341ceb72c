"""The evaluation job behind ``evaluate.py``: score a checkpoint on the test split."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifake import schemas  # noqa: F401  (registers the config schemas)
from cifake.callbacks.base import tensorboard_writers
from cifake.errors import ConfigError
from cifake.metrics import binary_report, format_report, report_scalars
from cifake.models.classifier import Classifier
from cifake.report import (
    Predictions,
    curve_figures,
    example_figures,
    log_pr_curve,
    write_figures,
    write_predictions_csv,
)
from cifake.tracking import log_hparams, run_hparams
from cifake.utils import build_trainer, silence_known_warnings

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
    order = torch.argsort(out["row"])
    return {k: v[order] for k, v in out.items()}


def evaluate_checkpoint(ckpt_path: str | Path, datamodule: L.LightningDataModule, trainer: L.Trainer,
                        threshold: float, out_dir: Path, settings: dict[str, Any] | DictConfig) -> dict[str, Any]:
    """Score ``ckpt_path`` on the test split. Writes ``metrics.json``, ``predictions.csv`` and (with
    ``settings.figures``) the figures of :mod:`cifake.report` into ``out_dir``, logs them to the
    trainer's TensorBoard under ``test/``, and returns the metrics."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold} must lie in [0, 1] (it applies to p(REAL))")
    model = load_classifier(ckpt_path)
    image_size = model.hparams.get("image_size")
    if image_size != datamodule.hparams.image_size:
        raise ConfigError(
            f"the checkpoint was trained on {image_size}px images but data.image_size="
            f"{datamodule.hparams.image_size}; set data.image_size={image_size}"
        )
    classes = tuple(model.hparams.get("classes", datamodule.classes))
    raw = predict_split(model, datamodule, trainer)
    split = datamodule.decoded(datamodule.hparams.test_split)
    rows = raw["row"].numpy()
    # Everything below is drawn from these arrays, aligned through the dataset rows.
    pred = Predictions(files=[str(split.root / split.files[r]) for r in rows], labels=raw["label"].numpy(),
                       p_real=raw["p_real"].numpy(), images=split.images[rows])
    report = binary_report(raw["p_real"], raw["label"], threshold, classes)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_predictions_csv(out_dir / "predictions.csv", pred, classes, threshold)
    for lg in trainer.loggers:
        lg.log_metrics(report_scalars(report), step=trainer.global_step)
    written = ["metrics.json", "predictions.csv"]
    if settings["figures"]:
        figures = curve_figures(pred, report["confusion_matrix"], classes, "test")
        figures.update(example_figures(pred, classes, threshold, model, settings, "test"))
        writers = tensorboard_writers(trainer)
        # The counts travel inside the PNG too, so a figure can be checked against metrics.json.
        counts = {"confusion_matrix": {"confusion_matrix": json.dumps(report["confusion_matrix"])}}
        written += [p.name for p in write_figures(figures, out_dir, writers, trainer.global_step, metadata=counts)]
        log_pr_curve(writers, "test/pr_curve", pred, trainer.global_step)
    log.info("Test split, %s:\n%s\nWritten to %s: %s", ckpt_path, format_report(report, classes), out_dir,
             ", ".join(written))
    return report


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data``'s test split; write the report files."""
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    datamodule = instantiate(cfg.data, _convert_="all")
    trainer: L.Trainer = build_trainer(cfg)
    report = evaluate_checkpoint(cfg.ckpt_path, datamodule, trainer, cfg.threshold, Path(cfg.paths.output_dir),
                                 cfg.report)
    params = {"ckpt_path": str(cfg.ckpt_path), "threshold": cfg.threshold, **run_hparams(cfg)}
    log_hparams(trainer.loggers, params, report_scalars(report))
    return report
