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


def test_blur_input_adds_the_residual_after_a_fixed_blur() -> None:
    net = ResNet(**conf_args("model.net", ["model=resnet"], stem=[4, 4], widths=[8], blocks=[1], dropout=0.0,
                             inputs=["rgb", "blur"]))
    flat = torch.full((1, 3, 32, 32), 0.5)
    extra = net.input(flat)
    assert extra.shape == (1, 6, 32, 32)
    assert torch.allclose(extra[:, 3:], torch.zeros(1, 3, 32, 32), atol=1e-6)  # nothing high-pass in a flat image
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2
    residual = net.input(checker.float().expand(1, 3, 32, 32))[:, 3:]
    assert residual[0, 0, 10, 10].abs() > 0.3  # a one-pixel checkerboard is all high frequency
    assert not any(p.requires_grad for p in net.input.parameters())  # fixed, not learnt


CHECKER = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float().expand(1, 3, 32, 32)
RAMP = (torch.arange(32).float()[None, :] / 31).expand(32, 32).expand(1, 3, 32, 32)  # linear left to right
BLOCKS = torch.rand(1, 3, 16, 16).repeat_interleave(2, -2).repeat_interleave(2, -1)  # constant in 2x2 blocks


@pytest.mark.parametrize("name, channels", [("rgb", 3), ("blur", 3), ("npr", 3), ("srm", 9), ("haar_hh", 3)])
def test_each_input_alone_keeps_the_size_and_computes_what_it_says(name: str, channels: int) -> None:
    net = ResNet(**conf_args("model.net", ["model=resnet"], stem=[4], widths=[8], blocks=[1], dropout=0.0,
                             inputs=[name]))
    view = net.input
    assert view(RAMP).shape == (1, channels, 32, 32) and net(RAMP).shape == (1,)
    assert net.stem[0][0].in_channels == channels
    flat = view(torch.full((1, 3, 32, 32), 0.3))
    if name == "rgb":
        assert torch.equal(view(RAMP), RAMP)
        return
    assert flat.abs().max() < 1e-6  # a flat image has no fine detail
    checker = view(CHECKER)
    if name == "npr":
        # Nearest-neighbour down-and-up copies each 2x2 block's top-left pixel, 0 on this checkerboard: the
        # residual is the checkerboard itself.
        assert torch.equal(checker, CHECKER)
        assert view(BLOCKS).abs().max() < 1e-6  # an image made by 2x nearest upsampling leaves no NPR residual
    if name == "haar_hh":
        assert torch.allclose(checker[0, :, :31, :31].abs(), torch.ones(3, 31, 31))  # (a - b - c + d) / 2 = +-1
        assert view(RAMP)[0, :, :31, :31].abs().max() < 1e-6  # a linear ramp has no high-high band
    if name == "srm":
        assert view(RAMP)[0, :, 2:-2, 2:-2].abs().max() < 1e-5  # second-order filters annihilate a ramp
        assert checker[0, :, 10, 10].abs().min() > 0.5
    if name == "blur":
        assert checker[0, 0, 10, 10].abs() > 0.3
    assert not any(p.requires_grad for p in view.parameters())  # fixed, not learnt


def test_inputs_concatenate_and_unknown_ones_are_refused() -> None:
    net = ResNet(**conf_args("model.net", ["model=resnet"], stem=[4], widths=[8], blocks=[1], dropout=0.0,
                             inputs=["rgb", "npr", "srm", "haar_hh", "blur"]))
    assert net.input(RAMP).shape == (1, 3 + 3 + 9 + 3 + 3, 32, 32)
    # Only the blur's frozen kernel is saved with the weights (as model.net.high_pass=true saved it).
    assert [k for k in net.state_dict() if k.startswith("input.")] == ["input.blur.weight"]
    for bad in ([], ["rgb", "rgb"], ["fft"]):
        with pytest.raises(ConfigError, match="model.net.inputs"):
            ResNet(**conf_args("model.net", ["model=resnet"], inputs=bad))


