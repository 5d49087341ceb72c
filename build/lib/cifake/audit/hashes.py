"""Content and perceptual hashes of every image of a decoded split, computed once and cached in
the split's decode-cache folder (whose name changes whenever the split's files do).

- content: sha256 of the file's bytes; equal digests mean byte-identical files.
- perceptual (pHash): the 8x8 lowest frequencies of the orthonormal 2-D DCT-II of the image's luma
  (Pillow's ``convert("L")``), one bit per coefficient, set when it exceeds the median of the 64.
  Bit 63 is the DC term, then row by row. It ignores what JPEG re-encoding and small edits change
  (high frequencies, a few levels of brightness), so copies of one picture land a few bits apart.
  pHash is usually taken on a 32x32 downscale, which CIFAKE's images already are.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cifake.core.atomic import atomic_path, bytes_on_disk, check_space, space_errors
from cifake.core.errors import ConfigError, DataError
from cifake.data.cache import DecodedSplit
from cifake.data.decode import grayscale

log = logging.getLogger(__name__)

HASHES_VERSION = 1  # bump when either hash's definition changes: cached hashes are then recomputed
PHASH_SIDE = 8  # 8x8 low-frequency coefficients: 64 bits


@dataclass(frozen=True)
class SplitHashes:
    """``sha256[i]`` (32 bytes) and ``phash[i]`` of ``files[i]`` of a decoded split."""

    sha256: np.ndarray  # (N, 32) uint8
    phash: np.ndarray  # (N,) uint64


def file_digests(root: Path, files: Sequence[str], progress: str | None = None) -> np.ndarray:
    """``(N, 32)`` uint8: sha256 of the bytes of each of ``files`` (relative to ``root``)."""
    out = np.empty((len(files), 32), dtype=np.uint8)
    for row, rel in enumerate(tqdm(files, desc=progress, unit="file", disable=progress is None, mininterval=1)):
        out[row] = np.frombuffer(hashlib.sha256((root / rel).read_bytes()).digest(), dtype=np.uint8)
    return out


def dct_basis(n: int, k: int) -> np.ndarray:
    """``(k, n)``: the first ``k`` rows of the orthonormal DCT-II matrix of size ``n``."""
    u = np.arange(k)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * u / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


def perceptual_hashes(images: np.ndarray, chunk_size: int = 4096, progress: str | None = None) -> np.ndarray:
    """``(N,)`` uint64 pHash (see the module's doc) of ``(N, 3, H, W)`` uint8 ``images``, ``chunk_size``
    images per numpy step, so that a memory-mapped array is never read whole."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, 3, H, W) uint8 images, got {images.shape} {images.dtype}")
    if chunk_size < 1:
        raise ConfigError(f"audit.chunk_size must be at least 1, got {chunk_size}")
    n, _, height, width = images.shape
    if min(height, width) < PHASH_SIDE:
        raise ValueError(f"pHash needs images of at least {PHASH_SIDE}x{PHASH_SIDE} pixels, got {height}x{width}")
    rows, cols = dct_basis(height, PHASH_SIDE), dct_basis(width, PHASH_SIDE).T
    out = np.empty(n, dtype=np.uint64)
    starts = range(0, n, chunk_size)
    for start in tqdm(starts, desc=progress, unit="chunk", disable=progress is None, mininterval=1):
        gray = grayscale(np.asarray(images[start:start + chunk_size])).astype(np.float64)
        # rows @ gray @ cols per image, as two plain 2-D products (BLAS) over the whole chunk.
        across = (gray.reshape(-1, width) @ cols).reshape(len(gray), height, PHASH_SIDE)
        coef = np.tensordot(across, rows, axes=([1], [1])).transpose(0, 2, 1).reshape(len(gray), -1)
        bits = coef > np.median(coef, axis=1, keepdims=True)
        out[start:start + len(gray)] = np.packbits(bits, axis=1).view(">u8").ravel()  # first coefficient = bit 63
    return out


def cache_path(split: DecodedSplit) -> Path:
    return Path(split.cache_dir) / f"hashes-v{HASHES_VERSION}.npz"


def require_sources(root: Path, files: Sequence[str], cache_file: Path) -> None:
    """Raise :class:`DataError` naming ``cache_file`` and the first missing file when any of
    ``files`` (relative to ``root``) is gone, so that ``cache_file`` cannot be computed from them."""
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"{cache_file} must be computed from the data set's files, but {len(missing)} of its {len(files)} are "
            f"gone, e.g. {root / missing[0]}: restore them under data.root and run again"
        )


def _read_cached(path: Path, n: int) -> SplitHashes | str:
    """The hashes stored at ``path``, or why they cannot be used: unreadable (truncated, not an
    ``.npz``) or not the ``n`` rows of the split they belong to."""
    try:
        with np.load(path) as stored:
            hashes = SplitHashes(sha256=stored["sha256"], phash=stored["phash"])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if hashes.sha256.shape != (n, 32) or hashes.sha256.dtype != np.uint8 or hashes.phash.shape != (n,) \
            or hashes.phash.dtype != np.uint64:
        return (f"of another split: sha256 {hashes.sha256.dtype} {hashes.sha256.shape} and phash {hashes.phash.dtype} "
                f"{hashes.phash.shape}, not the {n} rows of this one")
    return hashes


def split_hashes(split: DecodedSplit, chunk_size: int = 4096) -> SplitHashes:
    """Both hashes of every image of ``split``: read from its cache folder, or computed and stored
    there (as ``hashes-v<version>.npz``) on first use, or again when the stored file is damaged."""
    path = cache_path(split)
    if path.exists():
        cached = _read_cached(path, len(split))
        if isinstance(cached, SplitHashes):
            log.info("Reusing the hashes of %s", path.parent.name)
            return cached
        log.warning("Recomputing the hashes of %s: %s is %s", path.parent.name, path.name, cached)
    root = Path(split.root)
    require_sources(root, split.files, path)  # sha256 reads every file's bytes
    name = Path(split.cache_dir).name
    what = f"the hashes of {name}"
    needed = bytes_on_disk([len(split) * (32 + 8) + 1024], path.parent)  # sha256 + pHash per file, the zip's headers
    check_space(path.parent, needed, what)  # before the work, not after it
    hashes = SplitHashes(sha256=file_digests(root, split.files, progress=f"sha256 ({name})"),
                         phash=perceptual_hashes(split.images, chunk_size, progress=f"pHash ({name})"))
    # Written under a temporary name and renamed, so that an interrupted run leaves no partial cache.
    with space_errors(path.parent, needed, what), atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, sha256=hashes.sha256, phash=hashes.phash)
    return hashes
