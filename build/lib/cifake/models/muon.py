"""Muon for the convolution filters and AdamW for every other parameter, as one optimizer (airbench94_muon).

``torch.optim.Muon`` takes 2-D parameters only. :class:`ConvMuon` views each convolution's filters
``(out_channels, in_channels, kh, kw)`` as the matrix ``(out_channels, in_channels * kh * kw)``, gives it Muon's
orthogonalised update (Nesterov momentum, then a Newton-Schulz iteration that sets every singular value of the
update near 1), and gives every other parameter (biases, batch-norm, the linear head) AdamW's.

It is one :class:`torch.optim.Optimizer` with two parameter groups, so Lightning, the LR schedulers
(``model.scheduler``) and checkpoints (``state_dict``) take it as they take AdamW. Both groups hold the same
``lr``, AdamW's, which a scheduler moves; the filters step by ``lr * lr_scale``, ``lr_scale`` being
``muon_lr / lr`` as given: a schedule such as OneCycleLR (``max_lr``: AdamW's peak) moves both rates together and
keeps their ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cifake.core.errors import ConfigError

# Keller Jordan's quintic Newton-Schulz iteration, as torch.optim.Muon runs it: a method's constants, not settings.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7  # keeps the first normalisation finite for an all-zero update
ADAM_EPS = 1e-8  # AdamW's denominator term (torch.optim.AdamW's)


def orthogonalise(matrix: torch.Tensor) -> torch.Tensor:
    """The 2-D ``matrix`` with its singular values moved near 1 and its singular vectors kept (``U S' V^T`` with
    ``S'`` roughly in [0.7, 1.2], Muon's quintic Newton-Schulz iteration), in ``matrix``'s dtype. In bfloat16 on
    CUDA, as Muon runs it there; in float32 elsewhere, where bfloat16 products are slow without native support."""
    x = matrix.bfloat16() if matrix.is_cuda else matrix.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp_min(NS_EPS)  # Frobenius norm >= spectral norm: every singular value <= 1
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


def is_filter(param: torch.Tensor) -> bool:
    """Whether ``param`` is a convolution's filters (4-D), the parameters Muon steps."""
    return param.ndim == 4


class ConvMuon(torch.optim.Optimizer):
    """Muon on every 4-D parameter (convolution filters), AdamW on the rest, with their own learning rates.

    Args:
        params: the parameters (``module.parameters()``; not parameter groups: this class makes its two).
        lr: AdamW's learning rate, and the rate a scheduler moves (see the module's docstring).
        betas: AdamW's ``(beta1, beta2)``; OneCycleLR cycles ``beta1`` as it does AdamW's.
        weight_decay: decoupled weight decay of every parameter, ``p -= lr * weight_decay * p`` per step with
            AdamW's ``lr`` for the filters too, so it shrinks every weight alike.
        muon_lr: the filters' learning rate (Muon's steps are of spectral norm about 1: 0.02 is Muon's usual),
            times ``sqrt(max(1, rows / columns))`` for tall matrices, as torch.optim.Muon's default scales it.
        momentum: Muon's Nesterov momentum.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, betas: Sequence[float], weight_decay: float,
                 muon_lr: float, momentum: float) -> None:
        params = list(params)
        if any(isinstance(p, dict) for p in params):
            raise TypeError("ConvMuon makes its own parameter groups (filters, the rest): pass module.parameters()")
        if lr <= 0 or muon_lr <= 0:
            raise ConfigError(f"model.optimizer: lr and muon_lr must be positive, got lr={lr}, muon_lr={muon_lr}")
        if not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ConfigError(f"model.optimizer: momentum must lie in [0, 1) and weight_decay be >= 0, got "
                              f"momentum={momentum}, weight_decay={weight_decay}")
        beta1, beta2 = (float(b) for b in betas)
        defaults = {"lr": lr, "betas": (beta1, beta2), "weight_decay": weight_decay, "momentum": momentum,
                    "muon": False, "lr_scale": 1.0}
        filters, rest = [p for p in params if is_filter(p)], [p for p in params if not is_filter(p)]
        groups = [group for group in ({"params": filters, "muon": True, "lr_scale": muon_lr / lr},
                                      {"params": rest}) if group["params"]]
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every parameter with a gradient: Muon's for the filters, AdamW's for the rest."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            (self._muon if group["muon"] else self._adamw)(group, params)
        return loss

    def _muon(self, group: dict[str, Any], params: list[nn.Parameter]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buffer = state["momentum_buffer"]
            buffer.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buffer, momentum)  # Nesterov, as torch.optim.Muon
            matrix = update.reshape(len(update), -1)  # (out_channels, in_channels * kh * kw)
            scale = math.sqrt(max(1.0, matrix.size(0) / matrix.size(1)))
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(orthogonalise(matrix).reshape(p.shape), alpha=-lr * group["lr_scale"] * scale)

    def _adamw(self, group: dict[str, Any], params: list[nn.Parameter]) -> None:
        lr, (beta1, beta2) = group["lr"] * group["lr_scale"], group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                # The count is a host int: bias corrections read nothing back from the device.
                state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
            state["step"] += 1
            step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * group["weight_decay"])
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denominator = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(ADAM_EPS)
            p.addcdiv_(exp_avg, denominator, value=-lr / (1 - beta1 ** step))
