"""Every training budget the project states (each experiment's ``Budget:`` line in conf/experiment/ and the
README's table) is what a run of that recipe on CIFAKE records as ``train_pflop``: 3 x the forward FLOPs of a
training input x the training images of an epoch x epochs (cifake/models/flops.py, models/classifier.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hydra.utils import instantiate

from cifake.data.split import stratified_split
from cifake.models.flops import forward_flops, train_pflop
from tests.helpers import ROOT
from tests.helpers.config import compose_config

CIFAKE_TRAIN = {"FAKE": 50_000, "REAL": 50_000}  # the Kaggle layout's train split (../shared/data/README.md)
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def stated_budgets() -> dict[str, float]:
    """experiment -> the PFLOP its YAML's ``# Budget: X PFLOP`` line states (experiments without one: none)."""
    found = {}
    for name in EXPERIMENTS:
        match = re.search(r"^# Budget: ([\d.]+) PFLOP", (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text(),
                          re.MULTILINE)
        if match:
            found[name] = float(match.group(1))
    return found


def readme_budgets() -> dict[str, float]:
    """experiment -> the PFLOP in the README's table row for ``experiment=<name>``."""
    rows = re.findall(r"^\| `experiment=(\w+)` \|.*?\| ([\d.]+) PFLOP \|", (ROOT / "README.md").read_text(),
                      re.MULTILINE)
    return {name: float(value) for name, value in rows}


def recorded_budget(experiment: str) -> float:
    """What a run of ``experiment`` on CIFAKE records: the training images of an epoch as the data module
    splits them (all of train when it validates on test, else train less the held-out share), at the size
    the network trains on (``data.crop`` or the image size)."""
    cfg = compose_config("train", [f"experiment={experiment}", "paths.output_dir=/nonexistent"])
    labels = np.repeat([0, 1], list(CIFAKE_TRAIN.values()))
    if cfg.data.validate_on == "test":
        per_epoch = len(labels)
    else:
        per_epoch = len(stratified_split(labels, cfg.data.val_fraction, cfg.data.split_seed)[0])
    size = cfg.data.crop or cfg.data.image_size
    net = instantiate(cfg.model.net, _convert_="all")
    return train_pflop(forward_flops(net, size), per_epoch * cfg.trainer.max_epochs)


def test_the_budgets_are_stated_where_users_read_them() -> None:
    stated = stated_budgets()
    assert {"reference", "best", "cpu_fast", "cpu_best"} <= set(stated)
    assert set(readme_budgets()) <= set(stated)  # every budget in the README comes from a recipe's own line


@pytest.mark.parametrize("experiment", sorted(stated_budgets()))
def test_a_stated_budget_is_what_a_run_records(experiment: str) -> None:
    recorded = recorded_budget(experiment)
    assert stated_budgets()[experiment] == pytest.approx(recorded, rel=0.01), f"{experiment} records {recorded:.3f}"
    if experiment in readme_budgets():
        assert readme_budgets()[experiment] == pytest.approx(recorded, rel=0.01)


def test_validating_on_test_trains_on_all_of_train() -> None:
    """The reference recipe validates on test, as the report did: 100,000 training images an epoch, not 90,000."""
    cfg = compose_config("train", ["experiment=reference", "paths.output_dir=/nonexistent"])
    assert cfg.data.validate_on == "test"
    flops = forward_flops(instantiate(cfg.model.net, _convert_="all"), 32)
    assert recorded_budget("reference") == pytest.approx(3 * flops * 100_000 * 350 / 1e15)
