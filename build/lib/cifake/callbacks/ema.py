"""Exponential moving average of the weights, updated without waiting for the GPU."""

from __future__ import annotations

from itertools import chain
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel


class SyncFreeEMAModel(AveragedModel):
    """torch's :class:`AveragedModel` with EMA updates that read nothing back from the device, and a
    warm-up of the decay.

    ``AveragedModel.update_parameters`` tests its update count, a tensor on the model's device,
    with ``bool()`` twice per call, and each test makes the host wait for every queued kernel. Here
    the count is also kept as a Python int (read from the tensor once after a checkpoint is
    loaded), and floating-point tensors are averaged with one ``_foreach_lerp_`` per dtype instead
    of a Python loop over every tensor.

    The ``n``-th update uses the decay ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's
    ``num_updates``, timm's warm-up): a fixed 0.999 keeps half of the random initial weights after
    700 steps, and averages a window of 1,000 steps while the learning rate is at its peak, so the
    averaged weights validated at chance for the first epochs. With the warm-up the window is about a
    tenth of the steps so far until it reaches ``1 / (1 - decay)``."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | int | None,
                 use_buffers: bool) -> None:
        super().__init__(model, device=device, use_buffers=use_buffers)  # update_parameters averages
        self.decay = decay
        self._updates: int | None = 0  # None: read n_averaged once (after load_state_dict)

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        return min(self.decay, (1 + updates) / (10 + updates))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._updates = None

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Average ``model``'s weights (and buffers, with ``use_buffers``) into this copy."""
        if self._updates is None:
            self._updates = int(self.n_averaged)
        if self.use_buffers:
            averaged = list(chain(self.module.parameters(), self.module.buffers()))
            current = list(chain(model.parameters(), model.buffers()))
        else:
            averaged, current = list(self.module.parameters()), list(model.parameters())
            for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
                mine.copy_(theirs, non_blocking=True)
        groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for mine, theirs in zip(averaged, current, strict=True):
            if self._updates == 0 or not mine.is_floating_point():  # counters (batch-norm's) are copied
                mine.copy_(theirs, non_blocking=True)
            else:
                pair = groups.setdefault(mine.dtype, ([], []))
                pair[0].append(mine.detach())
                pair[1].append(theirs.detach().to(mine.device, non_blocking=True))
        weight = 1.0 - self.decay_at(self._updates)
        for mine, theirs in groups.values():
            torch._foreach_lerp_(mine, theirs, weight)
        self.n_averaged += 1
        self._updates += 1


class EMA(EMAWeightAveraging):
    """Lightning's :class:`EMAWeightAveraging` (validation, checkpoints and the final weights use
    the average; the same arguments and checkpoint layout) over :class:`SyncFreeEMAModel`."""

    def __init__(self, decay: float, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        self.decay = decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._average_model = SyncFreeEMAModel(pl_module, self.decay, self._device or pl_module.device,
                                                   self._use_buffers)
