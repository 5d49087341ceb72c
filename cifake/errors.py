"""Errors that the entry points report as one clear message instead of a traceback, and the
wrapper that reports them (:func:`friendly_errors`)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cifake")
T = TypeVar("T")


class CifakeError(Exception):
    """Base class: something the user can fix (data, config, checkpoint)."""


class DataError(CifakeError):
    """The dataset is missing, laid out wrongly, or holds files that cannot be used."""


class ConfigError(CifakeError, ValueError):
    """A configuration value is missing, of the wrong kind or out of range (also a ``ValueError``,
    so library callers can catch it as one)."""


class ModelFileError(ConfigError):
    """A model file is missing, empty, damaged, of the wrong kind for the job, or holds something
    that is refused unread (such as a pickle that would run code)."""


def require(cfg: DictConfig, key: str, hint: str) -> Any:
    """``cfg[key]``, or a :class:`ConfigError` with ``hint`` when it was left as ``???``."""
    if OmegaConf.is_missing(cfg, key):
        raise ConfigError(f"{key} is required: {hint}")
    return cfg[key]


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
