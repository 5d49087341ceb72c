"""Small helpers shared by the jobs."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.utils import instantiate
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


def friendly_errors(job: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Report a :class:`CifakeError` as one clear line and exit with status 2 (for entry scripts)."""

    @functools.wraps(job)
    def wrapper(cfg: DictConfig) -> T:
        try:
            return job(cfg)
        except CifakeError as err:
            log.error("%s", err)
            print(f"\nerror: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
