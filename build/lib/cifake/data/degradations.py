"""Image degradations on uint8 batches: JPEG re-compression, blur, down-and-up scaling (in torch
or with Pillow's filters), up-and-down re-rendering, noise and mirroring, each at a strength. The robustness table
(:mod:`cifake.analysis.robustness`) applies them to test images; training-time degradations
(:mod:`cifake.data.training_degradations`) to a share of each training batch.

Every perturbation maps a uint8 batch ``(N, C, H, W)`` to a new uint8 batch of the same shape and
never changes its input.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import gaussian_blur as tv_gaussian_blur

from cifake.core.errors import ConfigError
from cifake.data.decode import RESAMPLING

Strength = float | None
# A perturbation as the registry calls it: (images, strength, generator, **options) -> images.
Perturbation = Callable[..., torch.Tensor]
BASELINE = "none"


def _check_batch(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a uint8 batch (N, C, H, W), got {images.dtype} {tuple(images.shape)}")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in 0..255 -> uint8, rounded to nearest and clipped (not wrapped)."""
    return x.round_().clamp_(0, 255).to(torch.uint8)


def jpeg(images: torch.Tensor, quality: int, subsampling: int = 2) -> torch.Tensor:
    """Encode each image as a JPEG of ``quality`` (1..100) and decode it again.

    Pillow (the library the dataset is decoded with) is used rather than ``torchvision.io``,
    whose JPEG codec is deprecated since torchvision 0.29. ``subsampling`` is Pillow's chroma
    subsampling: 0 keeps full colour resolution (4:4:4), 2 halves it both ways (4:2:0, what most
    encoders and web services do).
    """
    _check_batch(images)
    if images.shape[1] != 3:
        raise ValueError(f"JPEG needs RGB images (3 channels), got {images.shape[1]}")
    if quality != int(quality) or not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be an integer in 1..100, got {quality}")
    if subsampling not in (0, 1, 2):
        raise ConfigError(f"JPEG subsampling must be 0 (4:4:4), 1 (4:2:2) or 2 (4:2:0), got {subsampling}")
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3), what PIL reads
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=int(quality),
                                                          subsampling=subsampling)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded)  # an RGB JPEG decodes to RGB
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


