"""Grad-CAM: it points at the evidence, and it leaves the model exactly as it found it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cifake.analysis.plots import pick_per_class
from cifake.core.errors import ConfigError
from cifake.models.gradcam import explanation_sets, gradcam
from tests.helpers.config import CONF_DIR
from tests.helpers.models import tiny_classifier

LAYER = OmegaConf.load(CONF_DIR / "model" / "vgg.yaml").gradcam_layer  # the shipped defaults
RESNET_LAYER = OmegaConf.load(CONF_DIR / "model" / "resnet.yaml").gradcam_layer
PATCH = 8
CORNERS = (2, 12, 22)  # patch corners on both axes: nine places, none aligned to the 8x8 grid


def patch_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noise images; the REAL ones (label 1) carry one red 8x8 patch at a random place, so the
    patch alone decides the label. Returns images, labels and patch corners (row, col)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.2, 0.8, size=(n, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 2, size=n)
    corners = rng.choice(CORNERS, size=(n, 2))
    for i, (r, c) in enumerate(corners):
        if labels[i]:
            images[i, :, r:r + PATCH, c:c + PATCH] = np.asarray([0.95, 0.05, 0.05], np.float32)[:, None, None]
    return torch.from_numpy(images), torch.from_numpy(labels), corners


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_gradcam_maximum_falls_on_the_planted_evidence(arch: str) -> None:
    model = tiny_classifier(arch=arch)
    layer = model.hparams.gradcam_layer
    images, labels, _ = patch_images(1024, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _epoch in range(6):
        for idx in torch.randperm(len(images)).split(64):
            optimizer.zero_grad()
            model.loss(model(images[idx]), labels[idx].float()).backward()
            optimizer.step()
    model.eval()
    test_images, test_labels, corners = patch_images(64, seed=2)
    with torch.no_grad():
        predicted = (torch.sigmoid(model(test_images)) > 0.5).long()
    assert (predicted == test_labels).float().mean() > 0.95, "the planted signal was not learnt"

    cams = gradcam(model, test_images, predicted.tolist(), layer)
    assert cams.shape == (64, 32, 32) and np.isfinite(cams).all()
    # Only REAL images hold evidence (the patch); a FAKE call rests on its absence, nothing to point at.
    real = np.flatnonzero(test_labels.numpy() == 1)
    peaks = [np.unravel_index(np.argmax(cams[i]), cams[i].shape) for i in real]
    inside = [r <= pr < r + PATCH and c <= pc < c + PATCH
              for (pr, pc), (r, c) in zip(peaks, corners[real], strict=True)]
    assert np.mean(inside) >= 0.8, f"Grad-CAM at {layer} peaked on the patch for only {np.mean(inside):.0%}"


def hooks(model: torch.nn.Module) -> list[int]:
    return [len(d) for m in model.modules()
            for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)]


@pytest.mark.parametrize("training", [True, False])
def test_gradcam_leaves_mode_gradients_and_hooks_as_found(training: bool) -> None:
    model = tiny_classifier()
    images, labels, _ = patch_images(8, seed=3)
    model.train()
    model.loss(model(images), labels.float()).backward()  # gradients as mid-way through accumulation
    model.train(training)
    if training:
        model.net.features[0].eval()  # a mixed state must survive too
    modes = [m.training for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    before = hooks(model)

    cams = gradcam(model, images, [1, 0] * 4, LAYER)

    assert cams.shape == (8, 32, 32)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert hooks(model) == before
    assert all(p.requires_grad for p in model.parameters())


def test_gradcam_works_under_inference_mode_and_no_grad() -> None:
    """As inside ``trainer.test``/``validate`` (inference mode) and fit's validation (no_grad)."""
    model = tiny_classifier().eval()
    with torch.inference_mode():
        images = patch_images(4, seed=4)[0].clone()  # an inference tensor, as a test batch is
        cams = gradcam(model, images, [0, 1, 0, 1], LAYER)
    with torch.no_grad():
        again = gradcam(model, images.clone(), [0, 1, 0, 1], LAYER)
    assert np.isfinite(cams).all() and cams.max() > 0
    np.testing.assert_allclose(cams, again, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_unknown_layer_lists_the_layers_one_could_name() -> None:
    with pytest.raises(ConfigError, match=r"net\.features\.2\.5.*model\.gradcam_layer"):
        gradcam(tiny_classifier(), torch.zeros(1, 3, 32, 32), [1], "net.features.9")


def test_explanation_sets_pick_fixed_correct_and_wrong_per_class() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    predicted = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    sets = explanation_sets(labels, predicted, per_class=2)
    np.testing.assert_array_equal(sets["fixed"], [0, 2, 1, 3])
    np.testing.assert_array_equal(sets["correct"], [0, 4, 3, 5])
    np.testing.assert_array_equal(sets["wrong"], [2, 1])
    assert (labels[sets["correct"]] == predicted[sets["correct"]]).all()
    np.testing.assert_array_equal(pick_per_class(labels, 10), [0, 2, 4, 7, 1, 3, 5, 6])
