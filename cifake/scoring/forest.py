"""Scoring with the random-forest baseline saved by ``train.py model=rf`` (``.skops``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifake.data.features import extract_features
from cifake.models.forest import ForestClassifier
from cifake.scoring.scorer import Scorer

# What a forest computes in, fitted or scoring: scikit-learn's trees compare float32 features with float32
# thresholds, on the CPU (scoring.precision does not change it).
FOREST_COMPUTED = {"precision": "32-true", "device": "cpu"}


def forest_score(model: ForestClassifier) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> p(REAL): the forest's features of the images, then its probabilities."""

    def score(images: np.ndarray) -> np.ndarray:
        features = extract_features(np.asarray(images), model.feature_set, **model.feature_params)
        return model.predict_proba_real(features).astype(np.float32)

    return score


def forest_scorer(path: Path) -> Scorer:
    """A saved forest (read by skops, which builds only trusted types: see
    :meth:`ForestClassifier.load`). It records the resampling its training images were resized with."""
    model = ForestClassifier.load(path)
    return Scorer(kind="forest", source=str(path), score=forest_score(model), classes=tuple(model.classes),
                  image_size=model.image_size, resample=model.resample, model=model, **FOREST_COMPUTED)
