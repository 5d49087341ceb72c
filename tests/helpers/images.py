"""Image files: single generated images and CIFAKE-shaped folders of them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, rng: np.random.Generator, size: int = 32, mode: str = "RGB",
                fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def make_cifake_tree(root: Path, n_per_class: int = 6, splits: Iterable[str] = ("train", "test"),
                     seed: int = 0) -> Path:
    """Write ``root/<split>/{FAKE,REAL}/<i>.jpg`` with random pixels."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in ("FAKE", "REAL"):
            for i in range(n_per_class):
                write_image(root / split / cls / f"{i} ({cls}).jpg", rng)
    return root


def generated_images(folder: Path, n: int, seed: int = 1) -> np.ndarray:
    """``n`` JPEGs of assorted sizes written to ``folder`` and decoded as prediction decodes them."""
    from cifake.data.decode import decode_image

    rng = np.random.default_rng(seed)
    decoded = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        write_image(path, rng, size=int(rng.integers(20, 90)))
        decoded.append(decode_image(path, 32, "bicubic")[0])
    return np.stack(decoded)
