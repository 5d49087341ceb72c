"""The evaluation job behind ``evaluate.py``: score any trained model file (a network's ``.ckpt``,
a forest's ``.skops`` or an ``.onnx`` export) on the test split and write the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifake.analysis.metrics import report_scalars
from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.errors import require
from cifake.evaluation.workflow import evaluate_model, leaking_test_files, unsure_band_on_validation
from cifake.scoring import check_threshold, open_scorer, resolve_band
from cifake.training.tracking import log_hparams, run_hparams
from cifake.training.trainer import instantiate_all, silence_known_warnings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data``'s test split; write the report files and log them."""
    require(cfg, "ckpt_path", "pass a checkpoint written by train.py, e.g. "
            "ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt, a forest.skops (model=rf) or an export.py "
            "model.onnx")
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    check_threshold(cfg.threshold)
    scorer = open_scorer(cfg.ckpt_path, device=str(cfg.trainer.accelerator),
                         precision=cfg.scoring.precision, tta=cfg.tta, contract=cfg.contract)
    datamodule = instantiate(cfg.data, _convert_="all")
    exclude = leaking_test_files(datamodule, cfg.leak_near_distance) if cfg.exclude_leaks else None
    loggers = instantiate_all(cfg.get("logger"))
    limit = cfg.trainer.limit_predict_batches
    if cfg.unsure_precision:  # chosen now on validation, as train.py would (not stored)
        band = unsure_band_on_validation(scorer, datamodule, cfg.threshold, cfg.unsure_precision,
                                         cfg.unsure_conditions, cfg.report, limit)
    else:
        band = resolve_band(cfg.unsure_band, scorer, cfg.threshold)
    report = evaluate_model(scorer, datamodule, cfg.threshold, Path(cfg.paths.output_dir), cfg.report, loggers,
                            threshold_choice=cfg.threshold_choice, robustness=cfg.robustness, exclude=exclude,
                            band=band, limit=limit)
    params = {"ckpt_path": str(cfg.ckpt_path), "threshold": cfg.threshold, **run_hparams(cfg, keys=("data", "seed"))}
    log_hparams(loggers, params, report_scalars(report))
    for lg in loggers:
        lg.finalize("success")
    return report
