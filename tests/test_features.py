from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.core.errors import ConfigError
from cifake.data.cache import DecodedSplit
from cifake.models.forest import features as feat
from cifake.models.forest.features import FEATURE_SETS, cached_features, extract_features, feature_names, grayscale


def gray_images(*planes: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 images whose three channels all equal each plane (so luma == plane)."""
    return np.stack([np.repeat(np.asarray(p, np.uint8)[None], 3, axis=0) for p in planes])


def named(images: np.ndarray, feature_set: str = "rich", **params) -> list[dict[str, float]]:
    values = extract_features(images, feature_set, **params)
    return [dict(zip(feature_names(feature_set, **params), row.tolist(), strict=True)) for row in values]


def random_images(n: int = 7, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def test_all_zero_constant_and_two_valued_images() -> None:
    two = np.full((4, 4), 10)
    two[0] = 50  # 12 pixels of 10, 4 of 50
    zero, const, two_valued = named(gray_images(np.zeros((4, 4)), np.full((4, 4), 100), two))

    assert zero["gray_max_min_ratio"] == 0.0
    assert all(np.isfinite(v) for v in zero.values())
    assert all(zero[k] == 0 for k in FEATURE_SETS["report"])

    assert const["gray_mean"] == const["gray_median"] == const["gray_min"] == const["gray_max"] == 100
    assert const["gray_std"] == const["gray_range"] == const["gray_iqr"] == 0
    assert const["gray_max_min_ratio"] == 1.0
    assert const["r_median"] == const["b_max"] == 100 and const["g_std"] == 0

    # sorted: 10 at positions 0..11, 50 at 12..15; numpy's linear quantiles at 3.75, 7.5, 11.25
    assert two_valued["gray_mean"] == 20 and two_valued["gray_median"] == 10
    assert two_valued["gray_iqr"] == pytest.approx(10)  # q75 = 10 + 0.25 * 40, q25 = 10
    assert two_valued["gray_std"] == pytest.approx(np.sqrt(300))
    assert (two_valued["gray_min"], two_valued["gray_max"]) == (10, 50)
    assert two_valued["gray_max_min_ratio"] == 5 and two_valued["gray_range"] == 40
    assert two_valued["gray_mean_abs_diff"] == pytest.approx(40 * 4 / 24)  # 4 of 24 vertical/horizontal pairs differ


def test_grayscale_is_pillow_luma() -> None:
    images = random_images(3)
    for image, gray in zip(images, grayscale(images), strict=True):
        expected = np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L"))
        assert np.array_equal(gray, expected)


def test_statistics_match_numpy_on_random_images() -> None:
    images = random_images(5, size=9)
    got = extract_features(images, "rich")
    gray = grayscale(images).reshape(5, -1).astype(float)
    q25, med, q75 = np.percentile(gray, [25, 50, 75], axis=1)
    expected = np.stack([gray.mean(1), med, gray.std(1), gray.min(1), gray.max(1),
                         gray.max(1) / np.maximum(gray.min(1), 1), np.ptp(gray, 1), q75 - q25], axis=1)
    np.testing.assert_allclose(got[:, :8], expected, rtol=1e-5)
    flat = images.reshape(5, 3, -1).astype(float)
    channels = np.stack([f(flat, axis=2) for f in (np.mean, np.std, np.min, np.max, np.median)], axis=2)
    np.testing.assert_allclose(got[:, 8:23], channels.reshape(5, 15), rtol=1e-5)


@pytest.mark.parametrize(("feature_set", "params"), [("report", {}), ("rich", {}), ("rich", {"bands": 7})])
def test_column_count_and_chunking(feature_set: str, params: dict) -> None:
    images = random_images(11)
    whole = extract_features(images, feature_set, chunk_size=1000, **params)
    assert whole.dtype == np.float32 and whole.shape == (11, len(feature_names(feature_set, **params)))
    # FFT and BLAS may block rows differently by chunk size: equal up to float32 round-off
    np.testing.assert_allclose(extract_features(images, feature_set, chunk_size=3, **params), whole, rtol=1e-6)
    assert np.isfinite(whole).all()


def test_feature_sets_list_their_columns() -> None:
    assert len(FEATURE_SETS["report"]) == 8 and FEATURE_SETS["rich"][:8] == FEATURE_SETS["report"]
    assert list(FEATURE_SETS["rich"]) == feature_names("rich")
    assert feature_names("report", bands=9) == feature_names("report")  # other sets' parameters are ignored


def test_frequency_bands_of_flat_stripes_and_checkerboard() -> None:
    yy, xx = np.mgrid[:32, :32]
    checker = ((yy + xx) % 2) * 255
    stripes = (xx % 2) * 255  # Nyquist along x only
    slow = 128 + 100 * np.cos(2 * np.pi * xx / 32)  # one period across the image
    flat, check, stri, low = named(gray_images(np.full((32, 32), 77), checker, stripes, slow))
    assert [flat[f"fft_band{i}"] for i in range(4)] == [1, 0, 0, 0] and flat["fft_high_share"] == 0
    assert check["fft_band3"] == pytest.approx(1) and check["fft_high_share"] == pytest.approx(1)
    assert stri["fft_band3"] == pytest.approx(1) and stri["fft_high_share"] == pytest.approx(1)
    assert low["fft_band0"] == pytest.approx(1, abs=1e-3) and low["fft_high_share"] == pytest.approx(0, abs=1e-3)


def test_band_shares_match_a_full_fft_reference() -> None:
    images = random_images(4, size=10)
    bands, cutoff = 3, 0.4
    got = extract_features(images, "rich", bands=bands, high_cutoff=cutoff)
    names = feature_names("rich", bands=bands, high_cutoff=cutoff)
    start = names.index("fft_band0")
    gray = grayscale(images).astype(float)
    power = np.abs(np.fft.fft2(gray - gray.mean(axis=(1, 2), keepdims=True))) ** 2
    fy, fx = np.meshgrid(np.abs(np.fft.fftfreq(10)) / 0.5, np.abs(np.fft.fftfreq(10)) / 0.5, indexing="ij")
    band = np.minimum((np.hypot(fy, fx) * bands).astype(int), bands - 1)
    band[0, 0] = -1  # DC left out
    total = power.sum(axis=(1, 2)) - power[:, 0, 0]
    expected = [power[:, band == b].sum(1) / total for b in range(bands)]
    expected.append(power[:, np.maximum(fy, fx) > cutoff].sum(1) / total)
    np.testing.assert_allclose(got[:, start:start + bands + 1], np.stack(expected, axis=1), rtol=1e-4)
    np.testing.assert_allclose(got[:, start:start + bands].sum(1), 1, rtol=1e-5)


def test_unknown_sets_and_parameters_are_config_errors() -> None:
    images = random_images(2)
    with pytest.raises(ConfigError, match="report.*rich"):
        extract_features(images, "fancy")
    with pytest.raises(ConfigError, match="bandz"):
        extract_features(images, "rich", bandz=3)
    with pytest.raises(ConfigError, match="bands"):
        feature_names("rich", bands=0)
    with pytest.raises(ConfigError, match="high_cutoff"):
        feature_names("rich", high_cutoff=1.5)


def test_cache_is_reused_and_recomputed_when_a_parameter_changes(tmp_path: Path, monkeypatch) -> None:
    images = random_images(9)
    split = DecodedSplit(images=images, labels=np.zeros(9, dtype=np.int64), files=tuple(map(str, range(9))),
                         classes=("FAKE", "REAL"), root=tmp_path, cache_dir=tmp_path)
    calls = []
    original = feat.extract_features
    monkeypatch.setattr(feat, "extract_features", lambda *a, **k: (calls.append(k), original(*a, **k))[1])

    first = cached_features(split, "rich", chunk_size=4)
    second = cached_features(split, "rich", chunk_size=4)
    assert len(calls) == 1 and np.array_equal(first, second)
    np.testing.assert_allclose(first, extract_features(images, "rich"), rtol=1e-6)

    more = cached_features(split, "rich", bands=6)
    assert len(calls) == 2 and more.shape == (9, len(feature_names("rich", bands=6)))
    cached_features(split, "report", bands=6)  # report ignores bands: one computation, then reused
    cached_features(split, "report")
    assert len(calls) == 3
    assert len(list(tmp_path.glob("features-*.npy"))) == 3 and not list(tmp_path.glob("*.partial"))
