"""The evaluation job behind ``evaluate.py``: score any trained model file (a network's ``.ckpt``,
a forest's ``.skops`` or an ``.onnx`` export) on the test split and write the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from cifake.analysis.metrics import report_scalars
from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule
from cifake.evaluation.settings import EvaluationSettings
from cifake.evaluation.workflow import choose_on_validation, evaluate_run, scope_on_training
from cifake.scoring import Scorer, choose_resample, model_or_bundled, open_scorer
from cifake.scoring.network import record_in_checkpoint
from cifake.scoring.scorer import resolve_scope
from cifake.training.tracking import log_hparams, run_hparams
from cifake.training.trainer import instantiate_all, silence_known_warnings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data``'s test split; write the report files and log them."""
    ckpt_path = model_or_bundled(cfg.ckpt_path)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    settings = EvaluationSettings.from_config(cfg)
    scorer = open_scorer(ckpt_path, device=str(cfg.trainer.accelerator),
                         precision=settings.precision, tta=settings.tta, contract=cfg.contract)
    if cfg.folder is not None:  # a folder of one class instead of the test split
        return evaluate_folder(cfg, settings, scorer)
    datamodule = CIFAKEDataModule.from_config(cfg.data)
    loggers = instantiate_all(cfg, "logger")
    # A temperature, a band and an out-of-scope score chosen now, as train.py would choose them; stored in the
    # checkpoint only with store=true.
    scorer, temperature, band = choose_on_validation(scorer, datamodule, settings)
    scorer, scope = scope_on_training(scorer, datamodule, settings.scope_fit, settings.limit)
    if cfg.store:  # the whole temperature: one fitted now on a model that had one combines with it
        store_choices(scorer, ckpt_path, band, None if temperature is None else scorer.temperature, scope)
    if band is None:
        band = settings.band_for(scorer)
    scorer = resolve_scope(settings.out_of_scope, scorer)
    report = evaluate_run(scorer, datamodule, settings, Path(cfg.paths.output_dir), loggers, band=band)
    params = {"ckpt_path": ckpt_path, "threshold": settings.threshold, **run_hparams(cfg, keys=("data", "seed"))}
    log_hparams(loggers, params, report_scalars(report, f"{report['split']}/"))
    for lg in loggers:
        lg.finalize("success")
    return report


def store_choices(scorer: Scorer, ckpt_path: str, band: tuple[float, float] | None, temperature: float | None,
                  scope: dict[str, Any] | None) -> None:
    """``store=true``: what this evaluation chose (band, temperature, out-of-scope score) written into the
    model file, as train.py stores its own: a checkpoint, or a safetensors export (its config.json and
    weights file); refused for a forest or an ONNX export (store into the checkpoint, then export)."""
    if scorer.kind not in ("checkpoint", "safetensors"):
        raise ConfigError(f"store=true writes into a train.py checkpoint or a safetensors export, and {ckpt_path} is "
                          f"a {scorer.kind} file; store into the .ckpt, then export it again")
    if band is None and temperature is None and scope is None:
        raise ConfigError("store=true, but nothing was chosen to store: set unsure_precision, calibration.temperature"
                          "=auto or out_of_scope_fit.method=mahalanobis")
    if scorer.kind == "checkpoint":
        record_in_checkpoint(ckpt_path, band, temperature, scope=scope)
    else:
        from cifake.export.safetensors import store_in_export

        store_in_export(Path(scorer.source).parent, scorer.model.net, None if band is None else list(band),
                        temperature, scope)
    log.info("Stored in %s:%s%s%s", ckpt_path, "" if band is None else f" unsure band {list(band)}",
             "" if temperature is None else f" temperature {temperature:.4f}",
             "" if scope is None else f" out-of-scope score (threshold {scope['threshold']:.4f})")


def evaluate_folder(cfg: DictConfig, settings: EvaluationSettings, scorer: Scorer) -> dict[str, Any]:
    """``folder=<dir> folder_class=<class>``: the four-way shares on a folder of images of one class
    (:func:`cifake.evaluation.folder.score_folder`), with the model's stored band and out-of-scope score."""
    from cifake.evaluation.folder import score_folder

    if cfg.folder_class is None:
        raise ConfigError(f"folder={cfg.folder} needs folder_class=<the class of every image in it>, one of "
                          f"{list(scorer.classes)}")
    resample = choose_resample(cfg.resample, scorer.resample, str(scorer.source))
    band = settings.band_for(scorer)
    scorer = resolve_scope(settings.out_of_scope, scorer)
    return score_folder(scorer, Path(str(cfg.folder)).expanduser(), str(cfg.folder_class), resample,
                        settings.threshold, band, int(cfg.data.eval_batch_size),
                        Path(cfg.paths.output_dir))
