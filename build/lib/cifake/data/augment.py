"""Batched augmentation on whatever device the batch is on."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Rescale a uint8 batch to float32 in [0, 1] (the report's ``rescale=1/255``)."""
    return images.float().div_(255.0)


def sample_shear_degrees(n: int, max_degrees: float, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """One shear angle per sample, uniform in [-max_degrees, +max_degrees] (Keras ``shear_range``)."""
    return torch.empty(n, device=device).uniform_(-max_degrees, max_degrees, generator=generator)


def shear_grid(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid of the Keras shear: output pixel (x, y) reads input (x - sin(s) y, cos(s) y),
    both measured from the image centre, as ``ImageDataGenerator.apply_affine_transform`` does."""
    s = torch.deg2rad(degrees)
    theta = torch.zeros(len(s), 2, 3, device=s.device, dtype=torch.float32)
    theta[:, 0, 0] = 1.0
    theta[:, 0, 1] = -torch.sin(s) * (height / width)  # grid coordinates are normalised per axis
    theta[:, 1, 1] = torch.cos(s)
    return F.affine_grid(theta, [len(s), 1, height, width], align_corners=False)


def grid_shear(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Shear each image of a float batch by its angle in ``degrees`` with ``grid_sample``:
    bilinear, edges replicated (Keras' ``order=1``, ``fill_mode='nearest'``). Any angle, any device."""
    grid = shear_grid(degrees, *images.shape[-2:])
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def _row_centres(height: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Each row's centre measured from the image's centre: -h/2 + 0.5, ..., h/2 - 0.5."""
    return torch.arange(0.5 - height / 2, height / 2, device=device, dtype=dtype)


def row_offsets(radians: torch.Tensor, height: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, height)`` vertical source offsets in pixels of the shear in :func:`shear_grid`:
    output row ``y`` reads input row ``y + dy``."""
    return torch.outer(torch.cos(radians) - 1, _row_centres(height, radians.device, dtype))


def column_offsets(radians: torch.Tensor, height: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, height)`` horizontal source offsets in pixels of the shear in :func:`shear_grid`:
    output pixel ``x`` of row ``y`` reads input column ``x + dx[y]``."""
    return torch.outer(torch.sin(radians), _row_centres(height, radians.device, dtype)).neg_()


def max_shear_offsets(max_degrees: float, height: int) -> tuple[float, float]:
    """The largest source offsets ``(rows, columns)`` in pixels that a shear of up to
    ``max_degrees`` produces in an image ``height`` rows tall."""
    edge = height / 2 - 0.5  # the centre of the outermost row, from the image's centre
    one_minus_cos = 1 - math.cos(math.radians(min(max_degrees, 180.0)))
    return one_minus_cos * edge, math.sin(math.radians(min(max_degrees, 90.0))) * edge


# A row moved by less than this (in pixels) changes no pixel of a [0, 1] image by more than
# half an 8-bit grey level, which is below what the 8-bit source images can express.
NEGLIGIBLE_ROW_OFFSET = 0.5 / 255


def _subpixel_shift(images: torch.Tensor, offset: torch.Tensor, dim: int) -> torch.Tensor:
    """Bilinear resampling along ``dim`` (-2 rows, -1 columns) at ``index + offset``, border
    replicated, for offsets in [-1, 1] broadcast against ``images``: a three-tap filter."""
    if dim == -2:
        padded = F.pad(images, (0, 0, 1, 1), mode="replicate")
        before, after = padded[..., :-2, :], padded[..., 2:, :]
    else:
        padded = F.pad(images, (1, 1, 0, 0), mode="replicate")
        before, after = padded[..., :-2], padded[..., 2:]
    out = images * (1 - offset.abs())
    return out.addcmul_(after, offset.clamp(min=0)).addcmul_(before, offset.neg().clamp_(min=0))


def random_shear(images: torch.Tensor, max_degrees: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shear each image of a float batch by its own angle drawn in ±``max_degrees`` degrees.

    Bilinear sampling and edge replication match Keras' defaults (``order=1``,
    ``fill_mode='nearest'``). ``max_degrees=0`` returns the batch unchanged.

    On a CPU a sub-pixel shear (up to ~3.7 degrees at 32 px, the report's 0.2 included) reads
    only neighbouring pixels and runs as separable three-tap filters, 2-3x faster than
    ``grid_sample``'s generic kernel and equal to it to float rounding, except that the
    vertical ``cos(s)`` scaling is left out while it moves no row by ``NEGLIGIBLE_ROW_OFFSET``
    (at 0.2 degrees and 32 px it moves rows by at most 1e-4 px). On a GPU ``grid_sample``
    takes fewer kernel launches, so it always runs there.
    """
    if max_degrees == 0:
        return images
    if not math.isfinite(max_degrees) or max_degrees < 0:
        raise ValueError(f"shear must be a finite angle in degrees >= 0, got {max_degrees}")
    n, _, h, _ = images.shape
    degrees = sample_shear_degrees(n, max_degrees, images.device, generator)
    max_dy, max_dx = max_shear_offsets(max_degrees, h)
    if images.device.type == "cpu" and max(max_dy, max_dx) <= 1:
        radians = degrees.deg2rad_()
        if max_dy >= NEGLIGIBLE_ROW_OFFSET:
            images = _subpixel_shift(images, row_offsets(radians, h, images.dtype)[:, None, :, None], -2)
        return _subpixel_shift(images, column_offsets(radians, h, images.dtype)[:, None, :, None], -1)
    return grid_shear(images, degrees)


def random_hflip(images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability ``p`` (one draw per sample)."""
    if p <= 0:
        return images
    flip = torch.rand(len(images), device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


HFLIP_MODES = ("random", "alternate")  # what data.hflip_mode may name


def alternating_hflip(images: torch.Tensor, first_flip: torch.Tensor, epoch: int) -> torch.Tensor:
    """Mirror image ``i`` of a batch when ``first_flip[i]`` (a bool per image, drawn once for the whole run)
    differs from the parity of ``epoch``: each image is mirrored on every other epoch, so two consecutive
    epochs show it once each way (airbench94's alternating flips), where independent draws leave a quarter of
    the images unmirrored, and another quarter mirrored, in both."""
    flip = first_flip.to(images.device) ^ bool(epoch % 2)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


TRANSLATE_PADDING = ("reflect", "replicate", "zeros")


def random_translate(images: torch.Tensor, max_pixels: int, padding: str = "reflect",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of a batch by its own whole-pixel offset ``(dy, dx)``, each drawn
    uniformly in ``[-max_pixels, max_pixels]``: pad by ``max_pixels`` and crop back to the input's
    size (the pad-and-crop of CIFAR training). Output pixel ``(y, x)`` is padded input
    ``(y + dy, x + dx)``; whole pixels, so no interpolation blurs the high frequencies.

    ``padding`` fills what the shift uncovers: ``reflect`` mirrors the image's own pixels,
    ``replicate`` repeats the edge, ``zeros`` is black. ``max_pixels=0`` returns the batch unchanged.
    """
    if max_pixels == 0:
        return images
    if max_pixels < 0:
        raise ValueError(f"translate must be a whole number of pixels >= 0, got {max_pixels}")
    n, _, h, w = images.shape
    p = max_pixels
    offsets = torch.randint(-p, p + 1, (2, n), device=images.device, generator=generator)
    return _windows(_pad(images, p, padding), offsets + p, h, w)


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``size x size`` window of each image of a batch, at its own position drawn uniformly among
    all that fit: whole pixels, nothing resampled (crops instead of resizing, as SAFE trains).
    ``size`` equal to the images' side returns the batch unchanged."""
    n, _, h, w = images.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"crop must be a side in whole pixels in [1, {min(h, w)}], got {size}")
    if size == h == w:
        return images
    top = torch.randint(0, h - size + 1, (n,), device=images.device, generator=generator)
    left = torch.randint(0, w - size + 1, (n,), device=images.device, generator=generator)
    return _windows(images, torch.stack([top, left]), size, size)


def _windows(images: torch.Tensor, corners: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The ``h x w`` window of each image whose top-left pixel ``corners[:, i]`` (rows, columns) gives."""
    n, c = images.shape[:2]
    rows = torch.arange(h, device=images.device)[None, :] + corners[0][:, None]  # (N, h)
    cols = torch.arange(w, device=images.device)[None, :] + corners[1][:, None]  # (N, w)
    # Two gathers (rows, then columns) beat one 3-index gather here: fewer, contiguous reads.
    images = images.gather(2, rows[:, None, :, None].expand(n, c, h, images.shape[-1]))
    return images.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _pad(images: torch.Tensor, pixels: int, padding: str) -> torch.Tensor:
    if padding not in TRANSLATE_PADDING:
        raise ValueError(f"padding must be one of {list(TRANSLATE_PADDING)}, got {padding!r}")
    mode = "constant" if padding == "zeros" else padding
    return F.pad(images, (pixels, pixels, pixels, pixels), mode=mode)


def shift(images: torch.Tensor, dy: int, dx: int, padding: str = "reflect") -> torch.Tensor:
    """Every image of a batch shifted by the same whole-pixel offset: output ``(y, x)`` is input
    ``(y + dy, x + dx)``, the uncovered border filled as in :func:`random_translate`."""
    p = max(abs(dy), abs(dx))
    if p == 0:
        return images
    h, w = images.shape[-2:]
    return _pad(images, p, padding)[..., p + dy: p + dy + h, p + dx: p + dx + w]
