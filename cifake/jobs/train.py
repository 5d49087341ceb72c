"""The training job behind ``train.py``: fit a network (or the random-forest baseline), then
optionally evaluate it on the test split."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cifake.analysis.metrics import flat_metrics
from cifake.callbacks.preemption import Preemption, Stop
from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.checkpoints import check_resumable
from cifake.core.errors import ConfigError, friendly_errors
from cifake.evaluation.settings import EvaluationSettings
from cifake.evaluation.workflow import choose_on_validation, evaluate_run, scope_on_training
from cifake.models.forest import ForestClassifier
from cifake.models.precision import float32_matmul, native_bf16
from cifake.scoring import open_scorer
from cifake.scoring.network import record_in_checkpoint
from cifake.scoring.open_model_file import network_weights
from cifake.scoring.scorer import device_name, resolve_scope
from cifake.training.sweep import RESULTS_FILE
from cifake.training.tracking import log_hparams, run_hparams
from cifake.training.trainer import build_trainer, instantiate_all, silence_known_warnings

log = logging.getLogger(__name__)
LAST = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"  # what ckpt_path=last resumes
ENTRY_SCRIPT = "train.py"  # the checkout's entry point; installed, it is the console script below
CONSOLE_SCRIPT = "cifake-train"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data`` (resuming from ``cfg.ckpt_path`` if set), optionally
    evaluate the best model on the test split, write ``results.json`` and return the final
    metrics (flat scalars; ``test``: the test report)."""
    commit = source_commit()  # now: the code this run starts with, whatever the checkout holds when it ends
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    silence_known_warnings()
    settings = EvaluationSettings.from_config(cfg)  # checked before anything trains
    out = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data, _convert_="all")
    model: L.LightningModule | ForestClassifier = instantiate(cfg.model, _convert_="all")
    if isinstance(model, ForestClassifier):
        from cifake.models.forest import FOREST_COMPUTED
        from cifake.models.forest.fit import fit_forest  # scikit-learn: only for the forest

        loggers = instantiate_all(cfg.get("logger"))
        metrics, best = fit_forest(cfg, datamodule, model, loggers)
        best, step, rank_zero, fast_dev_run = str(best), 0, True, False
        computed = {"training": dict(FOREST_COMPUTED)}
    else:
        resume = resume_checkpoint(cfg, out)  # refused before any data is generated or decoded
        if cfg.init_from is not None:
            start_from(model, cfg.init_from, resume)
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
        write_results(out, metrics, computed, made_by(computed["training"], commit))
        _print_outputs(out, best, loggers, bool(metrics.get("test")))
    return metrics


def start_from(model: L.LightningModule, source: str, resume: str | None) -> None:
    """``init_from``: the network's weights loaded from ``source`` before the fit; refused beside a resumed
    run (whose checkpoint holds weights of its own) and for a network of other settings."""
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
    log.info("Network weights loaded from %s (init_from): fine-tuning starts from them", source)


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


def entry_command() -> list[str]:
    """How this job was started: ``python train.py`` (as typed) or the console script, with the
    ``--config-dir`` folders it was given."""
    script = sys.argv[0] if Path(sys.argv[0]).name == ENTRY_SCRIPT else None
    command = ["python", script] if script else [CONSOLE_SCRIPT]
    if HydraConfig.initialized():
        command += [f"--config-dir={source.path}"
                    for source in HydraConfig.get().runtime.config_sources if source.provider == "command-line"]
    return command


def run_overrides(out: Path) -> list[str]:
    """The overrides the run in ``out`` was started with (Hydra's, else its ``.hydra/overrides.yaml``),
    less ``ckpt_path`` and ``hydra.run.dir``."""
    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    elif (out / ".hydra" / "overrides.yaml").is_file():
        overrides = list(OmegaConf.load(out / ".hydra" / "overrides.yaml"))
    else:
        overrides = []
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]


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


def training_arithmetic(trainer: L.Trainer, matmul: str) -> dict[str, Any]:
    """What the fit computes in and on (results.json's ``computed.training``), said in the log when
    float32 matrix products and convolutions may use TF32 (``float32_matmul_precision``)."""
    record = {"precision": str(trainer.precision), "device": device_name(trainer.strategy.root_device),
              "devices": int(trainer.num_devices), "float32_matmul_precision": matmul}
    if matmul != "highest":
        log.info("Training in %s on %s with TF32 float32 matrix products and convolutions where the GPU has them "
                 "(Ampere and newer; float32_matmul_precision=%s); scoring stays true float32 (scoring.precision)",
                 record["precision"], record["device"], matmul)
    return record


def write_results(out: Path, metrics: dict[str, Any], computed: dict[str, dict[str, Any]],
                  run: dict[str, Any]) -> Path:
    """``results.json``: the run's final metrics as flat scalars (test ones as ``test/...``), for
    sweep summaries and scripts; ``computed``: the precision and device of the fit (``training``:
    the train and validation metrics, and its wall time) and of the test split's scoring (``test``,
    when evaluated); ``run``: the commit and the machine that made it (:func:`made_by`)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    path.write_text(json.dumps({"metrics": flat_metrics(metrics), "computed": computed, "run": run}, indent=2) + "\n")
    return path


def source_commit() -> str:
    """The code this process runs: ``git rev-parse HEAD`` of the checkout an editable install runs from,
    ``+ changes`` when it has uncommitted ones; the package version when it is not a checkout."""
    here = Path(__file__).resolve().parents[2]  # the checkout, when the package runs from one
    try:
        if not (here / ".git").exists():
            raise OSError("not a checkout")
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        commit = head.stdout.strip() + (" + changes" if dirty.stdout.strip() else "") if head.returncode == 0 \
            else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    if commit is None:
        commit = f"cifake {importlib.metadata.version('cifake')} (not a git checkout)"
    return commit


def made_by(training: dict[str, Any], commit: str) -> dict[str, Any]:
    """``commit`` (:func:`source_commit`, read when the run started), the machine (CPU model, cores,
    whether it computes bf16 natively, the GPU if training used one) and the training's wall time."""
    bf16 = "yes" if native_bf16(torch.device("cpu")) else "no"
    machine = f"{machine_cpu()}, {os.cpu_count()} cores, native bf16: {bf16}"
    if str(training.get("device", "")).startswith("cuda"):
        machine += f"; {torch.cuda.get_device_name()}"
    seconds = training.get("seconds")
    return {"commit": commit, "machine": machine,
            "train_time": None if seconds is None else f"{seconds / 60:.1f} min of training"}


def machine_cpu() -> str:
    """The CPU's model name with its family and model numbers (``/proc/cpuinfo``: a virtual machine's
    name may not say more than "AMD EPYC"; family 25 is Zen 3 and 4, 26 is Zen 5), the platform's
    processor string elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    except (OSError, KeyError):
        return platform.processor() or platform.machine() or "unknown CPU"


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
