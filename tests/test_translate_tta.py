"""Pad-and-crop translation (content moves by the drawn offset, border filled as configured) and
test-time augmentation (the mean of the augmented predictions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifake.analysis.tta import mean_over_views, tta_views, uint8_mean_over_views
from cifake.core.errors import ConfigError
from cifake.data.augment import random_translate, shift
from tests.helpers.config import conf_args
from tests.helpers.models import tiny_classifier


def test_translation_moves_content_by_the_drawn_offset() -> None:
    images = torch.zeros(16, 3, 32, 32)
    images[:, :, 12, 20] = 1.0  # one bright pixel, far from the borders
    out = random_translate(images, 4, "reflect", torch.Generator().manual_seed(7))
    offsets = torch.randint(-4, 5, (2, 16), generator=torch.Generator().manual_seed(7))  # the same draw
    assert len({tuple(o) for o in offsets.T.tolist()}) > 4  # per-sample offsets, not one for the batch
    for i in range(16):
        ys, xs = torch.nonzero(out[i, 0], as_tuple=True)
        dy, dx = offsets[:, i].tolist()
        # Output (y, x) reads input (y + dy, x + dx): the pixel moves by (-dy, -dx).
        assert (ys.tolist(), xs.tolist()) == ([12 - dy], [20 - dx])
    assert torch.equal(out.sum((1, 2, 3)), images.sum((1, 2, 3)))  # no interpolation, no loss


@pytest.mark.parametrize("padding, np_mode", [("reflect", "reflect"), ("replicate", "edge"), ("zeros", "constant")])
def test_translation_fills_the_uncovered_border_as_stated(padding: str, np_mode: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, 8, 8)).astype(np.float32)
    padded = np.pad(image, ((0, 0), (0, 0), (3, 3), (3, 3)), mode=np_mode)
    for dy, dx in [(3, -3), (-2, 1), (0, 3)]:
        got = shift(torch.from_numpy(image), dy, dx, padding).numpy()
        np.testing.assert_array_equal(got, padded[..., 3 + dy:3 + dy + 8, 3 + dx:3 + dx + 8])


def test_translation_keeps_shape_and_refuses_bad_arguments() -> None:
    images = torch.rand(4, 3, 32, 32)
    assert random_translate(images, 0) is images
    assert random_translate(images, 2).shape == images.shape
    with pytest.raises(ValueError, match=">= 0"):
        random_translate(images, -1)
    with pytest.raises(ValueError, match="padding"):
        random_translate(images, 2, "wrap")


@torch.no_grad()
def test_tta_equals_the_mean_of_the_augmented_predictions() -> None:
    model = tiny_classifier(arch="resnet").eval()
    images = torch.rand(6, 3, 32, 32)
    p = lambda x: torch.sigmoid(model(x))  # noqa: E731
    plain = model.p_real(images)
    assert torch.allclose(plain, p(images))
    flipped = model.set_tta("flip").p_real(images)
    assert torch.allclose(flipped, (p(images) + p(images.flip(-1))) / 2, atol=1e-6)
    assert not torch.allclose(flipped, plain)  # the flip changed something, so the test can fail
    views = [images, images.flip(-1)]
    views += [shift(v, dy, dx) for v in list(views) for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
    expected = torch.stack([p(v) for v in views]).mean(0)
    assert torch.allclose(model.set_tta("flip_shift", 2).p_real(images), expected, atol=1e-6)
    assert len(tta_views(images, "flip_shift", 2)) == 10


def test_tta_on_uint8_models_sees_the_same_views() -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    seen = []

    def p_real(batch: torch.Tensor) -> torch.Tensor:
        assert batch.dtype == torch.uint8
        seen.append(batch)
        return batch.float().mean((1, 2, 3)) / 255

    got = uint8_mean_over_views(p_real, images, "flip_shift", 1)
    expected = mean_over_views(lambda x: x.mean((1, 2, 3)) / 255, images.float(), "flip_shift", 1)
    assert torch.allclose(got, expected)
    assert torch.equal(seen[0][5:10], images.flip(-1))


def test_unknown_tta_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        tiny_classifier(arch="resnet").eval().set_tta("rotate")
    with pytest.raises(ConfigError, match="tta_shift"):
        tiny_classifier(arch="resnet").eval().set_tta("flip_shift", 0)


def test_datamodule_translates_only_while_training(tmp_path) -> None:
    from types import SimpleNamespace

    from cifake.data.datamodule import CIFAKEDataModule

    dm = CIFAKEDataModule(**conf_args("data", root=str(tmp_path), cache_dir=str(tmp_path), shear=0.0, translate=3))
    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    images[:, :, 16, 16] = 255
    batch = (images, torch.zeros(32, dtype=torch.long), torch.arange(32))
    dm.trainer = SimpleNamespace(training=False)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0][:, :, 16, 16], torch.ones(32, 3))
    dm.trainer = SimpleNamespace(training=True)
    moved = dm.on_after_batch_transfer(batch, 0)[0]
    assert (moved[:, 0, 16, 16] == 0).sum() > 16  # most images shifted away from the centre
    assert torch.equal(moved.sum((1, 2, 3)), torch.full((32,), 3.0))  # each still holds its one pixel


@pytest.mark.parametrize("kwargs, message", [({"translate": -1}, "whole pixels"),
                                             ({"translate_padding": "wrap"}, "choose one of")])
def test_datamodule_refuses_bad_translation(tmp_path, kwargs: dict, message: str) -> None:
    from cifake.data.datamodule import CIFAKEDataModule

    with pytest.raises(ConfigError, match=message):
        CIFAKEDataModule(**conf_args("data", root=str(tmp_path), cache_dir=str(tmp_path), **kwargs))
