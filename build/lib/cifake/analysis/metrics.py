"""Binary metrics of p(REAL) against labels, as ``metrics.json`` holds them (the evaluation report that writes
them is :mod:`cifake.analysis.report`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import binary_auroc, binary_confusion_matrix
from torchmetrics.wrappers import ClasswiseWrapper

from cifake.data.labels import CLASSES


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def binary_report(p_real: torch.Tensor, labels: torch.Tensor, threshold: float,
                  classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    """Accuracy, AUROC, per-class precision/recall/F1 and the confusion matrix.

    ``p_real`` is the probability of label 1 (``classes[1]``); an image is predicted as label 1
    when ``p_real > threshold`` (torchmetrics' convention, as in the training metrics).
    Precision, recall and F1 are given once with each class as the positive one.
    ``confusion_matrix[i][j]`` counts images of true class i predicted as class j.
    """
    if p_real.shape != labels.shape or p_real.ndim != 1:
        raise ValueError(f"p_real {tuple(p_real.shape)} and labels {tuple(labels.shape)} must be equal 1-D")
    labels = labels.long()
    cm = binary_confusion_matrix(p_real.float(), labels, threshold=threshold).tolist()
    n = len(labels)
    report: dict[str, Any] = {
        "accuracy": _ratio(cm[0][0] + cm[1][1], n),
        "auroc": float(binary_auroc(p_real.float(), labels)) if 0 < int(labels.sum()) < n else float("nan"),
        "precision": {}, "recall": {}, "f1": {},
        "confusion_matrix": cm,
        "n": n,
        "threshold": float(threshold),
    }
    for k, name in enumerate(classes):
        tp = cm[k][k]
        precision = _ratio(tp, cm[0][k] + cm[1][k])
        recall = _ratio(tp, sum(cm[k]))
        report["precision"][name] = precision
        report["recall"][name] = recall
        report["f1"][name] = _ratio(2 * precision * recall, precision + recall)
    return report


def report_scalars(report: dict[str, Any], prefix: str = "test/") -> dict[str, float]:
    """A report's numbers under the dashboard's names (``test/acc``, ``test/precision_fake``, ...)."""
    out = {f"{prefix}acc": report["accuracy"], f"{prefix}auroc": report["auroc"]}
    for metric in ("precision", "recall", "f1"):
        out.update({f"{prefix}{metric}_{name.lower()}": value for name, value in report[metric].items()})
    if "leak_free" in report:  # the same metrics without the test images that leak from train
        out.update(report_scalars(report["leak_free"], f"{prefix}leak_free/"))
    if "unsure" in report:  # answers outside the unsure band: how many, and how right
        out[f"{prefix}unsure/coverage"] = report["unsure"]["coverage"]
        if report["unsure"]["confident_accuracy"] is not None:  # None: every answer was UNSURE
            out[f"{prefix}unsure/confident_accuracy"] = report["unsure"]["confident_accuracy"]
    return out


def format_report(report: dict[str, Any], classes: tuple[str, ...] = CLASSES) -> str:
    """The report as a small text table."""
    cm = report["confusion_matrix"]
    width = max(len(c) for c in classes) + 2
    lines = [
        f"n={report['n']}  accuracy={report['accuracy']:.4f}  AUROC={report['auroc']:.4f}  "
        f"threshold on p({classes[1]})={report['threshold']:g}",
        f"{'positive':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}",
    ]
    for c in classes:
        lines.append(f"{c:<{width}}{report['precision'][c]:>10.4f}{report['recall'][c]:>10.4f}{report['f1'][c]:>10.4f}")
    lines.append("confusion (rows true, columns predicted): " +
                 "  ".join(f"{c}: {row}" for c, row in zip(classes, cm, strict=False)))
    return "\n".join(lines)


def classification_metrics(classes: tuple[str, ...] = CLASSES, num_thresholds: int = 200,
                           prefix: str = "") -> MetricCollection:
    """Accuracy, AUROC and precision/recall/F1 with each class as the positive one, as one
    :class:`MetricCollection` to clone per stage (keys such as ``val/precision_fake``).

    Feed it :func:`two_class_probs` of p(REAL) and integer labels. A prediction is the more
    probable class, i.e. REAL when p(REAL) > 0.5. AUROC is binned on ``num_thresholds``
    thresholds so its state stays the same size however many images an epoch sees.
    """
    if len(classes) != 2:
        raise ValueError(f"a binary classifier needs two classes, got {list(classes)}")
    labels = [c.lower() for c in classes]

    def per_class(metric: type, name: str) -> ClasswiseWrapper:
        return ClasswiseWrapper(metric(num_classes=2, average=None), labels=labels, prefix=f"{name}_")

    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=2, average="micro"),
            # With two classes, each class's one-vs-rest AUROC equals the binary AUROC of p(REAL).
            "auroc": MulticlassAUROC(num_classes=2, average="macro", thresholds=num_thresholds),
            "precision": per_class(MulticlassPrecision, "precision"),
            "recall": per_class(MulticlassRecall, "recall"),
            "f1": per_class(MulticlassF1Score, "f1"),
        },
        prefix=prefix,
        # Shared-state groups lose track of updates inside ClasswiseWrapper after a reset; the
        # states are tiny, so each metric keeps its own.
        compute_groups=False,
    )


def two_class_probs(p_real: torch.Tensor) -> torch.Tensor:
    """``(N,)`` p(REAL) -> ``(N, 2)`` class probabilities [p(FAKE), p(REAL)] (FAKE=0, REAL=1)."""
    p_real = p_real.float()
    return torch.stack([1.0 - p_real, p_real], dim=1)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's final metrics as flat scalars: the test report under ``metrics["test"]`` becomes
    ``test/...`` scalars (:func:`report_scalars`), the rest is kept as it is."""
    flat = {k: v for k, v in metrics.items() if k != "test"}
    if "test" in metrics:
        flat.update(report_scalars(metrics["test"]))
    return flat


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline of a ``metrics.json``, as a model file keeps it beside the weights: accuracy, AUROC,
    the leak-free accuracy and the four-way answers (:func:`cifake.analysis.calibration.answers_report`)."""
    return {"n": metrics.get("n"), "accuracy": metrics.get("accuracy"), "auroc": metrics.get("auroc"),
            "leak_free_accuracy": (metrics.get("leak_free") or {}).get("accuracy"),
            "answers": metrics.get("answers")}
