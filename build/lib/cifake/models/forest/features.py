"""Hand-made image statistics for the random-forest baseline, computed in chunks over the decoded
uint8 arrays (no per-image Python loop) and cached next to the decoded split.

Feature sets (columns in this order):

``"report"``, the reference report's eight grayscale statistics:
    ``gray_mean, gray_median, gray_std, gray_min, gray_max, gray_max_min_ratio, gray_range, gray_iqr``
``"rich"``, the report's eight, then
    ``{r,g,b}_{mean,std,min,max,median}`` (per channel, R first),
    ``fft_band0 .. fft_band{bands-1}`` (share of the spectrum's energy per radial band, low to high),
    ``fft_high_share`` (share of the energy beyond ``high_cutoff`` along either axis),
    ``gray_mean_abs_diff`` (mean absolute difference of horizontally and vertically adjacent pixels).

Grayscale is ITU-R 601 luma rounded to an integer in 0..255 exactly as Pillow's ``convert("L")``
computes it (``(19595 R + 38470 G + 7471 B + 2**15) >> 16``). Standard deviations are population
ones (ddof 0); the median and quantiles interpolate linearly, as ``numpy.percentile`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cifake.core.atomic import atomic_path, bytes_on_disk, check_space, space_errors
from cifake.core.errors import ConfigError
from cifake.data.cache import DecodedSplit, npy_problem
from cifake.data.decode import grayscale

log = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when any feature's definition changes: cached matrices are then recomputed

_REPORT = ("gray_mean", "gray_median", "gray_std", "gray_min", "gray_max",
           "gray_max_min_ratio", "gray_range", "gray_iqr")
_CHANNEL_STATS = ("mean", "std", "min", "max", "median")

# The tunable parameters of each set and their defaults; parameters of another set are ignored.
FEATURE_PARAMS: dict[str, dict[str, Any]] = {
    "report": {},
    "rich": {"bands": 4, "high_cutoff": 0.5},
}
_ALL_PARAMS = {name for params in FEATURE_PARAMS.values() for name in params}


def feature_params(feature_set: str, **params: Any) -> dict[str, Any]:
    """The checked parameters of ``feature_set``: its defaults updated with ``params``.

    Parameters that belong only to another set are dropped, so one config can switch sets;
    names that no set knows raise :class:`ConfigError`.
    """
    if feature_set not in FEATURE_PARAMS:
        raise ConfigError(f"unknown feature set {feature_set!r}; choose one of {sorted(FEATURE_PARAMS)}")
    unknown = sorted(set(params) - _ALL_PARAMS)
    if unknown:
        known = {name: sorted(p) for name, p in FEATURE_PARAMS.items()}
        raise ConfigError(f"unknown feature parameter(s) {unknown}; the feature sets take {known}")
    resolved = {key: params.get(key, default) for key, default in FEATURE_PARAMS[feature_set].items()}
    if "bands" in resolved:
        bands = resolved["bands"]
        if isinstance(bands, bool) or not isinstance(bands, (int, np.integer)) or bands < 1:
            raise ConfigError(f"features.bands must be an integer >= 1, got {bands!r}")
        resolved["bands"] = int(bands)
    if "high_cutoff" in resolved:
        cutoff = resolved["high_cutoff"]
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0.0 < cutoff < 1.0:
            raise ConfigError(
                f"features.high_cutoff is a fraction of the Nyquist frequency strictly between 0 and 1, got {cutoff!r}"
            )
        resolved["high_cutoff"] = float(cutoff)
    return resolved


def feature_names(feature_set: str, **params: Any) -> list[str]:
    """Column names of ``feature_set`` with ``params``, in the order :func:`extract_features` returns them."""
    p = feature_params(feature_set, **params)
    names = list(_REPORT)
    if feature_set == "rich":
        names += [f"{c}_{stat}" for c in "rgb" for stat in _CHANNEL_STATS]
        names += [f"fft_band{i}" for i in range(p["bands"])]
        names += ["fft_high_share", "gray_mean_abs_diff"]
    return names


# Each set's columns with its default parameters (use feature_names for other parameters).
FEATURE_SETS: dict[str, tuple[str, ...]] = {name: tuple(feature_names(name)) for name in FEATURE_PARAMS}


def _sorted_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Order statistics along the last axis of uint8 ``values`` (min, max, median, quartiles)."""
    # numpy's stable sort is a radix sort for 8-bit integers: ~10x faster than the default here.
    s = np.sort(values, axis=-1, kind="stable")
    n = s.shape[-1]

    def quantile(q: float) -> np.ndarray:  # numpy.percentile's default "linear" method
        pos = q * (n - 1)
        lo, frac = int(np.floor(pos)), pos - np.floor(pos)
        low = s[..., lo].astype(np.float64)
        return low + frac * (s[..., min(lo + 1, n - 1)] - low)

    return {"min": s[..., 0].astype(np.float64), "max": s[..., -1].astype(np.float64),
            "median": quantile(0.5), "q25": quantile(0.25), "q75": quantile(0.75)}


