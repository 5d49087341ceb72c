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
from cifake.evaluation.workflow import choose_on_validation, evaluate_run
from cifake.scoring import check_threshold, model_or_bundled, open_scorer, resolve_band
from cifake.training.tracking import log_hparams, run_hparams
from cifake.training.trainer import instantiate_all, silence_known_warnings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data``'s test split; write the report files and log them."""
    ckpt_path = model_or_bundled(cfg.ckpt_path)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    check_threshold(cfg.threshold)
    scorer = open_scorer(ckpt_path, device=str(cfg.trainer.accelerator),
                         precision=cfg.scoring.precision, tta=cfg.tta, contract=cfg.contract)
    datamodule = instantiate(cfg.data, _convert_="all")
    loggers = instantiate_all(cfg.get("logger"))
    # A temperature and a band chosen now on validation, as train.py would choose them (not stored).
    scorer, _, band = choose_on_validation(scorer, datamodule, cfg, cfg.trainer.limit_predict_batches)
    if band is None:
        band = resolve_band(cfg.unsure_band, scorer, cfg.threshold)
    report = evaluate_run(scorer, datamodule, cfg, Path(cfg.paths.output_dir), loggers,
                          threshold_choice=cfg.threshold_choice, band=band)
    params = {"ckpt_path": ckpt_path, "threshold": cfg.threshold, **run_hparams(cfg, keys=("data", "seed"))}
    log_hparams(loggers, params, report_scalars(report))
    for lg in loggers:
        lg.finalize("success")
    return report
