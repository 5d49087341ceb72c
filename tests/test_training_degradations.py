"""Training-time degradations: right shape, dtype and range, the configured amount of change, and
nothing at all unless configured."""

from __future__ import annotations

import pytest
import torch

from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.degradations import RERENDER_DOWN, RERENDER_UP, gaussian_blur, jpeg, pil_rescale, rerender, rescale
from cifake.data.training_degradations import check_degradations, degrade, is_active
from tests.helpers.config import conf_args

OFF = {"scale": {"p": 0.0, "range": [0.5, 0.95]}, "blur": {"p": 0.0, "range": [0.2, 1.2]},
       "noise": {"p": 0.0, "range": [1.0, 10.0]}, "jpeg": {"p": 0.0, "range": [40, 95]},
       "rerender": {"p": 0.0, "range": [2.0, 6.0], "quality": [60, 95], "jpeg_share": 0.5}}


def batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth colour ramps with some texture: what JPEG and resampling change a little, not wholly."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(30, 220, 32)
    base = torch.stack([ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32), torch.full((32, 32), 128.0)])
    texture = torch.randint(-20, 21, (n, 3, 32, 32), generator=g).float()
    return (base + texture).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("family", ["scale", "blur", "noise", "jpeg", "rerender"])
def test_each_family_keeps_shape_dtype_and_range_and_changes_the_chosen_share(family: str) -> None:
    images = batch(64)
    spec = check_degradations({**OFF, family: {**OFF[family], "p": 0.5}})
    out = degrade(images, spec, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    changed = (out != images).flatten(1).any(1)
    assert 16 <= int(changed.sum()) <= 48  # about half of 64 images, the rest untouched bit for bit
    assert torch.equal(out[~changed], images[~changed])
    assert torch.equal(images, batch(64))  # the input is not modified in place


def test_degradations_are_off_unless_configured() -> None:
    images = batch()
    assert not is_active(check_degradations(OFF)) and not is_active(check_degradations(None))
    assert torch.equal(degrade(images, check_degradations(OFF)), images)
    data = CIFAKEDataModule(**conf_args("data", root="unused", cache_dir="unused"))
    assert not is_active(data.degradations)


def test_the_strength_is_the_configured_amount() -> None:
    images = batch(8)
    # JPEG at quality 100 (full colour resolution) is nearly the identity; at quality 10 it is not.
    assert (jpeg(images, 100, subsampling=0).float() - images.float()).abs().mean() < 1.0
    assert (jpeg(images, 10, subsampling=0).float() - images.float()).abs().mean() > 4.0
    # Blurring a constant image gives the same image, whatever sigma.
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, 1.5), flat)
    # Down-up at factor 1 is the identity, for both resamplers.
    assert torch.equal(rescale(images, 1.0), images) and torch.equal(pil_rescale(images, 1.0), images)
    assert not torch.equal(rescale(images, 0.5), images)
    # A range pinned to one strength applies exactly that strength.
    spec = check_degradations({"jpeg": {"p": 1.0, "range": [30, 30]}})
    assert torch.equal(degrade(images, spec), jpeg(images, 30))
    spec = check_degradations({"blur": {"p": 1.0, "range": [0.8, 0.8]}})
    assert torch.equal(degrade(images, spec), gaussian_blur(images, 0.8))


@pytest.mark.parametrize(("spec", "named"), [
    ({"sharpen": {"p": 0.1, "range": [1, 2]}}, "unknown degradation"),
    ({"blur": {"p": 1.5, "range": [0.1, 1]}}, "probability"),
    ({"blur": {"p": 0.1, "range": [1.0, 0.1]}}, "range is"),
    ({"jpeg": {"p": 0.1, "range": [50, 120]}}, "quality"),
    ({"noise": {"p": 0.1, "range": [1, 2], "std": 3}}, "takes p, range, got"),
    ({"rerender": {"p": 0.1, "range": [0.5, 2.0]}}, "enlargement >= 1"),
    ({"rerender": {"p": 0.1, "range": [2.0, 4.0], "quality": [0, 90]}}, "within 1..100"),
    ({"rerender": {"p": 0.1, "range": [2.0, 4.0], "jpeg_share": 2}}, "jpeg_share is a probability"),
])
def test_bad_degradation_settings_are_config_errors(spec: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        check_degradations(spec)


def test_rerender_keeps_smooth_images_and_changes_fine_texture() -> None:
    """Up to a photo's size and back leaves a flat or slowly varying image nearly as it was, whatever
    kernels are drawn, and takes detail away from a textured one with most kernels (nearest up then
    area down is the identity but for the JPEG): the change a photo's path makes."""
    flat = torch.full((4, 3, 32, 32), 90, dtype=torch.uint8)
    textured = batch(4)
    changes = []
    for seed in range(16):  # every kernel pair and both antialiasing choices come up
        assert (rerender(flat, 4.0, torch.Generator().manual_seed(seed)).float() - 90).abs().max() <= 2
        out = rerender(textured, 4.0, torch.Generator().manual_seed(seed))
        changes.append(float((out.float() - textured.float()).abs().mean()))
    assert max(changes) > 4.0 and sorted(changes)[len(changes) // 2] > 2.0
    smooth = torch.nn.functional.avg_pool2d(textured.float(), 5, 1, 2, count_include_pad=False).round().to(torch.uint8)
    assert (rerender(smooth, 3.0, torch.Generator().manual_seed(0), jpeg_share=0.0).float()
            - smooth.float()).abs().mean() < 2.0
    assert len(RERENDER_UP) == 3 and len(RERENDER_DOWN) == 3


def test_rerender_draws_come_from_the_generator_and_the_options_reach_it() -> None:
    images = batch(8)
    a = rerender(images, 3.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, rerender(images, 3.0, torch.Generator().manual_seed(5)))
    outs = {rerender(images, 3.0, torch.Generator().manual_seed(s)).sum().item() for s in range(8)}
    assert len(outs) > 2  # different seeds draw different kernels, antialiasing or quality
    # The configured quality and JPEG share are what the training batch gets.
    spec = check_degradations({"rerender": {"p": 1.0, "range": [3.0, 3.0], "quality": [20, 20], "jpeg_share": 1.0}})
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.rand(len(images) + 1, generator=g2)  # degrade's own draws come first
    assert torch.equal(degrade(images, spec, g1), rerender(images, 3.0, g2, quality=(20, 20), jpeg_share=1.0))
    assert not torch.equal(rerender(images, 3.0, torch.Generator().manual_seed(9), quality=(20, 20), jpeg_share=1.0),
                           rerender(images, 3.0, torch.Generator().manual_seed(9), quality=(95, 95), jpeg_share=1.0))
