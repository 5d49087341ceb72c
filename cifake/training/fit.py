"""Fitting a network with Lightning, as the training job runs it: the run to resume (``ckpt_path``) checked whole, the
weights to start from (``init_from``), the fit itself with its stop on a signal (``callbacks.preemption``: the line
that says where it stopped and how to resume), and the warning when ``trainer.max_time`` cut the schedule short."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from cifake.callbacks.preemption import Preemption, Stop
from cifake.core.checkpoints import check_resumable
from cifake.core.digest import file_sha256
from cifake.core.errors import ConfigError
from cifake.scoring.open_model_file import network_weights
from cifake.scoring.weights import WEIGHTS_FILE, bundled_weights
from cifake.training.provenance import entry_command, run_overrides

log = logging.getLogger(__name__)

LAST = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"  # what ckpt_path=last resumes


def start_from(model: L.LightningModule, source: str, resume: str | None) -> dict[str, str]:
    """``init_from``: the network's weights loaded from ``source`` before the fit; refused beside a resumed
    run (whose checkpoint holds weights of its own) and for a network of other settings. Returns what was
    read (:func:`started_from`), for the run's record."""
    if resume is not None:
        raise ConfigError("init_from starts a new fit from a model's weights, and ckpt_path resumes a run with its "
                          "own: set one of them")
    weights = network_weights(source)
    try:
        model.net.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ConfigError(f"init_from={source}: its network does not fit model.net ({first}); set model.net to the "
                          "settings it was trained with (its config.json or checkpoint's hyper_parameters)") from None
    started = started_from(source)
    log.info("Network weights loaded from %s (init_from; sha256 %s): fine-tuning starts from them", started["file"],
             started["sha256"][:12])
    return started


def started_from(source: str) -> dict[str, str]:
    """The file ``init_from`` named and its SHA-256: ``bundled`` and a path name other weights once the
    package or the file changes, so the run records which ones it started from."""
    bundled = bundled_weights() if source == "bundled" else None
    path = bundled if bundled is not None else Path(source)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    return {"init_from": source, "file": str(weights.resolve()), "sha256": file_sha256(weights)}


def cluster_plugins(cfg: DictConfig) -> list[Any]:
    """With ``callbacks.preemption`` on a SLURM cluster, Lightning's own requeueing off
    (``SLURMEnvironment(auto_requeue=False)``), so that one handler owns the stop signals: Lightning's
    would save ``hpc_ckpt_<n>.ckpt`` from inside the USR1 handler, wherever training stood (an
    optimizer step half done), and requeue the job while training went on."""
    if (cfg.get("callbacks") or {}).get("preemption") is not None and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint ``cfg.ckpt_path`` names (``last``: the run folder's ``last.ckpt``), checked
    whole (see :func:`cifake.core.checkpoints.check_resumable`); ``None`` for a fresh start."""
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path, setting = out / "checkpoints" / LAST, "ckpt_path=last"
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path=last resumes the run in hydra.run.dir, but {path.parent} holds no {LAST}; "
                "pass hydra.run.dir=<the run folder to resume> (with the run's other overrides)"
            )
    else:
        path, setting = Path(str(ckpt_path)).expanduser(), "ckpt_path"
    keeper = (cfg.get("callbacks") or {}).get("model_checkpoint")
    best = f"{keeper.filename}{ModelCheckpoint.FILE_EXTENSION}" if keeper and "{" not in keeper.filename else None
    check_resumable(path, setting, best)
    return str(path)


def fit_network(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule,
                out: Path, resume: str | None = None) -> tuple[dict[str, Any], str]:
    """``trainer.fit`` (from the checkpoint ``resume``, if given); the epoch-level metrics it ends
    with and the best checkpoint's path. Stopped by a signal (``callbacks.preemption``), it logs
    where it stopped and how to resume, and exits with 128 + the signal's number."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    except SIGTERMException:
        stop = next((cb.stop for cb in trainer.callbacks if isinstance(cb, Preemption)), None)
        if stop is None:
            raise  # callbacks.preemption=null: Lightning's own ending
        if trainer.is_global_zero:
            log.warning("%s", stopped_line(stop, out))
        # 128 + N: how a shell reports a process that signal N ended, which schedulers and scripts know.
        raise SystemExit(128 + stop.signal) from None
    warn_if_the_budget_cut_training(trainer)
    # Epoch-level values only: per-step and timing scalars describe the last batch, not the run.
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()
                               if not k.startswith(("train_step/", "perf/"))}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    return metrics, (checkpoint.best_model_path if checkpoint else "")


def stopped_line(stop: Stop, out: Path) -> str:
    """One line: which signal stopped the run in ``out``, where, what holds that point, and the
    command that resumes it."""
    last = out / "checkpoints" / LAST
    if stop.saved is not None:
        held = f"saved {stop.saved}"
    elif last.is_file():
        held = f"no step since it started, so {last} still holds it"
    else:
        return (f"Stopped by {stop.signal.name} before the first training step of run {out}; nothing to resume, "
                f"start it again with: {shlex.join([*entry_command(), *run_overrides(out)])}")
    command = shlex.join([*entry_command(), *run_overrides(out), f"hydra.run.dir={out}", "ckpt_path=last"])
    return (f"Stopped by {stop.signal.name} at {stop.where()} (global step {stop.step}); {held}. "
            f"Resume run {out} with: {command}")


def warn_if_the_budget_cut_training(trainer: L.Trainer) -> None:
    """Say so when ``trainer.max_time`` ended the fit before ``trainer.max_epochs``: the recipes'
    schedules (one-cycle, cosine) are set by the epoch count, so a cut run never anneals and its
    weights are not the recipe's, on a machine slower than the one its budget was measured on."""
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is None or remaining > 0 or trainer.current_epoch >= (trainer.max_epochs or 0):
        return
    log.warning("trainer.max_time stopped training after %d of %d epochs (precision %s): a learning-rate "
                "schedule set by the epoch count did not finish, so these weights are not the recipe's. Pass "
                "trainer.max_time=null to train every epoch, or fewer trainer.max_epochs to fit the budget.",
                trainer.current_epoch, trainer.max_epochs, trainer.precision)
