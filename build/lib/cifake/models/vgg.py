"""The report's VGG-style network as a plain ``nn.Module``; every size is an argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cifake.core.errors import ConfigError
from cifake.core.nodes import fill, node_values

TARGET = "cifake.models.vgg.VGG"  # model.net._target_
KEYS = ("filters", "convs", "dropouts", "dense", "kernel_size", "dense_dropout", "in_channels", "image_size",
        "batch_norm")  # model.net's keys (conf/model/vgg.yaml)


def _check_lengths(**lists: Sequence) -> None:
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ConfigError(
            f"VGG needs one entry per block in each of {', '.join(lengths)}; got lengths {lengths}"
        )


@dataclass(frozen=True)
class VGGBlocks:
    """The convolution blocks: block ``i`` is ``convs[i]`` same-padded ``kernel_size`` ReLU convolutions of
    ``filters[i]`` channels, a 2x2 max-pool, batch-norm (an identity without ``batch_norm``) and dropout at
    ``dropouts[i]`` (or one rate for every block)."""

    filters: Sequence[int]
    convs: Sequence[int]
    dropouts: Sequence[float] | float
    kernel_size: int
    batch_norm: bool


@dataclass(frozen=True)
class VGGHead:
    """The MLP after the blocks: ReLU layers of the ``dense`` widths, each followed by dropout at
    ``dense_dropout`` (0: none), then one logit."""

    dense: Sequence[int]
    dense_dropout: float


class VGG(nn.Module):
    """Blocks of ``convs`` same-padded ReLU convolutions -> 2x2 max-pool -> batch-norm -> dropout,
    then flatten and a ReLU MLP ending in one logit (no sigmoid: that lives in the loss/metrics).

    The defaults of ``conf/model/vgg.yaml`` give the report's net: 64x2, 128x2, 256x3, 512x3,
    dropouts 0.4/0.4/0.3/0.2, dense 4000 -> 1500 -> 1. ``dropouts`` is one rate per block or one
    rate for all; ``batch_norm=False`` puts an identity where the batch-norm layers were (module
    indices, and so Grad-CAM layer names, stay the same).
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        values = node_values(settings, TARGET, KEYS, "model.net")
        block_settings, head_settings = fill(VGGBlocks, values), fill(VGGHead, values)
        in_channels, image_size = values["in_channels"], values["image_size"]
        filters, convs, dropouts = block_settings.filters, block_settings.convs, block_settings.dropouts
        kernel_size, batch_norm = block_settings.kernel_size, block_settings.batch_norm
        dense, dense_dropout = head_settings.dense, head_settings.dense_dropout
        if isinstance(dropouts, (int, float)):  # one rate for every block
            dropouts = [float(dropouts)] * len(filters)
        _check_lengths(filters=filters, convs=convs, dropouts=dropouts)
        if not all(0.0 <= p < 1.0 for p in dropouts):
            raise ConfigError(f"dropout rates must lie in [0, 1), got {list(dropouts)}")
        if image_size % (2 ** len(filters)):
            raise ConfigError(
                f"image_size {image_size} is not divisible by 2**{len(filters)} "
                f"(one 2x2 max-pool per block); use fewer blocks or another image size"
            )
        if kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")

        blocks: list[nn.Module] = []
        channels = in_channels
        for width, n_convs, p in zip(filters, convs, dropouts, strict=True):
            layers: list[nn.Module] = []
            for _ in range(n_convs):
                layers += [nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2), nn.ReLU()]
                channels = width
            layers += [nn.MaxPool2d(2), nn.BatchNorm2d(width) if batch_norm else nn.Identity(), nn.Dropout(p)]
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)

        side = image_size // 2 ** len(filters)
        head: list[nn.Module] = [nn.Flatten()]
        width_in = channels * side * side
        for width in dense:
            head += [nn.Linear(width_in, width), nn.ReLU()]
            if dense_dropout:
                head.append(nn.Dropout(dense_dropout))
            width_in = width
        head.append(nn.Linear(width_in, 1))
        self.head = nn.Sequential(*head)

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> VGG:
        """The network a ``model.net`` node of conf/model/vgg.yaml describes (its keys, as a checkpoint records
        them too)."""
        return cls(**node_values(node, TARGET, KEYS, "model.net"))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(N, D)`` of a float batch: what the last layer weighs (and what the
        out-of-scope score measures, :mod:`cifake.models.scope`)."""
        return self.head[:-1](self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a float batch ``(N, C, H, W)`` in [0, 1] to logits of shape ``(N,)`` (REAL is 1)."""
        return self.head[-1](self.embed(x)).squeeze(1)
