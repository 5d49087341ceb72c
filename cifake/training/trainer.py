"""The Lightning Trainer built from the config (callbacks, loggers, whole-file checkpoints), and the device and
precision rules of training (``trainer.precision=auto``, the CPU core count); the arithmetic rules it shares with
scoring (native bf16, TF32 for a block) live in :mod:`cifake.models.precision`."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from cifake.core.checkpoints import WholeFileCheckpointIO
from cifake.core.errors import ConfigError
from cifake.models.precision import native_bf16

log = logging.getLogger("cifake")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group such as ``callbacks`` or ``logger``; entries set
    to null are switched off."""
    if not group:
        return []
    return [instantiate(node, _convert_="all") for node in group.values() if node is not None]


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] | None = None, **overrides: Any) -> Any:
    """The Trainer of ``cfg.trainer`` with the callbacks of ``cfg.callbacks`` (plus
    ``extra_callbacks``) and the loggers of ``cfg.logger``; ``overrides`` replace trainer keys.

    ``trainer.sync_batchnorm`` works off CUDA too (see :mod:`cifake.training.distributed`), and a device
    count that the CPU cannot give is refused before Lightning starts a process for each.
    Checkpoints are written whole or not at all (:class:`cifake.core.checkpoints.WholeFileCheckpointIO`)."""
    accelerator = str(overrides.get("accelerator", cfg.trainer.accelerator))
    check_devices(overrides.get("devices", cfg.trainer.devices), accelerator)
    plugins = [*overrides.get("plugins", []), WholeFileCheckpointIO()]
    if overrides.get("sync_batchnorm", cfg.trainer.get("sync_batchnorm")) and not uses_cuda(accelerator):
        from cifake.training.distributed import GlobalBatchNormSync  # torch's SyncBatchNorm runs on GPUs only

        plugins.append(GlobalBatchNormSync())
    callbacks = instantiate_all(cfg.get("callbacks")) + list(extra_callbacks or [])
    overrides["plugins"] = plugins
    if not overrides.get("enable_progress_bar", cfg.trainer.enable_progress_bar):
        # Lightning refuses a progress-bar callback when the bar is off; the override should win.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_all(cfg.get("logger"))
    if "precision" not in overrides:
        overrides["precision"] = resolve_precision(cfg.trainer.precision, accelerator)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will run on a CUDA device for ``trainer.accelerator=accelerator``."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_devices(devices: Any, accelerator: str) -> None:
    """Refuse ``trainer.devices`` above the core count when training runs on the CPU, where
    Lightning would start that many processes and wait for all of them (GPU counts Lightning checks
    itself; :data:`cifake.core.errors.KNOWN_ERRORS` words its refusal)."""
    if accelerator not in ("auto", "cpu") or uses_cuda(accelerator):
        return
    try:
        wanted = int(devices)
    except (TypeError, ValueError):  # auto, a list of GPU ids: nothing to compare on the CPU
        return
    cores = cpu_cores()
    if wanted > cores:
        no_gpu = "" if torch.cuda.is_available() else " and PyTorch sees no GPU"
        raise ConfigError(
            f"trainer.devices={devices} would start {wanted} training processes on the CPU, but this machine has "
            f"{cores} core(s){no_gpu}: pass trainer.devices={cores} or fewer, or run on a machine with {wanted} GPUs"
        )


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """Training's ``trainer.precision``. ``auto``: bf16 mixed precision where the CUDA device computes
    bf16 natively (Ampere and newer; not a V100 or T4, which only emulate it), or where the CPU does
    (:func:`cpu_has_fast_bf16`); full float32 elsewhere. Batch-norm and the loss stay in float32 under
    autocast. Other values pass through. The choice and its reason are logged. (Scoring does not
    follow it: ``scoring.precision``.)"""
    if precision != "auto":
        return precision
    if uses_cuda(accelerator):
        chosen, why = ("bf16-mixed", "the CUDA device computes bf16 natively") if native_bf16(torch.device("cuda")) \
            else ("32-true", "the CUDA device has no native bf16 (it would only emulate it)")
    elif native_bf16(torch.device("cpu")):
        chosen, why = "bf16-mixed", "the CPU has native bf16 (AVX512_BF16/AMX)"
    else:
        chosen, why = "32-true", "the CPU has no native bf16 (no AVX512_BF16/AMX)"
    log.info("trainer.precision=auto -> %s: %s (set trainer.precision=32-true to force float32)", chosen, why)
    return chosen


def silence_known_warnings() -> None:
    """Hide warnings that say nothing to act on: the decoded data needs no loader processes, and
    Lightning's pytree shim warns about a torch deprecation on every run."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
