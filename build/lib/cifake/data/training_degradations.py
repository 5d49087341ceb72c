"""Training-time degradations: what sharing does to an image (down-and-up scaling, blur, noise,
JPEG re-compression, re-rendering through a photo's size and back), applied at random to a share of
each training batch on its device, so a model learns evidence that survives them (``data.degrade``;
every family is off by default).

Each family has a probability ``p`` (per image) and a strength ``range``; the strength is drawn
once per batch and family, uniformly in the range, and applied to the chosen images. One draw per
batch keeps each family a single batched call; over an epoch's hundreds of batches the strengths
still cover the range. The families run in the order an image meets them online: resized, then
blurred or noisy, then re-saved as a JPEG, then re-rendered to 32x32 as a photo is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cifake.core.errors import ConfigError
from cifake.data.degradations import perturb

# family -> the strength's meaning (the perturbation of cifake.data.degradations of the same name).
FAMILIES: dict[str, str] = {
    "scale": "down-and-up factor in (0, 1] (torch, bilinear, antialiased)",
    "blur": "Gaussian sigma in pixels",
    "noise": "Gaussian std in grey levels (0..255)",
    "jpeg": "JPEG quality 1..100 (Pillow, 4:2:0)",
    "rerender": "enlargement >= 1 before the JPEG (quality in `quality`) and the shrink back (random kernels)",
}
# Settings a family takes beside p and range: its perturbation's keyword arguments.
OPTIONS: dict[str, tuple[str, ...]] = {"rerender": ("quality", "jpeg_share")}


def check_degradations(spec: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``data.degrade`` as plain dicts, every family named, ``p`` in [0, 1] and ``range`` a
    ``[low, high]`` pair; a :class:`ConfigError` naming the key otherwise."""
    checked: dict[str, dict[str, Any]] = {}
    for family, settings in dict(spec or {}).items():
        where = f"data.degrade.{family}"
        if family not in FAMILIES:
            raise ConfigError(f"{where}: unknown degradation; known: {', '.join(FAMILIES)}")
        settings = dict(settings or {})
        allowed = {"p", "range", *OPTIONS.get(family, ())}
        if set(settings) - allowed:
            raise ConfigError(f"{where} takes {', '.join(sorted(allowed))}, got {sorted(settings)}")
        p, span = settings.get("p", 0.0), settings.get("range")
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"{where}.p is a probability per image in [0, 1], got {p}")
        if span is None or len(span) != 2 or float(span[0]) > float(span[1]):
            raise ConfigError(f"{where}.range is [low, high] ({FAMILIES[family]}), got {span}")
        options = {key: settings[key] for key in OPTIONS.get(family, ()) if key in settings}
        checked[family] = {"p": float(p), "range": [float(span[0]), float(span[1])], **options}
        if p > 0:  # fail at construction on a strength the perturbation refuses, not mid-epoch
            probe = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
            for strength in span:
                perturb(family, probe, _strength(family, float(strength)), options=options)
    return checked


def _strength(family: str, value: float) -> float | int:
    return int(round(value)) if family == "jpeg" else value


def is_active(spec: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether any family degrades any image."""
    return any(settings["p"] > 0 for settings in spec.values())


def degrade(images: torch.Tensor, spec: Mapping[str, Mapping[str, Any]],
            generator: torch.Generator | None = None) -> torch.Tensor:
    """A uint8 batch ``(N, 3, H, W)`` with each family of ``spec`` (checked by
    :func:`check_degradations`) applied to a random share ``p`` of its images; ``images`` itself is
    not changed. The random draws come from ``generator`` (the global generator if None)."""
    out = images
    for family in FAMILIES:  # the order an image meets them online, not the config's
        settings = spec.get(family)
        if not settings or settings["p"] <= 0:
            continue
        draws = torch.rand(len(images) + 1, generator=generator)
        chosen = torch.nonzero(draws[:-1] < settings["p"]).flatten().to(images.device)
        if len(chosen) == 0:
            continue
        low, high = settings["range"]
        strength = _strength(family, low + (high - low) * float(draws[-1]))
        out = out.clone() if out is images else out
        options = {key: settings[key] for key in OPTIONS.get(family, ()) if key in settings}
        out[chosen] = perturb(family, out[chosen], strength, generator, options)
    return out
