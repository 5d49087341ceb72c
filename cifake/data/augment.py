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
    u = torch.rand(n, device=device, generator=generator)
    return (2.0 * u - 1.0) * max_degrees


def shear_grid(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid of the Keras shear: output pixel (x, y) reads input (x - sin(s) y, cos(s) y),
    both measured from the image centre, as ``ImageDataGenerator.apply_affine_transform`` does."""
    s = torch.deg2rad(degrees)
    theta = torch.zeros(len(s), 2, 3, device=s.device, dtype=torch.float32)
    theta[:, 0, 0] = 1.0
    theta[:, 0, 1] = -torch.sin(s) * (height / width)  # grid coordinates are normalised per axis
    theta[:, 1, 1] = torch.cos(s)
    return F.affine_grid(theta, [len(s), 1, height, width], align_corners=False)


def random_shear(images: torch.Tensor, max_degrees: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shear each image of a float batch by its own angle drawn in ±``max_degrees`` degrees.

    Bilinear sampling and edge replication match Keras' defaults (``order=1``,
    ``fill_mode='nearest'``). ``max_degrees=0`` returns the batch unchanged.
    """
    if max_degrees == 0:
        return images
    if not math.isfinite(max_degrees) or max_degrees < 0:
        raise ValueError(f"shear must be a finite angle in degrees >= 0, got {max_degrees}")
    n, _, h, w = images.shape
    grid = shear_grid(sample_shear_degrees(n, max_degrees, images.device, generator), h, w)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)


def random_hflip(images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability ``p`` (one draw per sample)."""
    if p <= 0:
        return images
    flip = torch.rand(len(images), device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
