"""Compute as the budget (cifake/models/flops.py): forward FLOPs counted on a net whose cost is known
by hand, and train_pflop = 3 x forward FLOPs x training images seen in results.json and metrics.json
(with data.crop, the FLOPs of a training crop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cifake.jobs import train as train_job
from cifake.models.flops import forward_flops, train_pflop
from tests.helpers.config import tiny_demo_overrides, tiny_resnet_overrides


class HandCounted(nn.Module):
    """3 -> 4 channels, 3x3 same-padded on 8x8, then 256 -> 1: 2 x 27 x 4 x 64 + 2 x 256 FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1)).squeeze(1)


def test_forward_flops_of_a_net_counted_by_hand() -> None:
    net = HandCounted().train()
    assert forward_flops(net, 8) == 2 * 27 * 4 * 64 + 2 * 256 == 14_336
    assert net.training  # its mode is given back
    assert train_pflop(14_336, 10**6) == pytest.approx(3 * 14_336 * 1e6 / 1e15)


def test_a_run_records_its_training_compute(compose_cfg, tmp_path: Path) -> None:
    # The model summary on, as a user runs it: it sends example_input_array through the data module to count FLOPs.
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=2", "evaluate=true", "tta.mode=flip",
                                "trainer.enable_model_summary=true"])
    train_job.run(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "results.json").read_text())
    training = results["computed"]["training"]
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    per_epoch = sum(len(batch[1]) for batch in datamodule.train_dataloader())
    assert training["images_seen"] == 2 * per_epoch
    model = instantiate(cfg.model, _convert_="all")
    assert training["forward_flops"] == forward_flops(model.net, 32) > 0
    from lightning.pytorch.utilities.model_summary import ModelSummary

    assert ModelSummary(model, max_depth=1).total_flops == training["forward_flops"]  # the summary shows FLOPs
    assert training["train_pflop"] == pytest.approx(3 * training["forward_flops"] * 2 * per_epoch / 1e15)
    assert results["metrics"]["compute/train_pflop"] == pytest.approx(training["train_pflop"], rel=1e-6)
    report = json.loads((out / "metrics.json").read_text())
    assert report["compute"]["train_pflop"] == pytest.approx(training["train_pflop"])
    # The evaluation's own compute, apart: one forward pass per image and view (flip: 2).
    assert report["compute"]["evaluation_pflop"] == pytest.approx(training["forward_flops"] * report["n"] * 2 / 1e15)
    from cifake.callbacks.epoch_log import EpochSummary

    line = EpochSummary(["val/acc"]).line(1, 2, 60.0, 60.0, 1, {"val/acc": 0.9}, 0.1234)
    assert line == ("epoch 1/2 in 1 min 00 s (1 min 00 s so far, ~1 min 00 s to go, 0.123 PFLOP of training): "
                    "val/acc 0.9000")


def test_a_run_on_crops_counts_the_crops_flops(compose_cfg, tmp_path: Path) -> None:
    # data.crop=16 on 32x32 images: each training image costs a 16x16 forward pass; evaluation sees whole images.
    overrides = tiny_resnet_overrides()
    cfg = compose_cfg("train", [*overrides, "trainer.max_epochs=1", "evaluate=true", "data.crop=16"])
    train_job.run(cfg)
    out = Path(cfg.paths.output_dir)
    training = json.loads((out / "results.json").read_text())["computed"]["training"]
    from hydra.utils import instantiate

    net = instantiate(cfg.model, _convert_="all").net
    whole, crop = forward_flops(net, 32), forward_flops(net, 16)
    assert crop == pytest.approx(whole / 4, rel=0.05) and crop < whole  # a quarter of the pixels
    recorded = training["forward_flops"], training["train_forward_flops"], training["train_input_size"]
    assert recorded == (whole, crop, 16)
    assert training["train_pflop"] == pytest.approx(3 * crop * training["images_seen"] / 1e15)
    report = json.loads((out / "metrics.json").read_text())
    assert report["compute"]["train_pflop"] == pytest.approx(training["train_pflop"])
    assert report["compute"]["evaluation_pflop"] == pytest.approx(whole * report["n"] / 1e15)


def test_crops_for_a_network_of_one_input_size_stop_with_what_to_do(compose_cfg) -> None:
    from cifake.core.errors import ConfigError
    from cifake.jobs.train import run

    # The VGG's dense layers take only the flattened 32x32 map: crops end before the first step, with the way out.
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=1", "data.crop=24"])
    with pytest.raises(ConfigError, match=r"cannot take 24x24 training inputs.*model=resnet.*data.crop=null"):
        run(cfg)
