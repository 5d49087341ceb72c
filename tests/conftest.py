"""Shared fixtures: tiny generated image folders and composed Hydra configs. The factories they use, and
that test files import, are in tests/helpers/."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers.config import compose_config
from tests.helpers.images import make_cifake_tree


@pytest.fixture
def cifake_tree(tmp_path: Path) -> Path:
    return make_cifake_tree(tmp_path / "cifake")


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<name>.yaml`` with overrides, every output and cache under ``tmp_path``."""

    def _compose(name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
        return compose_config(name, [f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                                     *overrides])

    return _compose
