"""Grad-CAM overlays of single images as PNG files (``predict.py gradcam=true``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cifake.data.augment import to_unit_float
from cifake.errors import ConfigError
from cifake.explain import gradcam
from cifake.plots import overlay
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
        maps = gradcam(self.model, to_unit_float(torch.from_numpy(images[:n]).to(self.device)), predicted[:n],
                       self.layer)
        written = []
        for image, cam, name in zip(images[:n], maps, names[:n], strict=True):
            both = np.concatenate([np.transpose(image, (1, 2, 0)) / 255.0, overlay(image, cam, self.alpha)], axis=1)
            png = Image.fromarray(np.clip(both * 255.0 + 0.5, 0, 255).astype(np.uint8))
            png = png.resize((png.width * self.scale, png.height * self.scale), Image.Resampling.NEAREST)
            png.save(self.folder / name)
            written.append(str(self.folder / name))
        if self.left is not None:
            self.left -= n
        return written + [""] * (len(images) - n)


