"""Perturbations keep the batch's shape and type and behave at their extremes; the robustness
table and its files and figure come out right with a stand-in predictor."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from cifake.analysis.metrics import binary_report
from cifake.analysis.plots import robustness_figure
from cifake.analysis.robustness import RobustnessSettings, conditions, robustness_table, write_robustness
from cifake.core.errors import ConfigError
from cifake.data.degradations import DEFAULT_PERTURBATIONS, gaussian_blur, gaussian_noise, hflip, jpeg, perturb, rescale


def noise_batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def smooth_batch(n: int = 2, size: int = 32) -> torch.Tensor:
    """Gentle colour gradients: what JPEG keeps well, unlike pixel noise."""
    ramp = torch.linspace(40, 215, size)
    image = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                         (ramp[None, :] + ramp[:, None]).expand(size, size) / 2])
    return image.round().to(torch.uint8).expand(n, 3, size, size).contiguous()


@pytest.mark.parametrize(("name", "strength"), conditions(DEFAULT_PERTURBATIONS))
def test_every_default_perturbation_keeps_shape_and_dtype_and_its_input(name: str, strength: float | None) -> None:
    images = noise_batch(3, size=20)
    before = images.clone()
    out = perturb(name, images, strength, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(images, before)


def test_jpeg_at_quality_100_is_nearly_the_identity_and_lower_quality_loses_more() -> None:
    images = smooth_batch()
    diff = {q: (jpeg(images, q).int() - images.int()).abs().float().mean().item() for q in (100, 75, 20)}
    assert diff[100] < 1.0
    assert diff[100] < diff[75] < diff[20]
    assert (jpeg(noise_batch(), 90).int() - noise_batch().int()).abs().float().mean() > 5  # it does something
    with pytest.raises(ConfigError, match="quality"):
        jpeg(images, 0)
    with pytest.raises(ConfigError, match="quality"):
        jpeg(images, 75.5)


def test_hflip_mirrors_and_twice_is_the_identity() -> None:
    images = noise_batch()
    assert torch.equal(hflip(images)[..., 0], images[..., -1])
    assert torch.equal(hflip(hflip(images)), images)


def test_noise_of_std_zero_is_the_identity_and_seeded_noise_repeats() -> None:
    images = noise_batch()
    assert torch.equal(gaussian_noise(images, 0), images)
    a = gaussian_noise(images, 8, torch.Generator().manual_seed(3))
    b = gaussian_noise(images, 8, torch.Generator().manual_seed(3))
    c = gaussian_noise(images, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    grey = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    spread = (gaussian_noise(grey, 8, torch.Generator().manual_seed(0)).float() - 128).std().item()
    assert spread == pytest.approx(8, abs=0.3)  # std in grey levels
    white = gaussian_noise(torch.full_like(grey, 255), 16, torch.Generator().manual_seed(0))
    assert white.float().mean() > 240  # clipped at 255, not wrapped round to 0


def test_scale_factor_one_is_the_identity_and_halving_removes_the_finest_detail() -> None:
    images = noise_batch()
    assert torch.equal(rescale(images, 1.0), images)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 255).to(torch.uint8)
    out = rescale(checker.expand(1, 3, 32, 32).contiguous(), 0.5)
    # Antialiased: the 1-pixel checkerboard averages to grey (away from the borders, where the filter is cut).
    assert (out[..., 3:-3, 3:-3].int() - 128).abs().max() <= 1
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(rescale(flat, 0.5, mode="bicubic"), flat)
    with pytest.raises(ConfigError, match="factor"):
        rescale(images, 1.5)


def test_blur_of_sigma_zero_is_the_identity_and_more_sigma_smooths_more() -> None:
    images = noise_batch()
    assert torch.equal(gaussian_blur(images, 0), images)
    spread = [gaussian_blur(images, s).float().std().item() for s in (0.5, 1.0, 2.0)]
    assert images.float().std() > spread[0] > spread[1] > spread[2]
    flat = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, 5.0), flat)  # radius capped below the image size


def test_bad_perturbation_settings_are_config_errors() -> None:
    images = noise_batch(1)
    with pytest.raises(ConfigError, match="unknown perturbation 'sharpen'"):
        perturb("sharpen", images, 1.0)
    with pytest.raises(ConfigError, match="no strength"):
        perturb("hflip", images, 1.0)
    with pytest.raises(ConfigError, match="quallity"):
        perturb("jpeg", images, 90, options={"quallity": 3})
    with pytest.raises(ValueError, match="uint8"):
        hflip(images.float())


def brightness_data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """REAL (1) images brighter on average than FAKE (0), overlapping a little."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    level = rng.uniform(60, 150, n) + 50 * labels
    images = np.clip(level[:, None, None, None] + rng.normal(0, 20, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
    return images, labels


def battery(perturbations: dict | None = None, batch_size: int = 512) -> RobustnessSettings:
    """The robustness settings of these tests: ``perturbations`` (every default one unless given), seed 0."""
    return RobustnessSettings(perturbations=DEFAULT_PERTURBATIONS if perturbations is None else perturbations,
                              options={}, seed=0, batch_size=batch_size)


def mean_brightness(batch: np.ndarray) -> np.ndarray:
    """A scorer's ``score``: uint8 batch -> p(REAL)."""
    return (batch.astype(np.float32).mean(axis=(1, 2, 3)) / 255.0).astype(np.float32)


def test_robustness_table_rows_and_files(tmp_path: Path) -> None:
    images, labels = brightness_data()
    rows = robustness_table(mean_brightness, images, labels, battery(batch_size=7), threshold=0.45, progress=None)
    assert len(rows) == 1 + sum(len(s) for s in DEFAULT_PERTURBATIONS.values())
    assert rows[0]["perturbation"] == "none" and rows[0]["strength"] is None
    for r in rows:
        assert set(r) == {"perturbation", "strength", "accuracy", "auroc", "n"}
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["auroc"] <= 1 and r["n"] == len(images)
    direct = binary_report(torch.from_numpy(mean_brightness(images)), torch.from_numpy(labels), 0.45)
    assert rows[0]["accuracy"] == direct["accuracy"] and rows[0]["auroc"] == pytest.approx(direct["auroc"])
    flipped = next(r for r in rows if r["perturbation"] == "hflip")
    assert flipped["accuracy"] == rows[0]["accuracy"]  # mean brightness ignores a mirror
    # Seeded: the same call gives the same table.
    again = robustness_table(mean_brightness, images, labels, battery(batch_size=7), threshold=0.45, progress=None)
    assert again == rows

    written = write_robustness(rows, tmp_path / "out")
    assert [p.name for p in written] == ["robustness.csv", "robustness.md"]
    with written[0].open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and table[1]["perturbation"] == "jpeg" and table[1]["strength"] == "90"
    markdown = written[1].read_text()
    assert markdown.count("\n") == len(rows) + 2 and "+0.0000" in markdown

    fig = robustness_figure(rows)
    fig.savefig(io.BytesIO(), format="png", dpi=50)
    assert len(fig.axes) == 2


def test_robustness_table_checks_its_settings_before_predicting() -> None:
    images, labels = brightness_data(6)
    calls = []

    def predictor(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return mean_brightness(batch)

    with pytest.raises(ConfigError, match="quality"):
        robustness_table(predictor, images, labels, battery({"hflip": [None], "jpeg": [101]}), 0.5, progress=None)
    with pytest.raises(ConfigError, match="list of strengths"):
        robustness_table(predictor, images, labels, battery({"blur": 1.0}), 0.5, progress=None)
    assert calls == []
    rows = robustness_table(predictor, images, labels, battery({"noise": [4]}, batch_size=4), 0.5, progress=None)
    assert [r["perturbation"] for r in rows] == ["none", "noise"] and calls == [4, 2, 4, 2]
    with pytest.raises(ValueError, match="returned 1 probabilities"):
        robustness_table(lambda b: np.zeros(1, dtype=np.float32), images, labels, battery({}), 0.5, progress=None)
