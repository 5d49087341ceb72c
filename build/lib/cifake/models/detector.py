"""A trained network outside Lightning: what scoring a safetensors export needs (the network, its
test-time augmentation, p(REAL)) and nothing of training (no optimiser, loss or metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from cifake.analysis.tta import check_tta, mean_over_views

_Scored = TypeVar("_Scored", bound="ScoresWithTTA")


class ScoresWithTTA:
    """p(REAL) over test-time views, as :class:`Detector` and :class:`~cifake.models.classifier.Classifier`
    both score: :meth:`set_tta` chooses the views (a setting of evaluation, never stored in a checkpoint),
    :meth:`p_real` averages the sigmoid of the module's logits over them."""

    tta: tuple[str, int, str] = ("none", 1, "reflect")  # mode, shift in pixels, padding

    def set_tta(self: _Scored, mode: str = "none", pixels: int = 1, padding: str = "reflect") -> _Scored:
        """Average p(REAL) over views of each image in :meth:`p_real` (``none``, ``flip`` or ``flip_shift``:
        see :mod:`cifake.analysis.tta`)."""
        check_tta(mode, pixels)
        self.tta = (mode, pixels, padding)
        return self

    def p_real(self, images: torch.Tensor) -> torch.Tensor:
        """p(REAL) in float32 for float images in [0, 1], averaged over the TTA views if set."""
        return mean_over_views(lambda x: torch.sigmoid(self(x).float()), images, *self.tta)


class Detector(ScoresWithTTA, nn.Module):
    """``net`` (float images ``(N, 3, S, S)`` in [0, 1] -> one logit each, positive for ``classes[1]``)
    scored as :class:`~cifake.models.classifier.Classifier` scores it: :meth:`p_real` averages the
    sigmoid over the test-time views set with :meth:`set_tta`. ``hparams`` holds what the scorers and
    Grad-CAM read from a Classifier (``classes``, ``image_size``, ``gradcam_layer``); layer names are
    the Classifier's too (``net.stages.0``), so one ``gradcam_layer`` serves both."""

    def __init__(self, net: nn.Module, classes: Sequence[str], image_size: int, gradcam_layer: str | None) -> None:
        super().__init__()
        self.net = net
        self.hparams: dict[str, Any] = {"classes": tuple(classes), "image_size": int(image_size),
                                        "gradcam_layer": gradcam_layer}
        self.channels_last = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` for float images ``(N, 3, H, W)`` in [0, 1]."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def set_channels_last(self, enabled: bool) -> Detector:
        """Run the convolutions in NHWC (``True``) or NCHW layout."""
        self.channels_last = enabled
        self.net.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self
