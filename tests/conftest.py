"""Shared fixtures: tiny generated image folders and composed Hydra configs."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

import cifake.schemas  # noqa: F401  (registers the config schemas before composing)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# A small network so that fitting in tests takes seconds; the default net is tested on its own.
TINY_NET = [
    "model.net.filters=[8,16,16,16]",
    "model.net.dense=[32]",
]


@functools.cache
def _composed_train(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def conf_node(node: str, overrides: Iterable[str] = (), **values: object) -> dict:
    """The settings conf/ gives the Hydra-built thing at ``node`` of the composed train config
    (``data``, ``model``, ``model.net``, ``callbacks.curves``), resolved, ``_target_`` included,
    with ``values`` replacing some: tests that build a class in Python take every other setting
    from conf/, where each lives once (constructors have no defaults)."""
    args = OmegaConf.to_container(OmegaConf.select(_composed_train(tuple(overrides)), node), resolve=True)
    assert isinstance(args, dict), f"{node} is not a mapping in the composed config"
    unknown = set(values) - set(args)
    assert not unknown, f"{node} has no {sorted(unknown)} in conf/"
    return {**args, **values}


def conf_args(node: str, overrides: Iterable[str] = (), **values: object) -> dict:
    """:func:`conf_node` less Hydra's keys: the keyword arguments of the class itself."""
    args = conf_node(node, overrides, **values)
    for key in ("_target_", "_partial_", "_convert_", "_recursive_"):
        args.pop(key, None)
    return args


def write_image(path: Path, rng: np.random.Generator, size: int = 32, mode: str = "RGB",
                fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def make_cifake_tree(root: Path, n_per_class: int = 6, splits: Iterable[str] = ("train", "test"),
                     seed: int = 0) -> Path:
    """Write ``root/<split>/{FAKE,REAL}/<i>.jpg`` with random pixels."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in ("FAKE", "REAL"):
            for i in range(n_per_class):
                write_image(root / split / cls / f"{i} ({cls}).jpg", rng)
    return root


@pytest.fixture
def cifake_tree(tmp_path: Path) -> Path:
    return make_cifake_tree(tmp_path / "cifake")


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<name>.yaml`` with overrides, every output and cache under ``tmp_path``."""

    def _compose(name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name=name,
                overrides=[
                    f"paths.output_dir={tmp_path / 'out'}",
                    f"paths.cache_dir={tmp_path / 'cache'}",
                    *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.pop("hydra", None)
        return cfg

    return _compose


def tiny_demo_overrides(train_per_class: int = 48, test_per_class: int = 24) -> list[str]:
    return [
        "data=demo",
        f"data.demo.train_per_class={train_per_class}",
        f"data.demo.test_per_class={test_per_class}",
        "data.val_fraction=0.25",
        "data.batch_size=16",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        *TINY_NET,
    ]


def real_cifake_root() -> Path:
    """The extracted real CIFAKE named by ``CIFAKE_ROOT``, or skip the test with the reason."""
    root = os.environ.get("CIFAKE_ROOT")
    if not root or not Path(root).exists():
        pytest.skip("real CIFAKE not available: set CIFAKE_ROOT to the extracted dataset "
                    "(.ci/run does this from ../shared/data/cifake.tar.xz)")
    return Path(root)