def _report_features(gray: np.ndarray) -> list[np.ndarray]:
    flat = gray.reshape(len(gray), -1)
    st = _sorted_stats(flat)
    mean = flat.mean(axis=1, dtype=np.float64)
    std = flat.std(axis=1, dtype=np.float64)
    # max / max(min, 1): equal to max/min whenever min >= 1, finite for images holding black
    # pixels (an all-black image gives 0).
    ratio = st["max"] / np.maximum(st["min"], 1.0)
    return [mean, st["median"], std, st["min"], st["max"], ratio, st["max"] - st["min"], st["q75"] - st["q25"]]


def _channel_features(chunk: np.ndarray) -> list[np.ndarray]:
    flat = chunk.reshape(len(chunk), 3, -1)
    st = _sorted_stats(flat)
    stats = {"mean": flat.mean(axis=2, dtype=np.float64), "std": flat.std(axis=2, dtype=np.float64), **st}
    return [stats[name][:, c] for c in range(3) for name in _CHANNEL_STATS]


def _spectrum_weights(height: int, width: int, bands: int, high_cutoff: float) -> np.ndarray:
    """``(H * (W//2 + 1), bands + 1)`` weights that turn an ``rfft2`` power spectrum into the
    energy of each radial band and of the high-frequency region (last column)."""
    fy = np.abs(np.fft.fftfreq(height))[:, None] / 0.5  # in units of the Nyquist frequency
    cols = np.arange(width // 2 + 1)
    fx = (cols / width)[None, :] / 0.5
    radius = np.hypot(fy, fx)  # 0 at DC, 1 at Nyquist on an axis, sqrt(2) in the corners
    # Equal-width bands over [0, Nyquist]; the corners beyond it count in the highest band.
    band = np.minimum((radius * bands).astype(int), bands - 1)
    # rfft2 keeps half the columns: each column other than 0 and W/2 stands for two mirrored bins.
    mult = np.where((cols == 0) | (2 * cols == width), 1.0, 2.0)[None, :] * np.ones_like(radius)
    mult[0, 0] = 0.0  # DC is the mean brightness, which the statistics already give
    weights = np.zeros((height, len(cols), bands + 1), dtype=np.float32)
    np.put_along_axis(weights, band[..., None], mult[..., None], axis=2)
    weights[..., bands] = mult * (np.maximum(fy, fx) > high_cutoff)
    return weights.reshape(-1, bands + 1)


def _spectral_features(gray: np.ndarray, bands: int, high_cutoff: float) -> list[np.ndarray]:
    n, height, width = gray.shape
    pixels = gray.astype(np.float32)
    pixels -= pixels.mean(axis=(1, 2), keepdims=True)  # keeps float32 round-off out of the AC bins
    spectrum = np.fft.rfft2(pixels)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).reshape(n, -1)
    energy = power @ _spectrum_weights(height, width, bands, high_cutoff)
    total = energy[:, :bands].sum(axis=1, dtype=np.float64)
    # A flat image has no AC energy: count its (zero) energy as the lowest frequency, so that the
    # band shares always sum to 1. A non-flat integer image has AC energy >= H*W, far above this.
    flat = total < 1e-3
    shares = energy.astype(np.float64) / np.where(flat, 1.0, total)[:, None]
    shares[flat] = 0.0
    shares[flat, 0] = 1.0
    return [shares[:, i] for i in range(bands + 1)]


