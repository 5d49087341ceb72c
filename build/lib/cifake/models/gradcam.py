"""Grad-CAM, all of it but its figure: the layer a model is explained at, heat maps that leave the model exactly
as they found it, which images to explain, and each image beside its map as a picture (for predict.py's PNG
files, written by :class:`GradcamWriter`, and the server's answers). The report's and the dashboards' figure
of these maps is :func:`cifake.analysis.plots.gradcam_figure`, drawn from arrays with the other figures."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from cifake.analysis.plots import overlay, pick_per_class
from cifake.core.errors import ConfigError
from cifake.data.augment import to_unit_float
from cifake.models.precision import autocast


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (e.g. ``net.features.2.5``), or a :class:`ConfigError` that
    lists the layers one could name instead."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ReLU, nn.Sequential)) and n]
        raise ConfigError(
            f"Grad-CAM layer {name!r} is not in this model. Convolutional layers and blocks it has: "
            f"{', '.join(convs[:40])}{' ...' if len(convs) > 40 else ''}. Set model.gradcam_layer "
            "(or callbacks.gradcam.target_layer) to one of them."
        ) from None


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval mode, every parameter's ``.grad`` and ``requires_grad``
    on exit; pytorch-grad-cam switches the model to eval mode and overwrites gradients."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def gradcam(model: nn.Module, images: torch.Tensor, target_classes: Sequence[int], layer: str) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] of one-logit ``model`` on float ``images`` for the
    given classes (1: evidence for label 1, 0: evidence against it).

    Safe inside Lightning's loops: gradients are switched on even under ``no_grad`` or
    ``inference_mode`` (as in ``trainer.validate``/``test``), mixed-precision autocast is switched
    off, and the model's mode, gradients and hooks are as before when it returns.
    """
    if len(images) != len(target_classes):
        raise ValueError(f"{len(images)} images but {len(target_classes)} target classes")
    if len(images) == 0:
        return np.zeros((0, *images.shape[2:]), dtype=np.float32)
    target_layer = resolve_layer(model, layer)
    targets = [BinaryClassifierOutputTarget(int(c)) for c in target_classes]
    eager = getattr(model, "eager", None)  # a compiled module would bypass the hooks
    with (preserved_state(model), torch.inference_mode(False), torch.enable_grad(),
          autocast("32-true", images.device), eager() if eager else nullcontext()):
        # A clone made outside inference mode is an ordinary tensor that autograd can use.
        x = images.detach().clone().float()
        with GradCAM(model=model, target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=x, targets=targets)
    return np.asarray(maps, dtype=np.float32)


def explanation_sets(labels: np.ndarray, predicted: np.ndarray, per_class: int) -> dict[str, np.ndarray]:
    """Which images to explain: the first ``per_class`` of each class (the same images every time:
    ``fixed``), and the first ``per_class`` of each class that the model gets ``correct`` and
    ``wrong``."""
    right = np.asarray(labels) == np.asarray(predicted)
    return {
        "fixed": pick_per_class(labels, per_class),
        "correct": pick_per_class(labels, per_class, right),
        "wrong": pick_per_class(labels, per_class, ~right),
    }


def explained_sections(model: nn.Module, images: np.ndarray, labels: np.ndarray, p_real: np.ndarray,
                       predicted: np.ndarray, sets: dict[str, np.ndarray], layer: str,
                       device: torch.device | None = None) -> dict[str, tuple[np.ndarray, ...]]:
    """For each named set of positions (see :func:`explanation_sets`): the uint8 images, their
    Grad-CAM maps for the predicted class, p(REAL) and labels, as ``gradcam_figure`` draws them.
    One Grad-CAM pass covers every set."""
    order = np.concatenate(list(sets.values())).astype(np.int64)
    device = device or next(model.parameters()).device
    cams = gradcam(model, to_unit_float(torch.from_numpy(np.asarray(images)[order]).to(device)),
                   np.asarray(predicted)[order], layer)
    sections, start = {}, 0
    for name, idx in sets.items():
        part = slice(start, start + len(idx))
        sections[name] = (np.asarray(images)[idx], cams[part], np.asarray(p_real)[idx], np.asarray(labels)[idx])
        start += len(idx)
    return sections


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


class GradcamWriter:
    """``predict.py gradcam=true``'s PNG files: Grad-CAM overlays of the predicted class, one PNG per image
    while the limit lasts, the image (as the model saw it) beside its heat map, both enlarged ``scale``
    times (:func:`overlay_images`), under ``folder``."""

    def __init__(self, model: nn.Module, device: torch.device, layer: str | None, folder: Path, limit: int | None,
                 scale: int, alpha: float) -> None:
        self.model = model
        self.device = device
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
