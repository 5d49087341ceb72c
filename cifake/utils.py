"""Small helpers shared by the jobs."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from cifake.errors import CifakeError

log = logging.getLogger("cifake")
T = TypeVar("T")


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


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto``: bf16 mixed precision where a CUDA device that supports it will be used (batch-norm
    and the loss stay in float32 under autocast), full float32 elsewhere; other values pass through."""
    if precision != "auto":
        return precision
    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"


def silence_known_warnings() -> None:
    """Hide warnings that say nothing to act on: the decoded data needs no loader processes, and
    Lightning's pytree shim warns about a torch deprecation on every run."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _cifake_cause(err: BaseException) -> CifakeError | None:
    """The :class:`CifakeError` behind ``err``: itself, or one that Hydra's ``instantiate``
    wrapped in an ``InstantiationException`` (raised from a constructor)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CifakeError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def friendly_errors(job: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Report a :class:`CifakeError` as one clear line and exit with status 2 (for entry scripts)."""

    @functools.wraps(job)
    def wrapper(cfg: DictConfig) -> T:
        try:
            return job(cfg)
        except Exception as raised:
            err = _cifake_cause(raised)
            if err is None:
                raise
            log.error("%s", err)
            print(f"\nerror: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
