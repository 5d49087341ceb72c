"""The training job behind ``train.py``: fit a network (or the random-forest baseline), then
optionally evaluate it on the test split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifake.analysis.metrics import flat_metrics
from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.errors import ConfigError, friendly_errors
from cifake.data.datamodule import CIFAKEDataModule
from cifake.evaluation.settings import EvaluationSettings
from cifake.evaluation.workflow import choose_on_validation, evaluate_run, scope_on_training
from cifake.models.precision import float32_matmul
from cifake.scoring import open_scorer
from cifake.scoring.network import record_in_checkpoint
from cifake.scoring.scorer import resolve_scope
from cifake.training.fit import cluster_plugins, fit_network, resume_checkpoint, start_from
from cifake.training.provenance import made_by, source_commit, training_arithmetic, write_results
from cifake.training.tracking import log_hparams, run_hparams
from cifake.training.trainer import build_trainer, instantiate_all, silence_known_warnings

if TYPE_CHECKING:
    from cifake.models.forest import ForestClassifier

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data`` (resuming from ``cfg.ckpt_path`` if set), optionally
    evaluate the best model on the test split, write ``results.json`` and return the final
    metrics (flat scalars; ``test``: the test report)."""
    commit = source_commit()  # now: the code this run starts with, whatever the checkout holds when it ends
    init_weights = None  # the file a fine-tune (init_from) starts from
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    settings = EvaluationSettings.from_config(cfg)  # checked before anything trains
    if settings.scored_split != "test":  # its results.json and dashboards hold the test report
        raise ConfigError(f"scored_split={settings.scored_split} is for evaluate.py: train.py evaluate=true scores the "
                          "test split; score the validation split with python evaluate.py "
                          "ckpt_path=<run>/checkpoints/best.ckpt scored_split=validation")
    out = Path(cfg.paths.output_dir)
    datamodule = CIFAKEDataModule.from_config(cfg.data)
    model: L.LightningModule | ForestClassifier = instantiate(cfg.model, _convert_="all")
    if not isinstance(model, L.LightningModule):  # the forest: its module (skops, scikit-learn's ensembles) only now
        from cifake.models.forest import FOREST_COMPUTED
        from cifake.models.forest.fit import fit_forest  # scikit-learn: only for the forest

        loggers = instantiate_all(cfg, "logger")
        metrics, best = fit_forest(cfg, datamodule, model, loggers)
        best, step, rank_zero, fast_dev_run = str(best), 0, True, False
        computed = {"training": dict(FOREST_COMPUTED)}
    else:
        resume = resume_checkpoint(cfg, out)  # refused before any data is generated or decoded
        if cfg.init_from is not None:
            init_weights = start_from(model, cfg.init_from, resume)
        trainer = build_trainer(cfg, plugins=cluster_plugins(cfg))
        started = time.monotonic()
        with float32_matmul(cfg.float32_matmul_precision):  # for the fit only: scoring sets its own
            computed = {"training": training_arithmetic(trainer, cfg.float32_matmul_precision)}
            metrics, best = fit_network(cfg, trainer, model, datamodule, out, resume)
        computed["training"]["seconds"] = round(time.monotonic() - started, 1)
        loggers, step, rank_zero = trainer.loggers, trainer.global_step, trainer.is_global_zero
        fast_dev_run = bool(trainer.fast_dev_run)
    # Every rank has the same best weights; one scores what follows alone (no collective calls).
    chooses = settings.chooses
    compute = getattr(model, "compute", None)  # a network's training compute (cifake.models.flops)
    if compute is not None:
        computed["training"].update(compute)
    if rank_zero and not fast_dev_run and best and compute is not None:
        record_in_checkpoint(best, run_compute=compute)  # the whole run's, beside the best weights
    if rank_zero and not fast_dev_run and best and (cfg.evaluate or chooses):
        scorer = open_scorer(best, device=str(cfg.trainer.accelerator), precision=settings.precision,
                             tta=settings.tta)
        if chooses and scorer.kind != "checkpoint":
            raise ConfigError("unsure_precision, calibration.temperature and out_of_scope_fit are stored in a "
                              "network's checkpoint; the forest has none: leave them null for model=rf")
        scorer, temperature, band = choose_on_validation(scorer, datamodule, settings)
        scorer, scope = scope_on_training(scorer, datamodule, settings.scope_fit, settings.limit)
        scorer = resolve_scope(settings.out_of_scope, scorer)
        if chooses:
            record_in_checkpoint(best, band, temperature, scope=scope)
        if temperature is not None:
            metrics["temperature"] = temperature
        if cfg.evaluate:
            metrics["test"] = evaluate_run(scorer, datamodule, settings, out, loggers, step, band)
            computed["test"] = scorer.computed
    elif cfg.evaluate and not fast_dev_run and rank_zero:
        raise ConfigError("evaluate=true needs the model_checkpoint callback to know the best weights")
    if not fast_dev_run:
        log_hparams(loggers, run_hparams(cfg), flat_metrics(metrics))
    if rank_zero:
        for lg in loggers:
            lg.finalize("success")
        write_results(out, metrics, computed, made_by(computed["training"], commit, init_weights))
        _print_outputs(out, best, loggers, bool(metrics.get("test")))
    return metrics


def objective(cfg: DictConfig) -> float | None:
    """Run the job (errors reported plainly) and return ``cfg.optimized_metric`` when one is
    named, for hyper-parameter sweepers (``hparams_search=...``)."""
    metrics = friendly_errors(run)(cfg)
    name = cfg.optimized_metric
    if name is None:
        return None
    flat = flat_metrics(metrics)
    if name not in flat:
        raise ConfigError(f"optimized_metric={name!r} was not logged; choose one of {sorted(flat)}")
    return float(flat[name])


def _print_outputs(out: Path, best: str, loggers: list, evaluated: bool) -> None:
    lines = [f"Run folder: {out}"]
    if best:
        lines.append(f"Best {'checkpoint' if best.endswith('.ckpt') else 'model'}: {best}")
    for lg in loggers:
        if getattr(lg, "log_dir", None):
            lines.append(f"TensorBoard: tensorboard --logdir {lg.log_dir}")
    if evaluated:
        lines.append(f"Test metrics: {out / 'metrics.json'}")
    log.info("\n".join(lines))
