"""callbacks.whiten: the first convolution started from its input patches' whitening filters."""

from __future__ import annotations

import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from cifake.callbacks.whiten import PatchWhitening, first_conv, whitening_filters
from cifake.core.errors import ConfigError
from cifake.data.augment import to_unit_float
from tests.helpers.config import compose_job, tiny_demo_overrides, tiny_resnet_overrides


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Images whose neighbouring pixels are strongly correlated, as photographs' are, with faint fine noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.avg_pool2d(torch.rand(n, 3, 34, 34, generator=g), 3, 1)
    return coarse + 0.01 * torch.rand(n, 3, 32, 32, generator=g)


def output_covariance(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    y = F.conv2d(x, filters)
    return torch.cov(y.transpose(0, 1).reshape(len(filters), -1))


def test_whitening_filters_decorrelate_the_patches_and_give_each_unit_variance() -> None:
    x = smooth_images(64, 0)
    filters = whitening_filters(x, (3, 3), eps=1e-8)
    assert filters.shape == (27, 3, 3, 3)
    cov = output_covariance(x, filters)
    torch.testing.assert_close(cov, torch.eye(27), atol=1e-3, rtol=0)
    # Random filters do not: their outputs share the coarse structure and the fine bands are drowned in it.
    random = torch.randn(27, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    off_diagonal = output_covariance(x, random) - torch.diag(output_covariance(x, random).diag())
    assert off_diagonal.abs().max() > 0.01
    # The filters are ordered from the coarsest (largest variance) to the finest: the first is a smooth
    # average, the last changes sign between neighbouring pixels.
    first, last = filters[0].flatten(), filters[-1]
    assert (first > 0).all() or (first < 0).all()
    assert (last[..., 1:] * last[..., :-1] < 0).float().mean() > 0.5


def test_eps_sets_the_finest_filters_gain() -> None:
    x = smooth_images(16, 2)
    loose, tight = whitening_filters(x, (3, 3), eps=1e-2), whitening_filters(x, (3, 3), eps=1e-8)
    # Large eps leaves the faint fine bands quiet, as their variance lambda / (lambda + eps) is far below 1.
    assert output_covariance(x, loose).diag()[-1] < 0.05 < 0.99 < output_covariance(x, tight).diag()[-1]


def _fit_start(overrides: list[str], tmp_path, seed: int | None = 0,
               **trainer: object) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Call the callback as a fit's start would, with every training image of the tiny demo data: the model,
    its first convolution's weights before, and the training images."""
    cfg = compose_job("train", tmp_path, [*tiny_resnet_overrides(), f"paths.cache_dir={tmp_path / 'cache'}",
                                          *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(cfg.model, _convert_="all")
    callback = PatchWhitening(images=10_000, eps=1e-9, seed=seed, freeze=False)
    before = first_conv(model.net).weight.detach().clone()
    callback.on_fit_start(SimpleNamespace(ckpt_path=trainer.get("ckpt_path"), datamodule=datamodule), model)
    images = to_unit_float(datamodule.train_set.__getitems__(list(range(len(datamodule.train_set))))[0])
    return model, before, images


@pytest.mark.parametrize("seed", [0, None])  # None: a run with seed=null
def test_a_fresh_fit_starts_from_the_whitening_filters_of_training_images(tmp_path, seed) -> None:
    model, before, images = _fit_start(["model.net.stem=[32,8]"], tmp_path, seed=seed)
    weight = first_conv(model.net).weight.detach()
    assert not torch.equal(weight[:27], before[:27]) and torch.equal(weight[27:], before[27:])
    # On the training images, the 27 whitened channels come out decorrelated with unit variance.
    torch.testing.assert_close(output_covariance(images, weight[:27]), torch.eye(27), atol=2e-3, rtol=0)


def test_a_resumed_fit_keeps_the_checkpoints_weights(tmp_path) -> None:
    model, before, _ = _fit_start(["model.net.stem=[32,8]"], tmp_path, ckpt_path="last")
    assert torch.equal(first_conv(model.net).weight, before)


def test_a_first_convolution_too_narrow_for_the_filters_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"sets 27 filters .* has 8; widen it \(model.net.stem\)"):
        _fit_start(["model.net.stem=[8]"], tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [({"images": 1}, "images must be at least 2"),
                                                 ({"eps": 0.0}, "eps must be positive")])
def test_bad_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PatchWhitening(**{"images": 64, "eps": 1e-5, "seed": 0, "freeze": False, **kwargs})


def test_the_readmes_override_whitens_a_training_run(compose_cfg, caplog) -> None:
    """train.py with the override exactly as docs/configuration.md's table gives it, on the tiny demo data."""
    from cifake.jobs import train as train_job
    from tests.helpers import ROOT

    (override,) = re.findall(r"`(\+callbacks\.whiten=[^`]+)`", (ROOT / "docs" / "configuration.md").read_text())
    cfg = compose_cfg("train", [*tiny_resnet_overrides(), "model.net.stem=[32]", "trainer.max_epochs=1", override])
    with caplog.at_level("INFO", logger="cifake.callbacks.whiten"):
        train_job.run(cfg)
    said = [r.getMessage() for r in caplog.records if r.name == "cifake.callbacks.whiten"]
    assert said == ["whitened the first convolution's 27 of 32 filters from 72 training images' patches"]


class _FirstConvAtStart(L.Callback):
    """Keeps the first convolution's weight and bias as the first training step finds them (whitened by then)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        conv = first_conv(pl_module.net)
        self.weight, self.bias = conv.weight.detach().clone(), conv.bias.detach().clone()


@pytest.mark.parametrize("freeze", [True, False])
def test_a_frozen_whitened_convolution_keeps_its_weight_while_its_bias_trains(tmp_path, freeze: bool) -> None:
    cfg = compose_job("train", tmp_path, [*tiny_demo_overrides(), f"paths.cache_dir={tmp_path / 'cache'}",
                                          "model.net.filters=[32,16,16,16]"])  # a VGG: its convolutions have biases
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    start = _FirstConvAtStart()
    trainer = L.Trainer(accelerator="cpu", max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[PatchWhitening(images=64, eps=1e-5, seed=0, freeze=freeze), start])
    trainer.fit(model, datamodule=datamodule)
    conv = first_conv(model.net)
    assert conv.weight.requires_grad is not freeze and conv.bias.requires_grad
    assert torch.equal(conv.weight, start.weight) is freeze  # unfrozen, the filters go on learning
    assert not torch.equal(conv.bias, start.bias)


def test_a_resumed_fit_freezes_the_checkpoints_weight_again(tmp_path) -> None:
    """requires_grad is not saved in a checkpoint: a resumed fit freezes the weight it loads, as loaded."""
    model, before, _ = _fit_start(["model.net.stem=[32,8]"], tmp_path, ckpt_path="last")
    callback = PatchWhitening(images=64, eps=1e-5, seed=0, freeze=True)
    callback.setup(SimpleNamespace(ckpt_path="last"), model, "fit")
    callback.on_fit_start(SimpleNamespace(ckpt_path="last"), model)
    conv = first_conv(model.net)
    assert not conv.weight.requires_grad and torch.equal(conv.weight, before)
