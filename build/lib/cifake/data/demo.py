"""A small, deterministic, CIFAKE-shaped dataset generated on the fly (``data=demo``).

Both classes draw scenes from the same distribution (a colour gradient and a few shapes), so
their colours and global brightness statistics match. They differ the way generated images differ
from photos: a REAL image is rendered at full resolution with per-pixel sensor noise; a FAKE one
is rendered at a lower resolution with its noise there and upsampled, which leaves smoother
textures, softer edges and the periodic traces of interpolation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cifake.data.labels import CLASSES
from cifake.data.locking import build_lock, hold

log = logging.getLogger(__name__)

_DONE = ".generated"


def _scene(rng: np.random.Generator, res: int) -> np.ndarray:
    """A ``(res, res, 3)`` float image in [0, 1]; its parameters do not depend on ``res``."""
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
    xx, yy = (xx + 0.5) / res, (yy + 0.5) / res  # pixel centres in [0, 1]
    c0, c1 = rng.uniform(0.05, 0.95, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        rx, ry = rng.uniform(0.08, 0.35, size=2)
        colour = rng.uniform(0.0, 1.0, size=3)
        if rng.random() < 0.5:
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        else:
            mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        img[mask] = colour
    return img


def render(rng: np.random.Generator, fake: bool, size: int, factor: int, noise: float) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of the given class."""
    sigma = rng.uniform(0.5, 1.0) * noise
    if not fake:
        img = _scene(rng, size)
        img = img + rng.normal(0.0, sigma, img.shape)
    else:
        low = size // factor
        img = _scene(rng, low)
        # Bilinear upsampling averages neighbouring noise samples; scale it so that the
        # per-pixel noise level (and with it global contrast statistics) matches REAL's.
        img = img + rng.normal(0.0, sigma * 1.5, img.shape)
        img = np.clip(img, 0, 1)
        pil = Image.fromarray((img * 255).round().astype(np.uint8))
        return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _params(**settings: object) -> str:
    return json.dumps(settings, sort_keys=True)


def demo_folder(root: Path, **settings: object) -> Path:
    """Where the demo data made with ``settings`` (:func:`generate_demo`'s arguments after ``root``)
    lives under ``root``: one folder per setting, named by its image size and a hash of them all."""
    return root / f"{settings['image_size']}px-{hashlib.sha256(_params(**settings).encode()).hexdigest()[:12]}"


def generate_demo(
    root: Path,
    train_per_class: int,
    test_per_class: int,
    seed: int,
    image_size: int,
    upsample_factor: int,
    noise: float,
    jpeg_quality: int,
) -> Path:
    """Write ``<root>/<setting>/{train,test}/{FAKE,REAL}/NNNN.jpg`` unless a complete copy made with
    the same parameters is there, and return that folder. Each setting has its own folder, written
    whole into ``<folder>.partial`` under a lock and then renamed: runs with other settings never
    rewrite a folder that another run reads, and this run marks it in use (pruning skips it)."""
    settings = {k: v for k, v in locals().items() if k != "root"}
    params, folder = _params(**settings), demo_folder(root, **settings)

    def done() -> bool:
        try:
            return (folder / _DONE).read_text() == params
        except OSError:  # not generated yet
            return False

    hold(folder)
    if done():
        log.info("Reusing the demo dataset in %s (generated with the same parameters)", folder)
        return folder
    with build_lock(folder, f"generating the demo dataset in {folder}"):
        if done():
            log.info("Reusing the demo dataset in %s (another process generated it meanwhile)", folder)
        else:
            draw = partial(render, size=image_size, factor=upsample_factor, noise=noise)
            _write_demo(folder, params, train_per_class, test_per_class, seed, draw, jpeg_quality)
    return folder


def _write_demo(root: Path, params: str, train_per_class: int, test_per_class: int, seed: int,
                draw: Callable[[np.random.Generator, bool], np.ndarray], jpeg_quality: int) -> None:
    """Write the images into ``root`` (its record ``params`` last); ``draw(rng, fake)`` renders one
    (:func:`render` at the setting's size, upsampling factor and noise)."""
    # Under the build lock. A folder here without its record is no finished copy, so nobody reads it:
    # left by an interrupted rename or by hand.
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    total = 2 * (train_per_class + test_per_class)
    log.info("Generating the demo dataset (%d images) in %s", total, root)
    with tqdm(total=total, desc="Generating demo data", unit="img", mininterval=1) as bar:
        for split_idx, (split, n) in enumerate((("train", train_per_class), ("test", test_per_class))):
            for class_idx, name in enumerate(CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                rng = np.random.default_rng([seed, split_idx, class_idx])
                for i in range(n):
                    pixels = draw(rng, name == "FAKE")
                    Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=jpeg_quality)
                    bar.update()
    (tmp / _DONE).write_text(params)  # the record, last: only a whole folder carries it
    tmp.rename(root)
