import math
from types import SimpleNamespace

import pytest
import torch

from cifake.data.augment import (
    NEGLIGIBLE_ROW_OFFSET,
    column_offsets,
    grid_shear,
    max_shear_offsets,
    random_shear,
    row_offsets,
    sample_shear_degrees,
    shear_grid,
    to_unit_float,
)
from cifake.data.datamodule import CIFAKEDataModule
from tests.helpers.config import conf_args


def test_angles_are_per_sample_and_within_plus_minus_shear_degrees() -> None:
    g = torch.Generator().manual_seed(0)
    angles = sample_shear_degrees(20000, 0.2, generator=g)
    assert angles.abs().max() <= 0.2
    assert angles.min() < -0.19 and angles.max() > 0.19  # the whole range is used
    assert abs(angles.mean()) < 0.01 and abs(angles.std() - 0.2 / math.sqrt(3)) < 0.005  # uniform
    assert len(torch.unique(angles)) > 0.99 * len(angles)  # one angle per sample, not per batch


def test_grid_is_the_keras_shear_in_degrees() -> None:
    grid = shear_grid(torch.tensor([30.0, 0.0]), 8, 8)
    base = shear_grid(torch.tensor([0.0]), 8, 8)[0]
    s = math.radians(30.0)
    # x reads from x - sin(s) * y; y from cos(s) * y (normalised, centred coordinates)
    assert torch.allclose(grid[0, ..., 0], base[..., 0] - math.sin(s) * base[..., 1], atol=1e-6)
    assert torch.allclose(grid[0, ..., 1], math.cos(s) * base[..., 1], atol=1e-6)
    assert torch.allclose(grid[1], base)


def test_a_large_shear_tilts_a_vertical_line() -> None:
    image = torch.zeros(1, 1, 33, 33)
    image[..., 16] = 1.0  # a vertical line through the centre column
    torch.manual_seed(0)
    out = random_shear(image.expand(64, 1, 33, 33).contiguous(), 45.0)
    centre_row = out[:, 0, 16]
    assert torch.allclose(centre_row.argmax(-1), torch.full((64,), 16))  # the centre stays put
    top, bottom = out[:, 0, 4].argmax(-1), out[:, 0, 28].argmax(-1)
    assert ((top - 16) * (bottom - 16) <= 0).all()  # rows above and below move opposite ways
    assert (top != 16).float().mean() > 0.8
    assert len(torch.unique(top)) > 3  # per-sample angles


def test_zero_shear_is_identity_and_negative_is_refused() -> None:
    x = torch.rand(4, 3, 32, 32)
    assert random_shear(x, 0.0) is x
    with pytest.raises(ValueError):
        random_shear(x, -1.0)


def test_small_shear_barely_changes_an_image() -> None:
    x = torch.rand(8, 3, 32, 32)
    out = random_shear(x, 0.2)
    assert out.shape == x.shape and (out - x).abs().mean() < 0.02


def test_rescale_to_unit_interval() -> None:
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_unit_float(x), torch.tensor([0.0, 128 / 255, 1.0]))


def test_datamodule_shears_only_while_training(tmp_path) -> None:
    dm = CIFAKEDataModule(**conf_args("data", root=str(tmp_path), cache_dir=str(tmp_path), shear=45.0))
    images = torch.full((4, 3, 32, 32), 0, dtype=torch.uint8)
    images[..., 16] = 255
    batch = (images, torch.zeros(4, dtype=torch.long), torch.arange(4))
    dm.trainer = SimpleNamespace(training=False)
    evaluated = dm.on_after_batch_transfer(batch, 0)[0]
    assert torch.equal(evaluated, to_unit_float(images))
    dm.trainer = SimpleNamespace(training=True)
    trained = dm.on_after_batch_transfer(batch, 0)[0]
    assert trained.dtype == torch.float32 and not torch.allclose(trained, evaluated)


@pytest.mark.parametrize("max_degrees", [0.2, 1.0, 3.5, 30.0])
@pytest.mark.parametrize("shape", [(16, 3, 32, 32), (5, 1, 20, 28), (3, 2, 7, 4)])
def test_every_shear_path_matches_grid_sample(max_degrees: float, shape: tuple[int, ...]) -> None:
    # sub-pixel shears take the CPU's three-tap filters; they must resample as grid_sample does,
    # up to the vertical offset they may leave out (bounded by NEGLIGIBLE_ROW_OFFSET)
    x = torch.rand(shape)
    out = random_shear(x, max_degrees, generator=torch.Generator().manual_seed(1))
    degrees = sample_shear_degrees(shape[0], max_degrees, generator=torch.Generator().manual_seed(1))
    expected = grid_shear(x, degrees)
    max_dy, _ = max_shear_offsets(max_degrees, shape[2])
    skipped = max_dy if max_dy < NEGLIGIBLE_ROW_OFFSET else 0.0
    assert (out - expected).abs().max() <= skipped + 1e-5


def test_the_reports_shear_differs_from_grid_sample_by_under_half_a_grey_level() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32)).float() / 255  # sharp 8-bit noise: the worst case
    out = random_shear(x, 0.2, generator=torch.Generator().manual_seed(0))
    degrees = sample_shear_degrees(64, 0.2, generator=torch.Generator().manual_seed(0))
    expected = grid_shear(x, degrees)
    assert (out - expected).abs().max() < 0.5 / 255
    assert (out - x).abs().max() > 10 / 255  # and the shear itself is far bigger than that


def test_max_shear_offsets_bound_every_row_offset() -> None:
    for max_degrees, height in [(0.2, 32), (3.5, 32), (10.0, 32), (150.0, 3), (179.0, 2)]:
        degrees = torch.linspace(-max_degrees, max_degrees, 2001)
        radians = torch.deg2rad(degrees)
        for offsets, bound in zip((row_offsets(radians, height), column_offsets(radians, height)),
                                  max_shear_offsets(max_degrees, height), strict=True):
            largest = offsets.abs().max().item()
            assert bound - 1e-3 <= largest <= bound + 1e-6  # a bound, and a tight one
    max_dy, max_dx = max_shear_offsets(0.2, 32)
    assert max_dx < 1 < max(max_shear_offsets(4.0, 32))  # the report's shear is sub-pixel
    assert max_dy < NEGLIGIBLE_ROW_OFFSET < max_shear_offsets(1.0, 32)[0]


def test_alternating_hflip_mirrors_an_image_when_its_bit_and_the_epochs_parity_differ() -> None:
    from cifake.data.augment import alternating_hflip

    images = torch.rand(4, 3, 5, 5)
    first = torch.tensor([True, False, True, False])
    even, odd = alternating_hflip(images, first, 6), alternating_hflip(images, first, 7)
    for i, mirrored_first in enumerate(first.tolist()):
        assert torch.equal(even[i], images[i].flip(-1) if mirrored_first else images[i])
        assert torch.equal(odd[i], images[i] if mirrored_first else images[i].flip(-1))
