"""The dashboard callbacks inside Lightning's loops: fit's validation, trainer.test, cadence."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchmetrics.classification import BinaryPrecisionRecallCurve

from cifake.callbacks import CurvesCallback, GradCAMCallback
from cifake.callbacks.curves import log_pr_curve_counts
from cifake.core.errors import ConfigError
from cifake.training.trainer import build_trainer
from tests.helpers.config import conf_args, tiny_demo_overrides
from tests.helpers.outputs import read_events


def test_binned_pr_counts_give_torchmetrics_own_curve() -> None:
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(500, generator=gen)
    y = (torch.rand(500, generator=gen) < p).long()
    curve = BinaryPrecisionRecallCurve(thresholds=11)
    curve.update(p, y)
    precision, recall, thresholds = curve.compute()
    written = {}

    class Writer:
        def add_pr_curve_raw(self, tag, tp, fp, tn, fn, precision, recall, global_step, num_thresholds):
            written.update(tp=tp, fp=fp, tn=tn, fn=fn, precision=precision, recall=recall, n=num_thresholds)

    log_pr_curve_counts([Writer()], "val/pr_curve", curve, step=0)
    assert written["n"] == 11
    np.testing.assert_allclose(written["precision"][:-1], precision[:-2].numpy(), atol=1e-6)
    np.testing.assert_allclose(written["recall"], recall[:-1].numpy(), atol=1e-6)
    at_half = int(np.argmin(np.abs(thresholds.numpy() - 0.5)))
    assert written["tp"][at_half] == int(((p >= 0.5) & (y == 1)).sum())
    assert written["fp"][at_half] == int(((p >= 0.5) & (y == 0)).sum())
    assert (written["tp"] + written["fp"] + written["tn"] + written["fn"] == 500).all()


@pytest.mark.parametrize("every, epochs", [(1, [1, 2, 3, 4]), (2, [2, 4]), (3, [3, 4])])
def test_figures_follow_every_n_epochs_and_always_the_last(every: int, epochs: list[int]) -> None:
    cb = CurvesCallback(**conf_args("callbacks.curves", every_n_epochs=every))
    trainer = SimpleNamespace(sanity_checking=False, max_epochs=4, current_epoch=0)
    due = []
    for epoch in range(4):
        trainer.current_epoch = epoch
        if cb.due(trainer, "val"):
            due.append(epoch + 1)
    assert due == epochs
    trainer.sanity_checking = True
    assert not cb.due(trainer, "val") and cb.due(trainer, "test")
    with pytest.raises(ConfigError, match="every_n_epochs"):
        GradCAMCallback(**conf_args("callbacks.gradcam", every_n_epochs=0))


def test_callbacks_run_in_trainer_test_and_leave_the_model_as_found(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=1"])
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    trainer: L.Trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)

    model.train()
    model.net.features[0].eval()
    modes = [m.training for m in model.modules()]
    trainer.test(model, datamodule=datamodule)  # runs under inference_mode
    assert [m.training for m in model.modules()] == modes  # Lightning restores modes; Grad-CAM must too
    assert all(p.grad is None for p in model.parameters())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    events = read_events(Path(cfg.paths.output_dir) / "tensorboard")
    assert {"test/roc", "test/pr", "test/confusion_matrix", "test/predictions",
            "test/gradcam/fixed", "test/gradcam/correct", "test/gradcam/wrong"} <= events["images"]
    assert "test/pr_curve" in events["tensors"] and "test/acc" in events["scalars"]


def test_prediction_grid_shows_the_same_images_every_epoch(compose_cfg) -> None:
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=2", "callbacks.gradcam=null",
                                "callbacks.curves=null", "callbacks.prediction_grid.per_class=3"])
    grid = instantiate(cfg.callbacks.prediction_grid)
    seen = []
    original = grid._draw

    def spy(trainer, pl_module, stage):
        original(trainer, pl_module, stage)
        if stage in grid._examples:
            images, labels = grid._examples[stage]
            seen.append((images.clone(), labels.copy()))

    grid._draw = spy
    cfg.callbacks.prediction_grid = None
    trainer = build_trainer(cfg, extra_callbacks=[grid])
    trainer.fit(instantiate(cfg.model, _convert_="all"), datamodule=instantiate(cfg.data, _convert_="all"))
    assert len(seen) == 2  # one grid per epoch, none in the sanity check
    assert torch.equal(seen[0][0], seen[1][0]) and list(seen[0][1]) == [0, 0, 0, 1, 1, 1]


def test_unknown_gradcam_layer_fails_with_the_layers_to_choose_from(compose_cfg) -> None:
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=1",
                                "callbacks.gradcam.target_layer=net.nope"])
    trainer = build_trainer(cfg)
    with pytest.raises(ConfigError, match=r"net\.nope.*net\.features\.1\.3"):
        trainer.fit(instantiate(cfg.model, _convert_="all"), datamodule=instantiate(cfg.data, _convert_="all"))
