"""Composed configs: the settings conf/ gives a Hydra-built class, whole job configs, tiny overrides."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

import cifake.core.schemas  # noqa: F401  (registers the config schemas before composing)
from tests.helpers import ROOT

CONF_DIR = ROOT / "conf"
# A small network so that fitting in tests takes seconds; the default net is tested on its own.
TINY_NET = [
    "model.net.filters=[8,16,16,16]",
    "model.net.dense=[32]",
]
# A small ResNet of the shipped shape, as overrides.
RESNET = ["model=resnet", "model.net.stem=[8,8]", "model.net.widths=[16,16]", "model.net.blocks=[1,1]"]


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


def compose_config(name: str, overrides: Iterable[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` with overrides, composed as the entry script would, less the ``hydra``
    key (a job run in process gets the rest of the config)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def compose_job(name: str, out: Path, overrides: Iterable[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` with overrides, writing to ``out`` (usable outside a test's tmp_path)."""
    return compose_config(name, [f"paths.output_dir={out}", *overrides])


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


def tiny_demo_data_overrides() -> list[str]:
    """:func:`tiny_demo_overrides`' data and device only: what evaluate.py and predict.py take of a tiny run."""
    return [o for o in tiny_demo_overrides() if o.startswith(("data", "trainer.accelerator"))]


# No figures: the dashboards' per-epoch figures (curves, prediction grid, Grad-CAM) and the evaluation's report
# figures, for tests whose point is elsewhere (caches, locks, sweeps, resuming, DDP's numbers). They cost about 3.5 s
# an epoch and 4.5 s an evaluation of a tiny run on a loaded 2-core machine; the figures have tests of their own
# (test_dashboards.py, test_plots.py, test_callbacks.py).
NO_FIGURES = ["callbacks.curves=null", "callbacks.prediction_grid=null", "callbacks.gradcam=null",
              "report.figures=false"]


def tiny_resnet_overrides() -> list[str]:
    """:func:`tiny_demo_overrides` with the small ResNet (:data:`RESNET`) instead of the tiny VGG."""
    return [o for o in tiny_demo_overrides() if not o.startswith("model.net.")] + RESNET


def tiny_train_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """train.py on the tiny demo data for one epoch, its cache and logs under ``tmp_path``."""
    return [*tiny_demo_overrides(), "trainer.max_epochs=1", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.log_dir={tmp_path / 'logs'}", *extra]


def real_cifake_root() -> Path:
    """The extracted real CIFAKE named by ``CIFAKE_ROOT``, or skip the test with the reason."""
    root = os.environ.get("CIFAKE_ROOT")
    if not root or not Path(root).exists():
        pytest.skip("real CIFAKE not available: set CIFAKE_ROOT to the extracted dataset "
                    "(.ci/run does this from ../shared/data/cifake.tar.xz)")
    return Path(root)
