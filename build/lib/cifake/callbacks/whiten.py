"""The network's first convolution started from the principal components of the patches it sees."""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from cifake.core.errors import ConfigError
from cifake.data.augment import to_unit_float

log = logging.getLogger(__name__)


class _Captured(Exception):
    """Raised by the hook once the first convolution's input is in hand: the rest of the network need not run."""


def first_conv(net: nn.Module) -> nn.Conv2d:
    """The first :class:`~torch.nn.Conv2d` of ``net`` in the order its modules were declared."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ConfigError("callbacks.whiten needs a network with a convolution (model=resnet or model=vgg)")


def conv_input(net: nn.Module, conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """What ``conv`` receives when ``net`` runs on ``images`` (a fixed input view, e.g. ``model.net.inputs``,
    may sit before it)."""
    seen: list[torch.Tensor] = []

    def capture(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach())
        raise _Captured

    handle = conv.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            net(images)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def whitening_filters(x: torch.Tensor, kernel_size: tuple[int, int], eps: float) -> torch.Tensor:
    """Filters ``(C * kh * kw, C, kh, kw)`` that decorrelate the ``kh x kw`` patches of the batch ``x``: the
    eigenvectors of the patches' covariance, largest eigenvalue first, each divided by the square root of its
    eigenvalue plus ``eps`` (so each filter's output has variance ``lambda / (lambda + eps)``, near 1)."""
    channels, dims = x.shape[1], x.shape[1] * kernel_size[0] * kernel_size[1]
    total, outer, count = torch.zeros(dims, dtype=torch.float64, device=x.device), 0.0, 0
    for chunk in x.split(1024):  # float64 patches of 10,000 images would take 2 GB at once
        patches = F.unfold(chunk.double(), kernel_size).transpose(1, 2).reshape(-1, dims)
        total, outer, count = total + patches.sum(dim=0), outer + patches.T @ patches, count + len(patches)
    mean = total / count
    covariance = (outer - count * torch.outer(mean, mean)) / (count - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0.0), eigenvectors.flip(1)
    filters = (eigenvectors / (eigenvalues + eps).sqrt()).T
    return filters.reshape(-1, channels, *kernel_size).float()


class PatchWhitening(L.Callback):
    """Before the first step of a fresh fit, set the network's first convolution's filters to the whitening
    filters of its input's patches, measured on ``images`` training images drawn at random without augmentation
    (``seed`` draws them; ``None``, for a run with ``seed=null``, leaves the draw to torch's generator).

    A random filter's output is dominated by the image's coarse structure, which holds nearly all the pixel
    variance; with batch-norm after it, each whitened channel instead carries one frequency band at unit scale,
    the finest (where the evidence of generation is) as loud as the coarsest. The idea is airbench's whitening
    layer (Jordan, 2024). With ``freeze`` false the filters go on learning; with ``freeze`` true the layer's
    weight stays as set (airbench's fixed whitening layer) and only its bias, where it has one (``model=vgg``),
    and the batch-norm after it train. Channels beyond ``C * kh * kw`` keep their initialisation (and, frozen,
    stay at it). A resumed fit (``ckpt_path``) keeps the checkpoint's weights, frozen again if ``freeze``."""

    def __init__(self, images: int, eps: float, seed: int | None, freeze: bool) -> None:
        if images < 2:
            raise ConfigError(f"callbacks.whiten.images must be at least 2, got {images}")
        if eps <= 0:
            raise ConfigError(f"callbacks.whiten.eps must be positive, got {eps}")
        self.images, self.eps, self.seed, self.freeze = images, eps, seed, freeze

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Here, before the strategy wraps the model (DDP records which parameters take gradients) and on a
        # resumed fit too: requires_grad is not saved in a checkpoint.
        if stage == "fit" and self.freeze:
            first_conv(pl_module.net).weight.requires_grad_(False)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return
        dataset = getattr(trainer.datamodule, "train_set", None)
        if dataset is None or not hasattr(dataset, "__getitems__"):
            raise ConfigError("callbacks.whiten measures the training images of cifake's data module (data=cifake "
                              "or data=demo); set callbacks.whiten=null with another")
        conv = first_conv(pl_module.net)
        needed = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]  # one filter per patch dimension
        if conv.out_channels < needed:  # before any image is read
            raise ConfigError(f"callbacks.whiten sets {needed} filters ({conv.in_channels} channels x "
                              f"{conv.kernel_size[0]}x{conv.kernel_size[1]}), but the first convolution has "
                              f"{conv.out_channels}; widen it (model.net.stem) or set callbacks.whiten=null")
        count = min(self.images, len(dataset))
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        positions = torch.randperm(len(dataset), generator=generator)[:count]
        images = dataset.__getitems__(positions.tolist())[0]
        filters = whitening_filters(conv_input(pl_module.net, conv, to_unit_float(images.to(conv.weight.device))),
                                    conv.kernel_size, self.eps)
        with torch.no_grad():
            conv.weight[: len(filters)] = filters.to(conv.weight)
        log.info("whitened the first convolution's %d of %d filters from %d training images' patches%s",
                 len(filters), conv.out_channels, count, "; its weight stays fixed" if self.freeze else "")
