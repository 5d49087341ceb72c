"""Hyper-parameters and final metrics in TensorBoard's HPARAMS tab, one row per run."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The config branches that describe an experiment (paths, callbacks and Hydra's own do not).
HPARAM_KEYS = ("model", "data", "trainer", "seed")


def run_hparams(cfg: DictConfig, keys: tuple[str, ...] = HPARAM_KEYS) -> dict[str, Any]:
    """The resolved config branches that make one run differ from another, as plain containers."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
            for key in keys if key in cfg}


def hparam_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` under ``hp/<name>``: separate tags keep the one-point
    HPARAMS values apart from the per-epoch curves of the same metric."""
    return {f"hp/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_hparams(loggers: list, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write ``params`` with the final ``metrics`` to every logger (TensorBoard: the HPARAMS tab)."""
    values = hparam_metrics(metrics)
    for lg in loggers:
        lg.log_hyperparams(params, metrics=values)
