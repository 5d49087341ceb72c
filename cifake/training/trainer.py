"""The Lightning Trainer built from the config (callbacks, loggers, whole-file checkpoints) and the device count
training may ask of the CPU; the precision it trains in (``trainer.precision=auto``) follows the rules of
:mod:`cifake.models.precision`."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from cifake.core.checkpoints import WholeFileCheckpointIO
from cifake.core.errors import ConfigError
from cifake.models.precision import resolve_precision, uses_cuda


def instantiate_all(cfg: DictConfig, group: str) -> list[Any]:
    """Instantiate every entry of the config group ``group`` of ``cfg`` (``callbacks``, ``logger``); entries set
    to null are switched off. An entry that is not a config (``callbacks.progress_bar=false``) is a
    :class:`ConfigError` that says how to switch it off."""
    entries = cfg.get(group)
    if not entries:
        return []
    for key, node in entries.items():
        if node is not None and not isinstance(node, DictConfig):
            typed = str(node).lower() if isinstance(node, bool) else node  # as typed: false, not False
            raise ConfigError(f"{group}.{key}={typed}: each entry of {group} is a config with a _target_; "
                              f"switch this one off with {group}.{key}=null")
    return [instantiate(node, _convert_="all") for node in entries.values() if node is not None]


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
    callbacks = instantiate_all(cfg, "callbacks") + list(extra_callbacks or [])
    overrides["plugins"] = plugins
    if not overrides.get("enable_progress_bar", cfg.trainer.enable_progress_bar):
        # Lightning refuses a progress-bar callback when the bar is off; the override should win.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_all(cfg, "logger")
    if "precision" not in overrides:
        overrides["precision"] = resolve_precision(cfg.trainer.precision, accelerator)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


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


def silence_known_warnings() -> None:
    """Hide warnings that say nothing to act on: the decoded data needs no loader processes, and
    Lightning's pytree shim warns about a torch deprecation on every run."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