def test_checkpoints_of_high_pass_load_as_the_same_network() -> None:
    from cifake.models.resnet import upgrade_arguments

    old = {"_target_": "cifake.models.resnet.ResNet", "stem": [4], "widths": [8], "blocks": [1], "dropout": 0.0,
           "high_pass": True, "in_channels": 3, "image_size": 32}
    assert upgrade_arguments(old)["inputs"] == ["rgb", "blur"] and "high_pass" not in upgrade_arguments(old)
    assert upgrade_arguments({**old, "high_pass": False})["inputs"] == ["rgb"]
    vgg = {"_target_": "cifake.models.vgg.VGG", "filters": [8]}
    assert upgrade_arguments(vgg) == vgg


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


def test_squeeze_and_excitation_gates_each_channel_by_the_image_and_costs_almost_no_flops() -> None:
    from torchvision.ops import SqueezeExcitation

    from cifake.models.flops import forward_flops

    plain = ResNet(**conf_args("model.net", ["model=resnet"], se=0))
    gated = ResNet(**conf_args("model.net", ["model=resnet"], se=16))
    assert sum(isinstance(m, SqueezeExcitation) for m in gated.modules()) == sum(SHIPPED.blocks)
    assert not any(isinstance(m, SqueezeExcitation) for m in plain.modules())
    added = sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters())
    assert added == sum(2 * w * (w // 16) + w // 16 + w for w in SHIPPED.widths)  # two 1x1 layers with bias per block
    assert 0 < forward_flops(gated, 32) - forward_flops(plain, 32) < 0.001 * forward_flops(plain, 32)
    gate = SqueezeExcitation(4, 2).eval()
    x = torch.rand(3, 4, 5, 5)
    scales: list[torch.Tensor] = []
    gate.scale_activation.register_forward_hook(lambda _m, _i, out: scales.append(out))
    out = gate(x)
    scale = scales[0]
    assert scale.shape == (3, 4, 1, 1) and ((scale > 0) & (scale < 1)).all()
    torch.testing.assert_close(out, x * scale)  # one gate per image and channel, the same at every pixel
    with pytest.raises(ConfigError, match="model.net.se"):
        ResNet(**conf_args("model.net", ["model=resnet"], se=-1))


def test_a_network_saved_before_se_loads_without_gates() -> None:
    from cifake.models.resnet import upgrade_arguments

    spec = OmegaConf.to_container(SHIPPED)
    spec.pop("se")
    assert upgrade_arguments(spec)["se"] == 0


def test_inverted_blocks_have_mobilenet_v2s_layers_and_the_flops_counted_by_hand() -> None:
    from cifake.models.flops import forward_flops

    args = conf_args("model.net", ["model=resnet"], stem=[8], widths=[16, 32], blocks=[2, 1], dropout=0.0,
                     block="inverted", expansion=3, image_size=16)
    net = ResNet(**args).eval()
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [(m.in_channels, m.groups, m.kernel_size) for m in depthwise] == [
        (24, 24, (3, 3)), (48, 48, (3, 3)), (48, 48, (3, 3))]  # widened x3 from the block's input: 8, 16, 16
    assert net(torch.rand(5, 3, 16, 16)).shape == (5,)
    # Multiply-adds x 2, by hand: stem 3->8 at 16x16; each block 1x1 widen, 3x3 depthwise, 1x1 project at its
    # stage's size (8x8, 8x8, 4x4); the final linear layer.
    def block(c_in: int, c_out: int, pixels: int) -> int:
        hidden = 3 * c_in
        return pixels * (c_in * hidden + 9 * hidden + hidden * c_out)

    macs = 16 * 16 * 3 * 8 * 9 + block(8, 16, 64) + block(16, 16, 64) + block(16, 32, 16) + 32
    assert forward_flops(net, 16) == 2 * macs


def test_inverted_blocks_add_their_input_only_where_the_width_is_kept() -> None:
    args = conf_args("model.net", ["model=resnet"], stem=[8], widths=[8, 16], blocks=[1, 1], dropout=0.0,
                     block="inverted", expansion=2, image_size=16)
    net = ResNet(**args).eval()
    kept, widened = net.stages[0][1], net.stages[1][1]
    assert kept.use_res_connect and not widened.use_res_connect
    x = torch.rand(2, 8, 8, 8)
    torch.testing.assert_close(kept(x), x + kept.conv(x))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"block": "bottleneck"}, "model.net.block='bottleneck'"),
    ({"block": "inverted", "expansion": 0}, "model.net.expansion >= 1"),
    ({"block": "inverted", "se": 16}, "model.net.se=0"),
])
def test_bad_blocks_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResNet(**conf_args("model.net", ["model=resnet"], **kwargs))


