"""The detection ResNet: full-resolution stem, shapes, parameter count and refused configs."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cifake.core.errors import ConfigError
from cifake.models.resnet import ResNet
from tests.helpers.config import CONF_DIR, conf_args

SHIPPED = OmegaConf.load(CONF_DIR / "model" / "resnet.yaml").net


def shipped_net() -> ResNet:
    cfg = OmegaConf.to_container(SHIPPED)
    cfg["image_size"] = 32
    return instantiate(cfg)


def expected_parameters(stem: list[int], widths: list[int], blocks: list[int], c_in: int = 3) -> int:
    """Counted by hand: 3x3 convolutions without bias, batch-norm (weight and bias), 1x1 projections
    where the width changes, and the final linear layer."""
    def conv_bn(a: int, b: int, k: int = 3) -> int:
        return a * b * k * k + 2 * b

    total, c = 0, c_in
    for w in stem:
        total, c = total + conv_bn(c, w), w
    for w, n in zip(widths, blocks, strict=True):
        for _ in range(n):
            total += conv_bn(c, w) + conv_bn(w, w) + (conv_bn(c, w, 1) if c != w else 0)
            c = w
    return total + c + 1


def test_shipped_network_gives_one_logit_per_image_and_the_counted_parameters() -> None:
    net = shipped_net().eval()
    out = net(torch.rand(5, 3, 32, 32))
    assert out.shape == (5,) and torch.isfinite(out).all()
    n = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert n == expected_parameters(list(SHIPPED.stem), list(SHIPPED.widths), list(SHIPPED.blocks))
    assert 1_000_000 < n < 1_500_000  # the size the README quotes (1.2M)


def test_stem_runs_at_full_resolution_before_any_pooling() -> None:
    net = shipped_net()
    shapes = []
    for layer in net.stem:
        layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[-2:])))
    net(torch.rand(2, 3, 32, 32))
    assert len(shapes) >= 2 and set(shapes) == {(32, 32)}
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.stem.modules())


def test_every_size_is_an_argument() -> None:
    net = ResNet(**conf_args("model.net", ["model=resnet"], stem=[4, 4, 4], widths=[8, 8], blocks=[2, 1], dropout=0.0,
                           image_size=16))
    assert net(torch.rand(3, 3, 16, 16)).shape == (3,)
    assert sum(p.numel() for p in net.parameters()) == expected_parameters([4, 4, 4], [8, 8], [2, 1])


def test_high_pass_input_adds_the_residual_after_a_fixed_blur() -> None:
    net = ResNet(**conf_args("model.net", ["model=resnet"], stem=[4, 4], widths=[8], blocks=[1], dropout=0.0,
                             high_pass=True))
    flat = torch.full((1, 3, 32, 32), 0.5)
    extra = net.input(flat)
    assert extra.shape == (1, 6, 32, 32)
    assert torch.allclose(extra[:, 3:], torch.zeros(1, 3, 32, 32), atol=1e-6)  # nothing high-pass in a flat image
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2
    residual = net.input(checker.float().expand(1, 3, 32, 32))[:, 3:]
    assert residual[0, 0, 10, 10].abs() > 0.3  # a one-pixel checkerboard is all high frequency
    assert not any(p.requires_grad for p in net.input.parameters())  # fixed, not learnt


@pytest.mark.parametrize("kwargs, message", [
    ({"stem": []}, "stem"),
    ({"widths": [8, 16], "blocks": [1]}, "one entry per stage"),
    ({"blocks": [0]}, "at least 1"),
    ({"dropout": 1.0}, "dropout"),
    ({"widths": [8] * 6, "blocks": [1] * 6}, "divisible"),
])
def test_bad_sizes_are_refused_by_name(kwargs: dict, message: str) -> None:
    args = conf_args("model.net", ["model=resnet"],
                     **{"stem": [4, 4], "widths": [8], "blocks": [1], "dropout": 0.0, **kwargs})
    with pytest.raises(ConfigError, match=message):
        ResNet(**args)
