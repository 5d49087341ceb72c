"""Test-time augmentation: p(REAL) averaged over evidence-preserving views of each image
(left-right mirror, whole-pixel shifts), never over blurred or resized ones."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cifake.core.errors import ConfigError
from cifake.data.augment import shift

TTA_MODES = ("none", "flip", "flip_shift")


def check_tta(mode: str, pixels: int) -> None:
    """Refuse an unknown ``tta`` mode or a negative shift before anything is scored."""
    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r}; choose one of {list(TTA_MODES)}")
    if mode == "flip_shift" and pixels < 1:
        raise ConfigError(f"tta=flip_shift needs tta_shift >= 1 pixel, got {pixels}")


def tta_views(images: torch.Tensor, mode: str, pixels: int = 1, padding: str = "reflect") -> list[torch.Tensor]:
    """The views of a float batch that ``mode`` averages over: ``none`` the batch itself; ``flip``
    also its mirror; ``flip_shift`` both of those and each shifted by ``pixels`` up, down, left
    and right (10 views), the uncovered border filled as ``padding`` says."""
    check_tta(mode, pixels)
    views = [images]
    if mode in ("flip", "flip_shift"):
        views.append(images.flip(-1))
    if mode == "flip_shift":
        offsets = ((pixels, 0), (-pixels, 0), (0, pixels), (0, -pixels))
        views += [shift(view, dy, dx, padding) for view in views[:2] for dy, dx in offsets]
    return views


def view_count(mode: str, pixels: int = 1) -> int:
    """How many forward passes :func:`tta_views` makes per image for ``mode`` (1, 2 or 10)."""
    return len(tta_views(torch.zeros(1, 1, 4, 4), mode, pixels))


def mean_over_views(p_real: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str,
                    pixels: int = 1, padding: str = "reflect") -> torch.Tensor:
    """The mean of ``p_real`` (float batch -> probabilities) over :func:`tta_views` of ``images``
    (probabilities are averaged, not logits, so each view counts as one vote of confidence)."""
    views = tta_views(images, mode, pixels, padding)
    if len(views) == 1:
        return p_real(images)
    n = len(images)
    # One forward pass over all views: fewer, larger batches run faster than many small ones.
    return p_real(torch.cat(views)).reshape(len(views), n).mean(0)


def uint8_mean_over_views(p_real: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str,
                          pixels: int = 1, padding: str = "reflect") -> torch.Tensor:
    """:func:`mean_over_views` for a model fed uint8 batches (an ONNX export, a forest): the views
    are exact pixel copies, so they are formed in float and handed back as the same uint8 values."""
    return mean_over_views(lambda x: p_real(x.round_().to(torch.uint8)), images.float(), mode, pixels, padding)
