"""Training crops (data.crop): each image cut to its own whole-pixel window, nothing resampled; the
data module checks the side and crops training batches only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cifake.core.errors import ConfigError
from cifake.data.augment import random_crop
from cifake.data.datamodule import CIFAKEDataModule
from tests.helpers.config import conf_args


def test_each_crop_is_a_window_of_its_own_image_at_its_own_place() -> None:
    images = torch.arange(16 * 3 * 32 * 32, dtype=torch.float32).reshape(16, 3, 32, 32)
    out = random_crop(images, 24, torch.Generator().manual_seed(3))
    assert out.shape == (16, 3, 24, 24)
    corners = set()
    for i in range(16):
        # Pixel values are their own positions, so the top-left value says where the window sits.
        flat = int(out[i, 0, 0, 0]) - i * 3 * 32 * 32
        top, left = divmod(flat, 32)
        assert 0 <= top <= 8 and 0 <= left <= 8
        assert torch.equal(out[i], images[i, :, top:top + 24, left:left + 24])  # whole pixels, every channel
        corners.add((top, left))
    assert len(corners) > 4  # a place per image, not one for the batch


def test_a_crop_of_the_whole_image_changes_nothing_and_a_bad_side_is_refused() -> None:
    images = torch.rand(2, 3, 32, 32)
    assert random_crop(images, 32) is images
    for side in (0, 33):
        with pytest.raises(ValueError, match=r"crop must be a side in whole pixels in \[1, 32\]"):
            random_crop(images, side)


@pytest.mark.parametrize("crop", [0, 33, -4])
def test_the_data_module_refuses_a_crop_outside_the_image(crop: int, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"data.crop is the side of the training crop .* \[1, 32\].*got"):
        CIFAKEDataModule(**conf_args("data", root=str(tmp_path), cache_dir=str(tmp_path), crop=crop))


def test_only_training_batches_are_cropped(tmp_path) -> None:
    data = CIFAKEDataModule(**conf_args("data", root=str(tmp_path), cache_dir=str(tmp_path), crop=20))
    batch = (torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.zeros(4), torch.arange(4))
    for training, side in ((True, 20), (False, 32)):
        data.trainer = SimpleNamespace(training=training)
        images, labels, rows = data.on_after_batch_transfer(batch, 0)
        assert images.shape == (4, 3, side, side) and images.dtype == torch.float32
        assert torch.equal(rows, batch[2])