def gaussian_blur(images: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Blur with a Gaussian of ``sigma`` pixels, cut off at ``truncate`` sigmas (as scipy does),
    edges reflected. ``sigma=0`` returns an unchanged copy."""
    _check_batch(images)
    if not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"blur sigma must be a finite number of pixels >= 0, got {sigma}")
    if truncate <= 0:
        raise ConfigError(f"blur truncate must be > 0 sigmas, got {truncate}")
    if sigma == 0:
        return images.clone()
    # Reflection padding needs the radius below the image size; the tails cut off there are tiny.
    radius = max(1, min(math.ceil(truncate * sigma), min(images.shape[-2:]) - 1))
    return tv_gaussian_blur(images, kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma)] * 2)


def rescale(images: torch.Tensor, factor: float, mode: str = "bilinear") -> torch.Tensor:
    """Shrink by ``factor`` (0 < factor <= 1; antialiased) and enlarge back to the original size,
    as a thumbnail blown up again would be. A factor that keeps the size returns an unchanged copy."""
    _check_batch(images)
    if not 0 < factor <= 1:
        raise ConfigError(f"scale factor must be in (0, 1], got {factor}")
    if mode not in ("bilinear", "bicubic"):
        raise ConfigError(f"scale mode must be 'bilinear' or 'bicubic', got {mode!r}")
    h, w = images.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    if small == (h, w):
        return images.clone()
    x = F.interpolate(images.float(), size=small, mode=mode, antialias=True, align_corners=False)
    # Antialiasing only matters when shrinking; enlarging interpolates plainly.
    x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False)
    return _to_uint8(x)  # bicubic overshoots: clip


def pil_rescale(images: torch.Tensor, factor: float, resample: str = "lanczos") -> torch.Tensor:
    """Down-and-up scaling by ``factor`` with one of Pillow's filters (``resample``), as photo
    sites and messengers resize: another implementation and filter than :func:`rescale`, so a
    model trained on one can be tested on the other."""
    _check_batch(images)
    if not 0 < factor <= 1:
        raise ConfigError(f"scale factor must be in (0, 1], got {factor}")
    if resample not in RESAMPLING:
        raise ConfigError(f"pil_scale resample must be one of {sorted(RESAMPLING)}, got {resample!r}")
    h, w = images.shape[-2:]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))  # Pillow sizes are (width, height)
    if small == (w, h):
        return images.clone()
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        pil = Image.fromarray(np.ascontiguousarray(image))
        out[i] = np.asarray(pil.resize(small, RESAMPLING[resample]).resize((w, h), RESAMPLING[resample]))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


# How an image may reach 32x32 from a photo's size: the kernels :func:`rerender` draws from.
RERENDER_UP = ("nearest", "bilinear", "bicubic")
RERENDER_DOWN = ("bilinear", "bicubic", "area")


def rerender(images: torch.Tensor, factor: float, generator: torch.Generator | None = None,
             quality: tuple[int, int] = (60, 95), jpeg_share: float = 0.5) -> torch.Tensor:
    """Enlarge by ``factor`` (>= 1) with a random kernel, save as a JPEG at that size (with probability
    ``jpeg_share``, at a quality drawn in ``quality``), then shrink back with a random kernel, antialiased
    or not: the path a photo takes to 32x32 (a large file resized by a viewer or a dataset tool), applied
    to an image that is already small. The kernels, the antialiasing and the quality are drawn once per
    call from ``generator`` (``RERENDER_UP``, ``RERENDER_DOWN``)."""
    _check_batch(images)
    if not math.isfinite(factor) or factor < 1:
        raise ConfigError(f"rerender factor is an enlargement >= 1, got {factor}")
    low, high = (int(q) for q in quality)
    if not 1 <= low <= high <= 100:
        raise ConfigError(f"rerender quality is [low, high] within 1..100, got {list(quality)}")
    if not 0.0 <= jpeg_share <= 1.0:
        raise ConfigError(f"rerender jpeg_share is a probability in [0, 1], got {jpeg_share}")
    draws = torch.rand(5, generator=generator).tolist()
    up = RERENDER_UP[min(int(draws[0] * len(RERENDER_UP)), len(RERENDER_UP) - 1)]
    down = RERENDER_DOWN[min(int(draws[1] * len(RERENDER_DOWN)), len(RERENDER_DOWN) - 1)]
    h, w = images.shape[-2:]
    big = (max(h, round(h * factor)), max(w, round(w * factor)))
    x = F.interpolate(images.float(), size=big, mode=up, **({} if up == "nearest" else {"align_corners": False}))
    x = _to_uint8(x)
    if draws[2] < jpeg_share:
        x = jpeg(x, low + min(int(draws[3] * (high - low + 1)), high - low))
    kwargs = {} if down == "area" else {"align_corners": False, "antialias": draws[4] < 0.5}
    return _to_uint8(F.interpolate(x.float(), size=(h, w), mode=down, **kwargs))


def gaussian_noise(images: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add Gaussian noise of ``std`` grey levels (0..255 units), rounded and clipped to 0..255.

    The noise is drawn on ``generator``'s device (the default generator if None), so a seeded
    generator gives the same noise for the same batch shapes in the same order."""
    _check_batch(images)
    if not math.isfinite(std) or std < 0:
        raise ConfigError(f"noise std must be a finite number of grey levels >= 0, got {std}")
    if std == 0:
        return images.clone()
    device = generator.device if generator is not None else images.device
    noise = torch.randn(images.shape, generator=generator, device=device).to(images.device)
    return _to_uint8(images.float() + std * noise)


def hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror left-right. Training augments with flips, so a drop here is a warning sign."""
    _check_batch(images)
    return images.flip(-1)


def _no_strength(name: str, strength: Strength) -> None:
    if strength is not None:
        raise ConfigError(f"{name} takes no strength; list it as `{name}: [null]`, got {strength!r}")


def _hflip(images: torch.Tensor, strength: Strength, generator: torch.Generator | None) -> torch.Tensor:
    _no_strength("hflip", strength)
    return hflip(images)


def _identity(images: torch.Tensor, strength: Strength, generator: torch.Generator | None) -> torch.Tensor:
    _no_strength(BASELINE, strength)
    return images


PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg": lambda x, s, g, **kw: jpeg(x, s, **kw),
    "blur": lambda x, s, g, **kw: gaussian_blur(x, s, **kw),
    "scale": lambda x, s, g, **kw: rescale(x, s, **kw),
    "pil_scale": lambda x, s, g, **kw: pil_rescale(x, s, **kw),
    "noise": lambda x, s, g, **kw: gaussian_noise(x, s, generator=g, **kw),
    "rerender": lambda x, s, g, **kw: rerender(x, s, generator=g, **kw),
    "hflip": _hflip,
}

# name -> strengths: JPEG quality, blur sigma (pixels), scale factor, noise std (grey levels).
DEFAULT_PERTURBATIONS: dict[str, list[Strength]] = {
    "jpeg": [90, 75, 50],
    "blur": [0.5, 1.0],
    "scale": [0.75, 0.5],
    "noise": [4, 8, 16],
    "hflip": [None],
}


def perturb(name: str, images: torch.Tensor, strength: Strength, generator: torch.Generator | None = None,
            options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Apply the registered perturbation ``name`` at ``strength``; ``options`` are its keyword
    arguments beyond the strength (e.g. ``{"subsampling": 0}`` for ``jpeg``)."""
    if name == BASELINE:
        return _identity(images, strength, generator)
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    try:
        return PERTURBATIONS[name](images, strength, generator, **dict(options or {}))
    except TypeError as err:  # a misspelt option or a strength of the wrong kind
        raise ConfigError(f"perturbation {name!r} at strength {strength!r} with options {dict(options or {})}: "
                          f"{err}") from None