def _mean_abs_diff(gray: np.ndarray) -> np.ndarray:
    g = gray.astype(np.int16)
    dx = np.abs(np.diff(g, axis=2)).reshape(len(g), -1)
    dy = np.abs(np.diff(g, axis=1)).reshape(len(g), -1)
    count = dx.shape[1] + dy.shape[1]
    if count == 0:  # a 1x1 image has no neighbours
        return np.zeros(len(g))
    return (dx.sum(axis=1, dtype=np.float64) + dy.sum(axis=1, dtype=np.float64)) / count


def _extract_chunk(chunk: np.ndarray, feature_set: str, params: dict[str, Any]) -> np.ndarray:
    gray = grayscale(chunk)
    columns = _report_features(gray)
    if feature_set == "rich":
        columns += _channel_features(chunk)
        columns += _spectral_features(gray, params["bands"], params["high_cutoff"])
        columns.append(_mean_abs_diff(gray))
    return np.stack(columns, axis=1).astype(np.float32)


def extract_features(images: np.ndarray, feature_set: str, chunk_size: int = 4096, progress: str | None = None,
                     **params: Any) -> np.ndarray:
    """The ``(N, F)`` float32 feature matrix of ``(N, 3, H, W)`` uint8 ``images`` (F = ``len(feature_names)``).

    Images are processed ``chunk_size`` at a time, so a memory-mapped array is never read whole;
    ``progress``, when given, is the description of a progress bar over the chunks.
    """
    p = feature_params(feature_set, **params)
    if chunk_size < 1:
        raise ConfigError(f"features chunk_size must be at least 1, got {chunk_size}")
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, 3, H, W) uint8 images, got {images.shape} {images.dtype}")
    out = np.empty((len(images), len(feature_names(feature_set, **p))), dtype=np.float32)
    starts = range(0, len(images), chunk_size)
    for start in tqdm(starts, desc=progress, unit="chunk", disable=progress is None, mininterval=1):
        out[start:start + chunk_size] = _extract_chunk(np.asarray(images[start:start + chunk_size]), feature_set, p)
    return out


def cache_path(split: DecodedSplit, feature_set: str, **params: Any) -> Path:
    """Where :func:`cached_features` keeps this set's matrix: keyed by the set, its parameters and
    :data:`FEATURES_VERSION`, so that changing any of them computes a new one."""
    p = feature_params(feature_set, **params)
    key = json.dumps({"set": feature_set, "params": p, "version": FEATURES_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(split.cache_dir) / f"features-{feature_set}-v{FEATURES_VERSION}-{digest}.npy"


def cached_features(split: DecodedSplit, feature_set: str, chunk_size: int = 4096, **params: Any) -> np.ndarray:
    """The feature matrix of every image of ``split``, computed once and stored as ``.npy`` in
    ``split.cache_dir`` (whose name already changes whenever the split's files do)."""
    path = cache_path(split, feature_set, **params)
    shape = (len(split), len(feature_names(feature_set, **params)))
    if path.exists():
        # Checked from the header and size before it is read: a truncated or foreign file is
        # computed again, never loaded.
        problem = npy_problem(path, shape, np.float32)
        if problem is None:
            log.info("Reusing the %r features of %s", feature_set, path.parent.name)
            return np.load(path)
        log.warning("Recomputing the %r features of %s: %s", feature_set, path.parent.name, problem)
    what = f"the {feature_set!r} features of {path.parent.name}"
    needed = bytes_on_disk([shape[0] * shape[1] * np.dtype(np.float32).itemsize + 128], path.parent)
    check_space(path.parent, needed, what)  # before the work, not after it
    features = extract_features(split.images, feature_set, chunk_size=chunk_size,
                                progress=f"Features ({feature_set})", **params)
    # Written under a temporary name and renamed, so that an interrupted run leaves no partial cache.
    with space_errors(path.parent, needed, what), atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, features)
    return features
