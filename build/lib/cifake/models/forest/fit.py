"""Fitting the random-forest baseline (``python train.py model=rf``): the same data split,
metrics, figures and TensorBoard layout as a network's run, so the two compare in one dashboard.
The forest reads image statistics from the decoded cache instead of pixels; it is evaluated, like
any model, by :mod:`cifake.evaluation.workflow`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from sklearn.metrics import log_loss

from cifake.analysis.metrics import binary_report, report_scalars
from cifake.analysis.plots import (
    class_balance_figure,
    correlation_figure,
    feature_distributions_figure,
    importance_figure,
)
from cifake.analysis.report import Predictions, ReportSettings, curve_figures, example_figures, write_figures
from cifake.analysis.tensorboard_figures import log_figure, tensorboard_writers
from cifake.data.cache import DecodedSplit
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.training_degradations import is_active
from cifake.models.forest import ForestClassifier
from cifake.models.forest.features import cached_features

log = logging.getLogger(__name__)

FOREST_FILE = "forest.skops"


def split_features(model: ForestClassifier, split: DecodedSplit) -> np.ndarray:
    """The model's feature set for every image of ``split`` (computed once, then cached)."""
    start = time.perf_counter()
    features = cached_features(split, model.feature_set, **model.feature_params)
    log.info("%s features of %d %s images ready in %.1f s", model.feature_set, len(features),
             Path(split.cache_dir).name, time.perf_counter() - start)
    return features


def stage_scalars(p_real: np.ndarray, labels: np.ndarray, threshold: float, classes: tuple[str, ...],
                  stage: str) -> tuple[dict[str, Any], dict[str, float]]:
    """The report of one stage and the scalars a network run logs for it, under the same names:
    loss (binary cross-entropy of p(REAL)), acc, auroc, per-class precision/recall/F1."""
    report = binary_report(torch.from_numpy(p_real), torch.from_numpy(labels), threshold, classes)
    scalars = report_scalars(report, prefix=f"{stage}/")
    scalars[f"{stage}/loss"] = float(log_loss(labels, np.clip(p_real, 1e-7, 1 - 1e-7), labels=[0, 1]))
    return report, scalars


def eda_figures(features: np.ndarray, labels: np.ndarray, model: ForestClassifier,
                counts: dict[str, dict[str, int]], title: str) -> dict[str, Figure]:
    """The report's exploratory figures of a feature matrix, and the forest's importances."""
    names, classes = model.feature_names, model.classes
    return {
        "class_balance": class_balance_figure(counts),
        "feature_correlation": correlation_figure(features, names, f"Feature correlation ({title})"),
        "feature_distributions": feature_distributions_figure(features, labels, names, classes,
                                                              title=f"Feature distributions per class ({title})"),
        "feature_importances": importance_figure(model.feature_importances,
                                                 f"Random-forest importances ({model.feature_set} features)"),
    }


def _counts(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    return dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist(), strict=True))


def unused_augmentation(datamodule: CIFAKEDataModule) -> list[str]:
    """The training augmentation settings that are on (``data.shear=0.2``, ...): a forest never sees them."""
    hp = datamodule.hparams
    unused = [f"data.{key}={hp[key]}" for key in ("shear", "translate", "hflip") if hp[key]]
    if hp.crop is not None:
        unused.append(f"data.crop={hp.crop}")
    if is_active(datamodule.degradations):
        unused.append("data.degrade")
    return unused


def fit_forest(cfg: DictConfig, datamodule: CIFAKEDataModule, model: ForestClassifier,
               loggers: list) -> tuple[dict[str, Any], Path]:
    """Fit the forest on the train split's features, score train and validation like a network
    run, log the same dashboards to ``loggers`` and save ``checkpoints/forest.skops``. Returns the
    train and validation metrics and the saved file."""
    out = Path(cfg.paths.output_dir)
    writers = tensorboard_writers(loggers)
    datamodule.setup("fit")
    train_set, val_set = datamodule.train_set, datamodule.val_set
    features = split_features(model, train_set.split)
    x_train, y_train = features[train_set.indices], train_set.split.labels[train_set.indices]
    x_val, y_val = features[val_set.indices], val_set.split.labels[val_set.indices]

    unused = unused_augmentation(datamodule)
    if unused:
        log.info("The forest fits on the images as decoded: %s augment a network's training only", ", ".join(unused))
    start = time.perf_counter()
    log.info("Fitting a random forest on %d images x %d features%s", len(x_train), x_train.shape[1],
             f" (grid search over {model.grid})" if model.grid else "")
    model.fit(x_train, y_train)
    log.info("Fitted in %.1f s%s", time.perf_counter() - start,
             f"; best grid parameters {model.best_params}" if model.best_params else "")
    path = model.save(out / "checkpoints" / FOREST_FILE)

    classes, threshold = model.classes, cfg.threshold
    _, train_scalars = stage_scalars(model.predict_proba_real(x_train), y_train, threshold, classes, "train")
    p_val = model.predict_proba_real(x_val)
    val_report, val_scalars = stage_scalars(p_val, y_val, threshold, classes, "val")
    metrics: dict[str, Any] = {**train_scalars, **val_scalars}
    for lg in loggers:
        lg.log_metrics(metrics, step=0)
    log.info("Forest: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith(("/acc", "/auroc"))))

    val_pred = Predictions.of_rows(val_set.split, val_set.indices, p_val)
    for name, fig in {**curve_figures(val_pred, val_report["confusion_matrix"], classes, "validation"),
                      **example_figures(val_pred, classes, threshold, ReportSettings.from_config(cfg.report),
                                       "validation")}.items():
        log_figure(writers, f"val/{name}", fig, step=0)
    counts = {"train": _counts(y_train, classes), "validation": _counts(y_val, classes)}
    eda = eda_figures(x_train, y_train, model, counts, "train")
    write_figures({f"train_{k}": v for k, v in eda.items()}, out, writers, step=0, prefix="eda")
    return metrics, path
