"""Training-time degradations: right shape, dtype and range, the configured amount of change, and
nothing at all unless configured."""

from __future__ import annotations

import pytest
import torch

from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.degrade import check_degradations, degrade, is_active
from cifake.data.perturb import gaussian_blur, jpeg, pil_rescale, rescale
from tests.helpers.config import conf_args

OFF = {"scale": {"p": 0.0, "range": [0.5, 0.95]}, "blur": {"p": 0.0, "range": [0.2, 1.2]},
       "noise": {"p": 0.0, "range": [1.0, 10.0]}, "jpeg": {"p": 0.0, "range": [40, 95]}}


def batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth colour ramps with some texture: what JPEG and resampling change a little, not wholly."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(30, 220, 32)
    base = torch.stack([ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32), torch.full((32, 32), 128.0)])
    texture = torch.randint(-20, 21, (n, 3, 32, 32), generator=g).float()
    return (base + texture).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("family", ["scale", "blur", "noise", "jpeg"])
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
    ({"noise": {"p": 0.1, "range": [1, 2], "std": 3}}, "takes p and range"),
])
def test_bad_degradation_settings_are_config_errors(spec: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        check_degradations(spec)
