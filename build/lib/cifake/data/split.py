"""The seeded, stratified train/validation split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from cifake.core.errors import ConfigError


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(train_indices, val_indices)`` holding ``val_fraction`` of each class out.

    The same labels, fraction and seed always give the same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction must be strictly between 0 and 1, got {val_fraction}; "
            "to validate on the test split instead, set data.validate_on=test"
        )
    indices = np.arange(len(labels))
    try:
        train, val = train_test_split(
            indices, test_size=val_fraction, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError as err:  # too few images of a class for the requested fraction
        raise ConfigError(f"cannot split {len(labels)} images with data.val_fraction={val_fraction}: {err}") from err
    return np.sort(train), np.sort(val)