def test_a_network_saved_before_block_loads_with_basic_blocks() -> None:
    from cifake.models.resnet import upgrade_arguments

    spec = OmegaConf.to_container(SHIPPED)
    spec.pop("block")
    spec.pop("expansion")
    upgraded = upgrade_arguments(spec)
    assert upgraded["block"] == "basic"
    plain = instantiate({**upgraded, "image_size": 32})
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in shipped_net().parameters())


def test_dirac_init_starts_each_convolution_as_the_identity_on_its_input_channels() -> None:
    args = conf_args("model.net", ["model=resnet"], stem=[4], widths=[8], blocks=[1], dropout=0.0, image_size=16)
    net = ResNet(**{**args, "dirac_init": True})
    block = net.stages[0][1]
    widen, keep, project = block.body[0], block.body[3], block.shortcut[0]  # 4 -> 8, 8 -> 8, 1x1 4 -> 8
    x = torch.rand(2, 4, 16, 16)
    torch.testing.assert_close(widen(x)[:, :4], x)  # the first in_channels filters pass their channel through
    assert widen(x)[:, 4:].abs().sum() > 0  # the rest keep their random start
    y = torch.rand(2, 8, 16, 16)
    torch.testing.assert_close(keep(y), y)  # as many outputs as inputs: the whole layer passes its input
    torch.testing.assert_close(project(x)[:, :4], x)
    image = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(net.stem[0][0](image)[:, :3], image)  # the stem's 3 -> 4 convolution too
    plain = ResNet(**args)  # off (conf/'s default): the random start
    assert not torch.allclose(plain.stages[0][1].body[3](y), y, atol=0.1)


def test_frozen_bn_scale_keeps_every_batch_norm_scale_at_one_while_the_biases_train() -> None:
    args = conf_args("model.net", ["model=resnet"], stem=[4], widths=[8], blocks=[1], dropout=0.0, image_size=16)
    net = ResNet(**{**args, "frozen_bn_scale": True})
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 4 and all(not n.weight.requires_grad and torch.equal(n.weight, torch.ones_like(n.weight))
                                   for n in norms)
    biases = [n.bias.detach().clone() for n in norms]
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.rand(4, 3, 16, 16)).square().mean().backward()
        optimizer.step()
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)  # weight decay skips them too
    assert all(not torch.equal(n.bias, before) for n, before in zip(norms, biases, strict=True))
    assert all(n.weight.requires_grad for n in ResNet(**args).modules() if isinstance(n, torch.nn.BatchNorm2d))


def test_a_network_saved_before_dirac_init_and_frozen_bn_scale_loads_without_them() -> None:
    from cifake.models.resnet import upgrade_arguments

    spec = OmegaConf.to_container(SHIPPED)
    spec.pop("dirac_init")
    spec.pop("frozen_bn_scale")
    upgraded = upgrade_arguments(spec)
    assert upgraded["dirac_init"] is False and upgraded["frozen_bn_scale"] is False
