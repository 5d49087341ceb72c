"""Decode one image file into a fixed-size RGB uint8 array (kept free of torch: it runs in
decoder processes)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def decode_image(path: Path, size: int, resample: str) -> tuple[np.ndarray, list[str]]:
    """Return the image as ``(3, size, size)`` uint8 and the conversions it needed.

    Raises ``OSError``/``ValueError``/``UnidentifiedImageError`` for files that cannot be decoded
    (empty, truncated, not an image).
    """
    with Image.open(path) as im:
        im.load()  # truncated files fail here, not later
        return to_model_input(im, size, resample)


def to_model_input(im: Image.Image, size: int, resample: str) -> tuple[np.ndarray, list[str]]:
    """A loaded image as ``(3, size, size)`` RGB uint8 and the conversions it needed: the one
    conversion behind files (:func:`decode_image`) and uploads (:mod:`cifake.serving`), so both
    give the model the same pixels."""
    conversions: list[str] = []
    if im.mode != "RGB":
        conversions.append(f"mode {im.mode} -> RGB")
        im = im.convert("RGB")
    if im.size != (size, size):
        conversions.append(f"resized to {size}x{size}")
        im = im.resize((size, size), RESAMPLING[resample])
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1), conversions


def decode_into(
    root: str, files: list[str], start: int, out_path: str, size: int, resample: str
) -> tuple[int, list[tuple[int, str]], Counter]:
    """Decode ``files`` into rows ``start...`` of the ``.npy`` memmap at ``out_path``.

    Returns the number of files handled, the ``(row, reason)`` of each file that failed, and the
    count of each kind of conversion. Runs in worker processes.
    """
    out = np.load(out_path, mmap_mode="r+")
    bad: list[tuple[int, str]] = []
    converted: Counter = Counter()
    for offset, rel in enumerate(files):
        try:
            out[start + offset], conversions = decode_image(Path(root) / rel, size, resample)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            bad.append((start + offset, f"{type(err).__name__}: {err}".strip()))
            continue
        converted.update(conversions)
    out.flush()
    return len(files), bad, converted


def grayscale(images: np.ndarray) -> np.ndarray:
    """``(N, 3, H, W)`` uint8 RGB -> ``(N, H, W)`` uint8 luma, bit-identical to Pillow's ``convert("L")``."""
    rgb = images.astype(np.uint32)
    return ((rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16).astype(np.uint8)
