"""Figures of a binary real-vs-fake classifier: ROC, precision-recall, confusion matrix, prediction
grids and Grad-CAM overlays.

Every function takes arrays that were already computed (curves, counts, probabilities) and returns
a matplotlib :class:`~matplotlib.figure.Figure`; nothing here runs a model. Figures are built with
the object API, not pyplot, so no global state or display backend is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

CORRECT_COLOUR = "#1a7f37"
WRONG_COLOUR = "#cf222e"


@dataclass(frozen=True)
class Curve:
    """One curve: ``x`` and ``y`` in plotting order and a summary number for the legend."""

    x: np.ndarray
    y: np.ndarray
    summary: float


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule (x in either order)."""
    order = np.argsort(x, kind="stable")
    return float(np.trapezoid(np.asarray(y)[order], np.asarray(x)[order]))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Step-wise area under a precision-recall curve given with recall decreasing (torchmetrics'
    order): sum over steps of the recall gained times the precision reached."""
    precision, recall = np.asarray(precision), np.asarray(recall)
    return float(-np.sum((recall[1:] - recall[:-1]) * precision[:-1]))


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, positive: str, title: str = "ROC") -> Figure:
    """The ROC curve of ``positive`` against the other class, with its AUC in the legend."""
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc(fpr, tpr):.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=f"false positive rate (other class called {positive})",
           ylabel=f"true positive rate (recall of {positive})", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "Precision-recall") -> Figure:
    """Precision-recall curves, one per positive class: ``{class: (precision, recall)}`` with recall
    decreasing, as torchmetrics returns them; average precision in the legend."""
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, (precision, recall) in curves.items():
        ax.plot(recall, precision, lw=2, label=f"{name} positive: AP = {average_precision(precision, recall):.4f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def confusion_figure(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Counts with the share of each true class (row) under them; rows true, columns predicted."""
    cm = np.asarray(cm, dtype=np.int64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(4.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]:,}\n{rates[i, j]:.1%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=11)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=f"{title} (n={cm.sum():,})")
    return fig


