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
from cifake.errors import ConfigError
from cifake.metrics import binary_report, format_report
from cifake.models.classifier import Classifier
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
                        threshold: float, out_dir: Path) -> dict[str, Any]:
    """Score ``ckpt_path`` on the test split, write ``out_dir/metrics.json`` and return it."""
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
    pred = predict_split(model, datamodule, trainer)
    report = binary_report(pred["p_real"], pred["label"], threshold, classes)
    report_path = out_dir / "metrics.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    for lg in trainer.loggers:
        lg.log_metrics({"test/acc": report["accuracy"], "test/auroc": report["auroc"]}, step=trainer.global_step)
    text = format_report(report, classes)
    log.info("Test split, %s:\n%s\nWritten: %s", ckpt_path, text, report_path)
    return report


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data``'s test split; write ``metrics.json``."""
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    datamodule = instantiate(cfg.data, _convert_="all")
    trainer: L.Trainer = build_trainer(cfg)
    return evaluate_checkpoint(cfg.ckpt_path, datamodule, trainer, cfg.threshold, Path(cfg.paths.output_dir))
