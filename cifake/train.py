"""The training job behind ``train.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifake import schemas  # noqa: F401  (registers the config schemas)
from cifake.evaluate import evaluate_checkpoint
from cifake.forest_job import fit_forest
from cifake.metrics import report_scalars
from cifake.models.forest import ForestClassifier
from cifake.tracking import log_hparams, run_hparams
from cifake.utils import build_trainer, silence_known_warnings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data`` (resuming from ``cfg.ckpt_path`` if set), optionally
    evaluate the best checkpoint on the test split, and return the final metrics."""
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model: L.LightningModule | ForestClassifier = instantiate(cfg.model, _convert_="all")
    if isinstance(model, ForestClassifier):
        return fit_forest(cfg, datamodule, model)
    trainer: L.Trainer = build_trainer(cfg)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # Epoch-level values only: per-step and timing scalars describe the last batch, not the run.
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()
                               if not k.startswith(("train_step/", "perf/"))}

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint else ""
    out = Path(cfg.paths.output_dir)
    if cfg.get("evaluate") and not trainer.fast_dev_run:
        if not best:
            raise RuntimeError("evaluate=true needs a ModelCheckpoint callback to know the best weights")
        metrics["test"] = evaluate_checkpoint(best, datamodule, trainer, cfg.threshold, out, cfg.report)
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    if not trainer.fast_dev_run:
        log_hparams(trainer.loggers, run_hparams(cfg),
                    {**metrics, **(report_scalars(metrics["test"]) if "test" in metrics else {})})
    _print_outputs(out, best, trainer.loggers, bool(metrics.get("test")))
    return metrics


def _print_outputs(out: Path, best: str, loggers: list, evaluated: bool) -> None:
    lines = [f"Run folder: {out}"]
    if best:
        lines.append(f"Best checkpoint: {best}")
    for lg in loggers:
        if getattr(lg, "log_dir", None):
            lines.append(f"TensorBoard: tensorboard --logdir {lg.log_dir}")
    if evaluated:
        lines.append(f"Test metrics: {out / 'metrics.json'}")
    log.info("\n".join(lines))