def _hwc(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` uint8 -> ``(H, W, 3)`` float in [0, 1] for display."""
    return np.transpose(image, (1, 2, 0)).astype(np.float32) / 255.0


def _caption(p_real: float, label: int, classes: Sequence[str], threshold: float) -> tuple[str, bool]:
    predicted = int(p_real > threshold)
    text = f"pred {classes[predicted]}\np({classes[0]})={1 - p_real:.2f}\ntrue {classes[label]}"
    return text, predicted == label


def prediction_grid_figure(images: np.ndarray, p_real: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                           threshold: float = 0.5, ncols: int = 8, title: str = "Predictions") -> Figure:
    """Images ``(N, 3, H, W)`` uint8, each titled with the predicted class, p(FAKE) and the truth,
    green when right and red when wrong."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(1.5 * ncols, 1.95 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(_hwc(images[k]), interpolation="nearest")
        text, right = _caption(float(p_real[k]), int(labels[k]), classes, threshold)
        ax.set_title(text, fontsize=8, color=CORRECT_COLOUR if right else WRONG_COLOUR)
    fig.suptitle(f"{title} (green: right, red: wrong)")
    return fig


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A heat map ``(H, W)`` in [0, 1] blended over a ``(3, H, W)`` uint8 image, as ``(H, W, 3)`` floats."""
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (1 - alpha) * _hwc(image) + alpha * heat


def gradcam_figure(sections: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                   classes: Sequence[str], threshold: float = 0.5, pairs_per_row: int = 4,
                   title: str = "Grad-CAM for the predicted class") -> Figure:
    """Image | overlay pairs, one block of rows per section: ``{name: (images, cams, p_real, labels)}``
    with images ``(N, 3, H, W)`` uint8 and cams ``(N, H, W)`` in [0, 1]."""
    layout: list[tuple[str, int]] = []  # (section, first image index) per row
    for name, (images, *_rest) in sections.items():
        layout += [(name, i) for i in range(0, max(len(images), 1), pairs_per_row)]
    ncols = 2 * pairs_per_row
    fig = Figure(figsize=(1.4 * ncols, 2.0 * len(layout)), layout="constrained")
    axes = fig.subplots(len(layout), ncols, squeeze=False)
    for (name, start), row in zip(layout, axes, strict=True):
        images, cams, p_real, labels = sections[name]
        for ax in row:
            ax.axis("off")
        if len(images) == 0:
            row[0].set_title(f"{name}: none", fontsize=9, loc="left")
            continue
        for j, k in enumerate(range(start, min(start + pairs_per_row, len(images)))):
            text, right = _caption(float(p_real[k]), int(labels[k]), classes, threshold)
            colour = CORRECT_COLOUR if right else WRONG_COLOUR
            row[2 * j].imshow(_hwc(images[k]), interpolation="nearest")
            row[2 * j].set_title(text, fontsize=7, color=colour)
            row[2 * j + 1].imshow(overlay(images[k], cams[k]), interpolation="bilinear")
            row[2 * j + 1].set_title(name if k == start and j == 0 else "", fontsize=8, loc="left")
    fig.suptitle(title)
    return fig


def class_balance_figure(counts: dict[str, dict[str, int]], title: str = "Images per class") -> Figure:
    """Bars of images per class for each set: ``{set: {class: count}}``."""
    sets = list(counts)
    classes = sorted({c for per in counts.values() for c in per})
    fig = Figure(figsize=(1.6 + 1.4 * len(sets), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(classes), 1)
    for k, name in enumerate(classes):
        xs = np.arange(len(sets)) + (k - (len(classes) - 1) / 2) * width
        values = [counts[s].get(name, 0) for s in sets]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=8)
    ax.set(xticks=range(len(sets)), xticklabels=sets, ylabel="images", title=title)
    ax.legend()
    return fig


def correlation_figure(features: np.ndarray, names: Sequence[str], title: str = "Feature correlation") -> Figure:
    """Pearson correlation between feature columns (constant columns show as 0)."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    scale = np.sqrt((x ** 2).sum(axis=0))
    corr = (x.T @ x) / np.maximum(np.outer(scale, scale), 1e-12)
    size = 2.5 + 0.32 * len(names)
    fig = Figure(figsize=(size + 1.8, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ticks = range(len(names))
    ax.set(xticks=ticks, yticks=ticks, title=title)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if len(names) <= 12:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def feature_distributions_figure(features: np.ndarray, labels: np.ndarray, names: Sequence[str],
                                 classes: Sequence[str], bins: int = 40, ncols: int = 4,
                                 title: str = "Feature distributions per class") -> Figure:
    """One histogram per feature, the classes overlaid (densities, common bins)."""
    nrows = max(1, -(-len(names) // ncols))
    fig = Figure(figsize=(3.0 * ncols, 2.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.axis("off")
            continue
        column = features[:, k]
        edges = np.histogram_bin_edges(column[np.isfinite(column)], bins=bins)
        for label, name in enumerate(classes):
            ax.hist(column[labels == label], bins=edges, density=True, alpha=0.5, label=name)
        ax.set_title(names[k], fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def importance_figure(importances: dict[str, float], title: str = "Feature importances") -> Figure:
    """Horizontal bars, most important on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(5.5, 1.2 + 0.25 * len(items)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel="mean decrease in impurity", title=title)
    ax.tick_params(axis="y", labelsize=8)
    return fig


def robustness_figure(rows: Sequence[dict], metrics: Sequence[str] = ("accuracy", "auroc"), baseline: str = "none",
                      title: str = "Robustness to perturbations") -> Figure:
    """One panel per metric: a line of points per perturbation across its strengths (in the order
    given), with the unperturbed ``baseline`` row as a dashed line; families the model never
    trained on (``trained == "no"``) are dotted and marked held out. ``rows`` are
    :func:`cifake.analysis.robustness.robustness_table`'s ``{perturbation, strength, <metric>, ...}``."""
    base = next((r for r in rows if r["perturbation"] == baseline), None)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["perturbation"] != baseline:
            groups.setdefault(r["perturbation"], []).append(r)
    xs: dict[str, np.ndarray] = {}
    ticks, labels, cursor = [], [], 0
    for name, members in groups.items():
        xs[name] = cursor + np.arange(len(members))
        ticks += list(xs[name])
        labels += [name if r["strength"] is None else f"{name}\n{r['strength']:g}" for r in members]
        cursor += len(members) + 1  # a gap between perturbations
    fig = Figure(figsize=(max(5.0, 1.6 + 0.55 * max(cursor, 1)), 2.6 * len(metrics) + 0.6), layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        if base is not None:
            ax.axhline(base[metric], ls="--", c="grey", lw=1, label=f"{baseline}: {base[metric]:.4f}")
        for k, (name, members) in enumerate(groups.items()):
            values = [r[metric] for r in members]
            held_out = members[0].get("trained") == "no"  # a family the model never trained on
            ax.plot(xs[name], values, marker="o", c=f"C{k % 10}", ls=":" if held_out else "-",
                    label=f"{name} (held out)" if held_out else name)
            for x, v in zip(xs[name], values, strict=True):
                ax.annotate(f"{v:.3f}", (x, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ax.set(ylabel=metric)
        ax.grid(alpha=0.3)
        ax.margins(y=0.2)
    axes[0].legend(fontsize=7, loc="lower left", ncols=2)
    axes[-1].set_xticks(ticks, labels, fontsize=8)
    fig.suptitle(title)
    return fig


def reliability_figure(edges: np.ndarray, count: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray,
                       ece: float | None = None, log_counts: bool = True,
                       title: str = "Reliability of the predicted class", before: Any = None) -> Figure:
    """Reliability diagram of per-bin mean ``confidence`` and ``accuracy`` (NaN for empty bins)
    over confidence bins ``edges``, as :func:`cifake.analysis.calibration.reliability_bins` gives them:
    the accuracy of each bin as a bar, the gap to its mean confidence shaded, the diagonal of a
    calibrated model, and the number of predictions per bin under it. ``before``: the bins of the
    same predictions before a temperature was applied (anything with ``confidence``, ``accuracy``,
    ``count`` and ``ece``), drawn as a line with its ECE."""
    edges, count = np.asarray(edges, dtype=np.float64), np.asarray(count)
    confidence, accuracy = np.asarray(confidence, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    widths = np.diff(edges)
    filled = count > 0
    fig = Figure(figsize=(4.5, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(edges[:-1][filled], accuracy[filled], widths[filled], align="edge", edgecolor="black", lw=0.5,
            label="accuracy")
    gap_low = np.minimum(accuracy, confidence)[filled]
    top.bar(edges[:-1][filled], np.abs(confidence - accuracy)[filled], widths[filled], bottom=gap_low,
            align="edge", color=WRONG_COLOUR, alpha=0.3, hatch="//", label="gap to mean confidence")
    top.plot(edges[[0, -1]], edges[[0, -1]], ls="--", c="grey", lw=1, label="calibrated")
    top.plot(confidence[filled], accuracy[filled], "k.", ms=4)
    if before is not None:
        kept = np.asarray(before.count) > 0
        top.plot(np.asarray(before.confidence)[kept], np.asarray(before.accuracy)[kept], "o-", c="tab:orange",
                 ms=3, lw=1, label=f"before the temperature (ECE {before.ece:.4f})")
    top.set(xlim=(edges[0], edges[-1]), ylim=(0, 1.01), ylabel="accuracy of the predicted class",
            title=title if ece is None else f"{title}\nECE = {ece:.4f} (n={int(count.sum()):,})")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(edges[:-1][filled], count[filled], widths[filled], align="edge", color="grey", edgecolor="black",
               lw=0.5)
    if log_counts and filled.any():
        bottom.set_yscale("log")
        bottom.yaxis.set_major_formatter("{x:,.0f}")  # plain counts, not 6x10^2
        bottom.yaxis.set_minor_formatter("")
    bottom.set(xlabel="confidence = max(p(REAL), p(FAKE))", ylabel="predictions")
    return fig
