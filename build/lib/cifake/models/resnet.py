"""A residual network shaped for real-vs-fake detection: it looks at every pixel at full
resolution before it pools, because the evidence of generation sits in the highest frequencies.

Layout: a stem of stride-1 convolutions at the input's resolution, then stages that each halve
the resolution with a 2x2 max-pool and stack residual blocks, then global average pooling and one
logit. Every size is an argument (``conf/model/resnet.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifake.core.errors import ConfigError
from cifake.core.nodes import fill, node_values


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 stride-1 same-padded convolution -> batch-norm -> ReLU (no bias: batch-norm has one)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch-norm (then torchvision's squeeze-and-excitation gates, Hu et al.
    2018, when ``se`` > 0, the hidden width being the block's width over ``se``), added to the input
    (projected by a 1x1 convolution when the width changes), then ReLU: the basic block of He et al. (2016)."""

    def __init__(self, c_in: int, c_out: int, se: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        ]
        if se:
            from torchvision.ops import SqueezeExcitation  # here: a network without gates never loads torchvision

            layers.append(SqueezeExcitation(c_out, max(1, c_out // se)))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


def inverted_residual(c_in: int, c_out: int, expansion: int) -> nn.Module:
    """MobileNetV2's inverted residual (Sandler et al. 2018, torchvision's block): a 1x1 convolution widens to
    ``c_in * expansion`` channels, a depthwise 3x3 convolution filters each, a 1x1 convolution projects to
    ``c_out``, added to the input when the widths match. Several of these cost what one basic block does."""
    from torchvision.models.mobilenetv2 import InvertedResidual  # here: a basic-block network never loads torchvision

    return InvertedResidual(c_in, c_out, stride=1, expand_ratio=expansion)


BLOCKS = ("basic", "inverted")  # what model.net.block may name
INPUTS = ("rgb", "blur", "npr", "srm", "haar_hh")  # what model.net.inputs may name
# Three SRM high-pass kernels (Fridrich and Kodovsky's rich models, as Zhou et al. 2018 use them): each sums to zero
# and leaves nothing of a linear ramp, so only the fine residual of the image passes.
SRM_KERNELS = (
    [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
    [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
    [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
)
SRM_SCALES = (4.0, 12.0, 2.0)


class DetectorInputs(nn.Module):
    """What the network sees: fixed (never learnt) views of the RGB image, per channel, concatenated
    on the channel axis, each keeping the image's size.

    - ``rgb``: the image itself.
    - ``blur``: ``x - blur3x3(x)``, the residual after a 3x3 box blur.
    - ``npr``: ``x - up(down(x))`` with nearest-neighbour resampling by 2 (NPR, Tan et al., CVPR 2024): what
      an upsampling layer's neighbouring pixels do not share.
    - ``srm``: three SRM high-pass filters (5x5), three channels each.
    - ``haar_hh``: the high-high band of an undecimated Haar wavelet (``[[1, -1], [-1, 1]] / 2``), as SAFE
      uses the wavelet's finest band.
    """

    CHANNELS = {"rgb": 1, "blur": 1, "npr": 1, "srm": 3, "haar_hh": 1}  # output channels per input channel

    def __init__(self, names: Sequence[str], channels: int) -> None:
        super().__init__()
        unknown = [n for n in names if n not in INPUTS]
        if not names or unknown or len(set(names)) != len(names):
            raise ConfigError(f"model.net.inputs={list(names)}; name each of {list(INPUTS)} at most once, at least "
                              "one (e.g. [rgb], [rgb,npr], [srm])")
        self.names, self.channels = list(names), channels
        self.out_channels = channels * sum(self.CHANNELS[n] for n in names)
        if "blur" in names:  # a frozen convolution, as the checkpoints of model.net.high_pass=true hold it
            self.blur = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="replicate", groups=channels,
                                  bias=False)
            nn.init.constant_(self.blur.weight, 1 / 9)
            self.blur.weight.requires_grad_(False)
        srm = torch.tensor(SRM_KERNELS, dtype=torch.float32) / torch.tensor(SRM_SCALES).view(3, 1, 1)
        # Not saved with the weights: fixed by the code, so a checkpoint of [rgb] holds what it always held.
        self.register_buffer("srm", srm.unsqueeze(1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("haar", torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]]).repeat(channels, 1, 1, 1) / 2,
                             persistent=False)

    def view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One named view of the float batch ``x``."""
        if name == "rgb":
            return x
        if name == "blur":
            return x - self.blur(x)
        if name == "npr":
            return x - x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        if name == "srm":
            return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.srm.to(x.dtype), groups=self.channels)
        return F.conv2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), self.haar.to(x.dtype), groups=self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.names == ["rgb"]:
            return x
        return torch.cat([self.view(name, x) for name in self.names], dim=1)


def upgrade_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """A network's arguments as this version takes them, from a checkpoint or export of an older one:
    ``high_pass: true/false`` became ``inputs: [rgb, blur]`` / ``[rgb]`` (the same network, the same weights),
    and a network from before ``se`` had no squeeze-and-excitation (``se: 0``)."""
    if spec.get("_target_") != "cifake.models.resnet.ResNet":
        return dict(spec)
    upgraded = {k: v for k, v in spec.items() if k != "high_pass"}
    if "high_pass" in spec:
        upgraded["inputs"] = ["rgb", "blur"] if spec["high_pass"] else ["rgb"]
    if "se" not in spec:
        upgraded["se"] = 0
    if "block" not in spec:
        upgraded["block"] = "basic"
    if "expansion" not in spec:
        upgraded["expansion"] = 1  # no widening: basic blocks, which every network before ``block`` had, ignore it
    for key in ("dirac_init", "frozen_bn_scale"):  # a network from before them had neither
        upgraded.setdefault(key, False)
    return upgraded


TARGET = "cifake.models.resnet.ResNet"  # model.net._target_
KEYS = ("stem", "widths", "blocks", "dropout", "se", "block", "expansion", "dirac_init", "frozen_bn_scale", "inputs",
        "in_channels", "image_size")  # model.net's keys (conf/model/resnet.yaml)


@dataclass(frozen=True)
class ResNetBody:
    """The convolutions (see :class:`ResNet`): the ``stem`` widths at full resolution, then one stage per
    width of ``widths`` with ``blocks[i]`` residual blocks of kind ``block`` (``basic``, gated by
    squeeze-and-excitation of reduction ``se``, 0: none; or ``inverted``, ``expansion`` times wider inside)."""

    stem: Sequence[int]
    widths: Sequence[int]
    blocks: Sequence[int]
    block: str
    expansion: int
    se: int


@dataclass(frozen=True)
class ResNetInit:
    """How the layers start and what of them trains (airbench94's choices, both off by default):
    ``dirac_init`` starts each convolution as the identity on its input channels (:func:`dirac_init`);
    ``frozen_bn_scale`` fixes every batch-norm's scale at 1, so only its bias trains (:func:`freeze_bn_scale`)."""

    dirac_init: bool
    frozen_bn_scale: bool


def dirac_init(module: nn.Module) -> None:
    """Start every convolution of ``module`` with at least as many outputs as inputs (and no groups) as the
    identity on its input channels: its first ``in_channels`` filters pass one input channel each through
    (``torch.nn.init.dirac_``), the rest keep their random start, as airbench94 initialises its convolutions.
    A residual branch then starts close to passing its input on, and training moves it from there.
    Narrowing and grouped convolutions keep their random start: an identity there would have to drop
    channels (``dirac_`` would zero every other weight of the layer); so do the squeeze-and-excitation gates'
    1x1 layers, which compute a gate rather than pass the image on."""
    gates = {id(conv) for gate in module.modules() if type(gate).__name__ == "SqueezeExcitation"
             for conv in gate.modules()}
    for conv in module.modules():
        if (isinstance(conv, nn.Conv2d) and id(conv) not in gates and conv.groups == 1
                and conv.out_channels >= conv.in_channels):
            with torch.no_grad():
                nn.init.dirac_(conv.weight[: conv.in_channels])


def freeze_bn_scale(module: nn.Module) -> None:
    """Fix every batch-norm scale (weight) of ``module`` at 1 and stop it training; its bias trains on.
    With a ReLU after it, a scale only sets the size of what the next layer sees, which that layer's
    weights (and its own batch-norm) set anyway: freezing it leaves fewer parameters to tune (airbench94)."""
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d) and norm.weight is not None:
            with torch.no_grad():
                norm.weight.fill_(1.0)
            norm.weight.requires_grad_(False)


class ResNet(nn.Module):
    """Full-resolution stem -> residual stages (each after a 2x2 max-pool) -> global average
    pooling -> dropout -> one logit (REAL is positive; no sigmoid: that lives in the loss/metrics).

    Args:
        stem: widths of the stride-1 convolutions at the input's resolution (two or more keep the
            finest detail in view before any pooling).
        widths: width of each stage; each stage starts with a 2x2 max-pool.
        blocks: residual blocks per stage (one number per stage).
        dropout: dropout rate before the final linear layer.
        se: squeeze-and-excitation in every basic block, its hidden width the block's over ``se``
            (16: 256 channels gated through 16); 0: none.
        block: ``basic`` (two 3x3 convolutions, :class:`ResidualBlock`) or ``inverted`` (MobileNetV2's
            inverted residual, :func:`inverted_residual`).
        expansion: how many times wider an inverted block's depthwise layer is than its input (basic
            blocks ignore it).
        dirac_init: start the stem's and stages' convolutions as identities (:func:`dirac_init`).
        frozen_bn_scale: every batch-norm's scale fixed at 1, only its bias trains (:func:`freeze_bn_scale`).
        inputs: the views of the image the network sees, concatenated (see :class:`DetectorInputs`).
        in_channels: channels of the input images.
        image_size: side of the square input; must be divisible by ``2 ** len(widths)``.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        values = node_values(settings, TARGET, KEYS, "model.net")
        body, init = fill(ResNetBody, values), fill(ResNetInit, values)
        dropout, inputs, in_channels, image_size = (values["dropout"], values["inputs"], values["in_channels"],
                                                    values["image_size"])
        stem, widths, blocks, block, expansion, se = (body.stem, body.widths, body.blocks, body.block, body.expansion,
                                                      body.se)
        if not stem:
            raise ConfigError("model.net.stem needs at least one width (the full-resolution convolutions)")
        if len(widths) != len(blocks):
            raise ConfigError(f"model.net.widths and model.net.blocks need one entry per stage; "
                              f"got {len(widths)} widths and {len(blocks)} block counts")
        if any(n < 1 for n in blocks):
            raise ConfigError(f"model.net.blocks must all be at least 1, got {list(blocks)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.net.dropout must lie in [0, 1), got {dropout}")
        if se < 0:
            raise ConfigError(f"model.net.se must be 0 (off) or a reduction such as 16, got {se}")
        if block not in BLOCKS:
            raise ConfigError(f"model.net.block={block!r}; use one of {list(BLOCKS)}")
        if block == "inverted" and (expansion < 1 or se):
            raise ConfigError(f"model.net.block=inverted needs model.net.expansion >= 1 (got {expansion}) and "
                              f"model.net.se=0 (got {se}: the gates belong to basic blocks)")
        if image_size % (2 ** len(widths)):
            raise ConfigError(f"image_size {image_size} is not divisible by 2**{len(widths)} "
                              f"(one 2x2 max-pool per stage); use fewer stages or another image size")
        self.input = DetectorInputs(inputs, in_channels)
        channels = self.input.out_channels
        layers: list[nn.Module] = []
        for width in stem:
            layers.append(conv_bn_relu(channels, width))
            channels = width
        self.stem = nn.Sequential(*layers)
        stages: list[nn.Module] = []
        for width, n in zip(widths, blocks, strict=True):
            stage: list[nn.Module] = [nn.MaxPool2d(2)]
            for _ in range(n):
                stage.append(ResidualBlock(channels, width, se) if block == "basic"
                             else inverted_residual(channels, width, expansion))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 1))
        if init.dirac_init:  # the learnt convolutions only: the fixed input views keep their kernels
            dirac_init(self.stem)
            dirac_init(self.stages)
        if init.frozen_bn_scale:
            freeze_bn_scale(self)

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> ResNet:
        """The network a ``model.net`` node of conf/model/resnet.yaml describes (its keys, as a checkpoint
        records them too; an older checkpoint's through :func:`upgrade_arguments` first)."""
        return cls(**node_values(node, TARGET, KEYS, "model.net"))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(N, D)`` of a float batch: what the last layer weighs (and what the
        out-of-scope score measures, :mod:`cifake.models.scope`)."""
        return self.head[:-1](self.stages(self.stem(self.input(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a float batch ``(N, C, H, W)`` in [0, 1] to logits of shape ``(N,)`` (REAL is 1)."""
        return self.head[-1](self.embed(x)).squeeze(1)
