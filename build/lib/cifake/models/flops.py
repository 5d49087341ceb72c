"""What a network costs to run, counted rather than timed, so that any machine can check a budget:
floating-point operations of one forward pass (``torch.utils.flop_counter``: a multiply-add is 2)."""

from __future__ import annotations

import torch
from torch import nn

TRAIN_MULTIPLIER = 3  # a training step: the forward pass and a backward pass of about twice its cost
PETA = 1e15


def forward_flops(net: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """FLOPs of ``net`` on one ``in_channels x image_size x image_size`` image, in eval mode (the
    module's mode is given back); convolutions and matrix products, as PyTorch's counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else None  # counted where the network lives
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        net.train(was_training)
    return int(counter.get_total_flops())


def train_pflop(forward: int, images_seen: int) -> float:
    """Training compute in PFLOP: ``3 x forward FLOPs x images seen`` (evaluation and test-time views
    excluded: they are counted apart)."""
    return TRAIN_MULTIPLIER * forward * images_seen / PETA
