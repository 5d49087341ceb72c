"""``predict.py gradcam=true``'s PNG files: each image beside its Grad-CAM map (drawn by
:func:`cifake.models.gradcam.overlay_images`), one file per image while the limit lasts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cifake.core.errors import ConfigError
from cifake.models.gradcam import overlay_images
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

