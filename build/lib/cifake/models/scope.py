"""How unlike the training data an image is: the class-conditional Mahalanobis distance of a
network's penultimate features (Lee et al., NeurIPS 2018), fitted on training images and kept with
the weights, so that every scorer can answer "out of scope" instead of a verdict it has no ground
for.

The score is ``sqrt(min_c (f - mu_c)^T P (f - mu_c) / D)`` for features ``f`` of dimension ``D``,
class means ``mu_c`` and one shared precision matrix ``P`` (the Ledoit-Wolf shrunk inverse of the
within-class covariance): about 1 for a typical training image whatever ``D``, growing as an image
leaves what the network was trained on. Dividing by ``D`` keeps it of order 1, so float32 exports
agree to about 1e-6.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

METHODS = ("mahalanobis",)
# What a model file records beside the tensors (checkpoint entry, config.json, the ONNX contract).
RECORD_KEYS = ("method", "threshold", "validation_flagged", "fit_images")


class Mahalanobis(nn.Module):
    """Penultimate features ``(N, D)`` -> out-of-scope score ``(N,)`` (see the module's docstring)."""

    def __init__(self, means: torch.Tensor, precision: torch.Tensor) -> None:
        super().__init__()
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"means (classes, D) and precision (D, D) expected, got {tuple(means.shape)} and "
                             f"{tuple(precision.shape)}")
        self.register_buffer("means", means.float().contiguous())
        self.register_buffer("precision", precision.float().contiguous())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.float()[:, None, :] - self.means[None]  # (N, C, D)
        squared = ((diff @ self.precision) * diff).sum(-1)  # (N, C)
        return torch.sqrt(squared.min(dim=1).values.clamp_min(0) / self.means.shape[1])


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
    """Class means and the Ledoit-Wolf shrunk shared precision of ``features`` ``(N, D)`` with
    integer ``labels``: shrinkage keeps the inverse stable where ``D`` is large against ``N``."""
    from sklearn.covariance import LedoitWolf  # scikit-learn only where a score is fitted

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(features) != len(labels) or len(features) <= features.shape[1] // 8 or len(classes) < 1:
        raise ValueError(f"{len(features)} feature rows of dimension {features.shape[1]} are too few to fit "
                         "a Mahalanobis score")
    means = np.stack([features[labels == c].mean(0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return Mahalanobis(torch.from_numpy(means), torch.from_numpy((precision + precision.T) / 2))


def fit_rows(indices: np.ndarray, images: int) -> np.ndarray:
    """The rows a score is fitted on: ``images`` of ``indices`` (all, if fewer), a sample seeded apart
    from the run's seed, so the same split always gives the same sample; sorted."""
    indices = np.asarray(indices)
    return np.sort(np.random.default_rng(0).choice(indices, min(int(images), len(indices)), replace=False))


def threshold_for(scores: np.ndarray, flagged: float) -> float:
    """The score above which a share ``flagged`` of ``scores`` lies (validation images: the share of
    in-scope images the answer gives up)."""
    if not 0.0 < flagged < 1.0:
        raise ValueError(f"the share of validation images flagged must lie in (0, 1), got {flagged}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - flagged, method="higher"))


def scope_record(head: Mahalanobis, threshold: float, flagged: float, fit_images: int) -> dict[str, Any]:
    """The out-of-scope score as a checkpoint stores it: tensors and its settings."""
    return {"method": "mahalanobis", "means": head.means.detach().cpu(), "precision": head.precision.detach().cpu(),
            "threshold": float(threshold), "validation_flagged": float(flagged), "fit_images": int(fit_images)}


def scope_from_record(record: Mapping[str, Any]) -> tuple[Mahalanobis, dict[str, Any]]:
    """The score's module and its settings (``RECORD_KEYS``) from :func:`scope_record`'s form; a
    ``ValueError`` saying what is wrong with a record this version cannot read."""
    if record.get("method") not in METHODS:
        raise ValueError(f"an out-of-scope score of method {record.get('method')!r}; this version knows {METHODS}")
    try:
        head = Mahalanobis(torch.as_tensor(record["means"]), torch.as_tensor(record["precision"]))
        settings = {key: record[key] for key in RECORD_KEYS}
        settings["threshold"] = float(settings["threshold"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"the out-of-scope record lacks {err}") from None
    return head, settings


class ScopedNetwork(nn.Module):
    """``net`` with its score: float images in [0, 1] -> (p(REAL), out-of-scope score), for exports
    that carry both in one graph."""

    def __init__(self, net: nn.Module, head: Mahalanobis) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.embed(images)
        return torch.sigmoid(self.net.head[-1](features).squeeze(1)), self.head(features)
