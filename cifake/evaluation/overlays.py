"""Grad-CAM overlays of single images: PNG files for ``predict.py gradcam=true``, images for the server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cifake.analysis.explain import gradcam
from cifake.analysis.plots import overlay
from cifake.core.errors import ConfigError
from cifake.data.augment import to_unit_float
from cifake.scoring import Scorer


class GradcamWriter:
    """Grad-CAM overlays of the predicted class: one PNG per image, the image (as the model saw
    it) beside its heat map, both enlarged ``scale`` times, under ``folder``."""

    def __init__(self, scorer: Scorer, layer: str | None, folder: Path, limit: int | None, scale: int,
                 alpha: float) -> None:
        self.model = scorer.model
        self.device = scorer.device
        self.layer = layer or self.model.hparams.get("gradcam_layer")
        if self.layer is None:
            raise ConfigError("gradcam=true, but the checkpoint names no model.gradcam_layer; set "
                              "gradcam_layer=<a layer>, e.g. net.features.1.3")
        self.folder, self.left, self.scale, self.alpha = folder, limit, scale, alpha
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, images: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> list[str]:
        """Overlays for the first images of a batch while the limit lasts; the file written for each
        image ("" where none)."""
        n = len(images) if self.left is None else min(len(images), self.left)
        if n == 0:
            return [""] * len(images)
        pictures = overlay_images(self.model, self.device, self.layer, images[:n], predicted[:n], self.scale,
                                  self.alpha)
        written = []
        for picture, name in zip(pictures, names[:n], strict=True):
            picture.save(self.folder / name)
            written.append(str(self.folder / name))
        if self.left is not None:
            self.left -= n
        return written + [""] * (len(images) - n)


def overlay_images(model: torch.nn.Module, device: torch.device, layer: str, images: np.ndarray, predicted: np.ndarray,
                   scale: int, alpha: float) -> list[Image.Image]:
    """Grad-CAM of the ``predicted`` class for uint8 ``images`` ``(N, 3, S, S)``: per image, the
    image as the model saw it beside its heat map (``alpha`` over it), enlarged ``scale`` times."""
    if len(images) == 0:
        return []
    maps = gradcam(model, to_unit_float(torch.from_numpy(images).to(device)), predicted, layer)
    pictures = []
    for image, cam in zip(images, maps, strict=True):
        both = np.concatenate([np.transpose(image, (1, 2, 0)) / 255.0, overlay(image, cam, alpha)], axis=1)
        picture = Image.fromarray(np.clip(both * 255.0 + 0.5, 0, 255).astype(np.uint8))
        # Nearest neighbour: every model pixel stays a sharp square, nothing is invented between them.
        pictures.append(picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST))
    return pictures
