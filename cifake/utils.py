"""Small helpers shared by the jobs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

log = logging.getLogger("cifake")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group such as ``callbacks`` or ``logger``; entries set
    to null are switched off."""
    if not group:
        return []
    return [instantiate(node, _convert_="all") for node in group.values() if node is not None]


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] | None = None, **overrides: Any) -> Any:
    """The Trainer of ``cfg.trainer`` with the callbacks of ``cfg.callbacks`` (plus
    ``extra_callbacks``) and the loggers of ``cfg.logger``; ``overrides`` replace trainer keys."""
    callbacks = instantiate_all(cfg.get("callbacks")) + list(extra_callbacks or [])
    if not overrides.get("enable_progress_bar", cfg.trainer.get("enable_progress_bar", True)):
        # Lightning refuses a progress-bar callback when the bar is off; the override should win.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_all(cfg.get("logger"))
    if "precision" not in overrides:
        overrides["precision"] = resolve_precision(cfg.trainer.get("precision", "32-true"),
                                                   cfg.trainer.get("accelerator", "auto"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX): there oneDNN's bf16
    convolutions run about twice as fast as float32 ones; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: we cannot tell, so we do not guess
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto``: bf16 mixed precision where a CUDA device supports it, or where the CPU computes
    bf16 natively (:func:`cpu_has_fast_bf16`); full float32 elsewhere. Batch-norm and the loss stay
    in float32 under autocast. Other values pass through. The choice and its reason are logged."""
    if precision != "auto":
        return precision
    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_cuda:
        chosen, why = ("bf16-mixed", "the CUDA device supports bf16") if torch.cuda.is_bf16_supported() \
            else ("32-true", "the CUDA device has no bf16")
    elif cpu_has_fast_bf16():
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
