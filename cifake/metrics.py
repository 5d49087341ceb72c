"""The evaluation report: binary metrics of p(REAL) against labels, as ``metrics.json`` holds them."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import binary_auroc, binary_confusion_matrix


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def binary_report(p_real: torch.Tensor, labels: torch.Tensor, threshold: float,
                  classes: tuple[str, ...] = ("FAKE", "REAL")) -> dict[str, Any]:
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


def format_report(report: dict[str, Any], classes: tuple[str, ...] = ("FAKE", "REAL")) -> str:
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
