"""A residual network shaped for real-vs-fake detection: it looks at every pixel at full
resolution before it pools, because the evidence of generation sits in the highest frequencies.

Layout: a stem of stride-1 convolutions at the input's resolution, then stages that each halve
the resolution with a 2x2 max-pool and stack residual blocks, then global average pooling and one
logit. Every size is an argument (``conf/model/resnet.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cifake.core.errors import ConfigError


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 stride-1 same-padded convolution -> batch-norm -> ReLU (no bias: batch-norm has one)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch-norm, added to the input (projected by a 1x1 convolution
    when the width changes), then ReLU: the basic block of He et al. (2016)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class HighPass(nn.Module):
    """Appends the input's residual after a fixed 3x3 box blur (``x - blur(x)``, per channel):
    the high-frequency part of the image as extra input channels. No weights are learnt."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.blur = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="replicate",
                              groups=channels, bias=False)
        nn.init.constant_(self.blur.weight, 1 / 9)
        self.blur.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x - self.blur(x)], dim=1)


class ResNet(nn.Module):
    """Full-resolution stem -> residual stages (each after a 2x2 max-pool) -> global average
    pooling -> dropout -> one logit (REAL is positive; no sigmoid: that lives in the loss/metrics).

    Args:
        stem: widths of the stride-1 convolutions at the input's resolution (two or more keep the
            finest detail in view before any pooling).
        widths: width of each stage; each stage starts with a 2x2 max-pool.
        blocks: residual blocks per stage (one number per stage).
        dropout: dropout rate before the final linear layer.
        high_pass: also feed the network the input minus its 3x3 box blur (see :class:`HighPass`).
        in_channels: channels of the input images.
        image_size: side of the square input; must be divisible by ``2 ** len(widths)``.
    """

    def __init__(
        self,
        stem: Sequence[int],
        widths: Sequence[int],
        blocks: Sequence[int],
        dropout: float,
        high_pass: bool,
        in_channels: int,
        image_size: int,
    ) -> None:
        super().__init__()
        if not stem:
            raise ConfigError("model.net.stem needs at least one width (the full-resolution convolutions)")
        if len(widths) != len(blocks):
            raise ConfigError(f"model.net.widths and model.net.blocks need one entry per stage; "
                              f"got {len(widths)} widths and {len(blocks)} block counts")
        if any(n < 1 for n in blocks):
            raise ConfigError(f"model.net.blocks must all be at least 1, got {list(blocks)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.net.dropout must lie in [0, 1), got {dropout}")
        if image_size % (2 ** len(widths)):
            raise ConfigError(f"image_size {image_size} is not divisible by 2**{len(widths)} "
                              f"(one 2x2 max-pool per stage); use fewer stages or another image size")
        self.input: nn.Module = HighPass(in_channels) if high_pass else nn.Identity()
        channels = in_channels * (2 if high_pass else 1)
        layers: list[nn.Module] = []
        for width in stem:
            layers.append(conv_bn_relu(channels, width))
            channels = width
        self.stem = nn.Sequential(*layers)
        stages: list[nn.Module] = []
        for width, n in zip(widths, blocks, strict=True):
            stage: list[nn.Module] = [nn.MaxPool2d(2)]
            for _ in range(n):
                stage.append(ResidualBlock(channels, width))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a float batch ``(N, C, H, W)`` in [0, 1] to logits of shape ``(N,)`` (REAL is 1)."""
        return self.head(self.stages(self.stem(self.input(x)))).squeeze(1)
