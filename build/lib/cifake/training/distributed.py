"""Batch-norm statistics over the global batch under DDP, on every backend.

``trainer.sync_batchnorm=true`` (``trainer=ddp``) makes Lightning swap every batch-norm layer for
``torch.nn.SyncBatchNorm``, which runs on GPUs only: DDP refuses it for a CPU module ("SyncBatchNorm
layers only work with GPU modules"). Off CUDA, :class:`GlobalBatchNormSync` swaps them for
:class:`GlobalBatchNorm` instead, which computes the same statistics with differentiable
all-reduces that every ``torch.distributed`` backend (gloo included) runs. Either way a run on ``k``
processes of batch ``b`` normalises like one process of batch ``k * b``.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` that autograd sees through: each rank's tensor feeds every rank's loss,
    so its gradient is the sum of the gradients that every rank sends back."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


class GlobalBatchNorm(_BatchNorm):
    """Batch-norm whose training statistics are the mean and (biased) variance of the whole
    distributed batch (in float32 at least); gradients flow back through both all-reduces, as they do
    through ``torch.nn.SyncBatchNorm``. Without a process group of two or more it is plain
    batch-norm, and so is it in evaluation (running statistics)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions, got {input.dim()}")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # bf16/fp16 under autocast
        # Two passes, as one process computes them: the global mean, then the global sum of
        # squared deviations from it (the sum of squares minus the squared mean loses digits).
        # Ranks may hold batches of different sizes, so the counts are summed too; sums travel
        # in float64, so the count is exact however large the batch.
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([x.sum(dims).double(), count]))
        n = float(totals[-1].detach())
        mean = (totals[:-1] / n).to(x.dtype)
        centred = x - mean.view(shape)
        var = (_SumOverRanks.apply(centred.square().sum(dims).double()) / n).to(x.dtype)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / max(n - 1, 1))  # what plain batch-norm keeps
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return out.to(input.dtype)


class _PlainBatchNorm(_BatchNorm):
    """Plain batch-norm of any dimension: what a :class:`GlobalBatchNorm` becomes after fitting (as
    Lightning reverts ``SyncBatchNorm``); its state dict is the same as the original layer's."""

    def _check_input_dim(self, input: Tensor) -> None:
        return


def _swap(module: nn.Module, to_global: bool) -> nn.Module:
    """``module`` with each batch-norm layer replaced by a :class:`GlobalBatchNorm` (``to_global``)
    or a global one by a plain one, sharing the parameters and running statistics."""
    swapped = module
    if (isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm)
            and isinstance(module, GlobalBatchNorm) != to_global):
        kind = GlobalBatchNorm if to_global else _PlainBatchNorm
        swapped = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            swapped.weight, swapped.bias = module.weight, module.bias
        swapped.running_mean, swapped.running_var = module.running_mean, module.running_var
        swapped.num_batches_tracked = module.num_batches_tracked
        swapped.train(module.training)
    for name, child in module.named_children():
        swapped.add_module(name, _swap(child, to_global))
    return swapped


class GlobalBatchNormSync(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm`` for devices that ``torch.nn.SyncBatchNorm`` does not run on
    (the CPU): every batch-norm layer becomes a :class:`GlobalBatchNorm` while fitting. A subclass
    of Lightning's ``TorchSyncBatchNorm`` because, with ``sync_batchnorm=true``, Lightning takes no
    other layer-sync plugin (:func:`cifake.training.trainer.build_trainer` passes this one off CUDA)."""

    def apply(self, model: nn.Module) -> nn.Module:
        log.info("trainer.sync_batchnorm: batch-norm statistics are all-reduced over the global batch by "
                 "cifake.training.distributed.GlobalBatchNorm (torch's SyncBatchNorm runs on GPUs only)")
        return _swap(model, to_global=True)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap(model, to_global=False)
