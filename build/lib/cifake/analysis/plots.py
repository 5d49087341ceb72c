"""Figures of a binary real-vs-fake classifier: ROC, precision-recall, confusion matrix, prediction
grids (and which examples they show) and the Grad-CAM figure of maps :mod:`cifake.models.gradcam` computed.

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
from matplotlib.ticker import LogLocator

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
    for k, (name, (precision, recall)) in enumerate(curves.items()):
        # Dashed after the first: two classes' curves of a good model lie on each other, and both stay visible.
        ax.plot(recall, precision, lw=2, ls="-" if k == 0 else "--",
                label=f"{name} positive: AP = {average_precision(precision, recall):.4f}")
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
           xlabel="predicted", ylabel="true")
    ax.set_title(f"{title}, n={cm.sum():,}\nshares of each true class (row)", fontsize=10)
    return fig


def _hwc(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` uint8 -> ``(H, W, 3)`` float in [0, 1] for display."""
    return np.transpose(image, (1, 2, 0)).astype(np.float32) / 255.0


def _caption(p_real: float, label: int, classes: Sequence[str], threshold: float) -> tuple[str, bool]:
    """Two lines for an image: the call against the truth, and p(FAKE); whether the call is right."""
    predicted = int(p_real > threshold)
    mark = "right" if predicted == label else "wrong"
    text = f"called {classes[predicted]}, is {classes[label]}\np({classes[0]}) = {1 - p_real:.2f} ({mark})"
    return text, predicted == label


def prediction_grid_figure(images: np.ndarray, p_real: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                           threshold: float = 0.5, ncols: int = 8, title: str = "Predictions") -> Figure:
    """Images ``(N, 3, H, W)`` uint8, each captioned with the predicted class against the truth and
    p(FAKE), green when right and red when wrong; at most ``ncols`` a row, no empty cells after the last."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(1.55 * ncols, 1.75 * nrows + 0.45), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.remove()  # the last row's unused cells: no blank axes
            continue
        ax.set_axis_off()
        ax.imshow(_hwc(images[k]), interpolation="nearest")
        text, right = _caption(float(p_real[k]), int(labels[k]), classes, threshold)
        ax.set_title(text, fontsize=7.5, color=CORRECT_COLOUR if right else WRONG_COLOUR)
    wrong = sum(int(float(p) > threshold) != int(y) for p, y in zip(p_real, labels, strict=True))
    fig.suptitle(f"{title}: {n - wrong} of {n} right (green: right, red: wrong)", fontsize=10)
    return fig


def pick_per_class(labels: np.ndarray, per_class: int, mask: np.ndarray | None = None,
                   num_classes: int = 2) -> np.ndarray:
    """Positions of the first ``per_class`` items of each class (optionally only where ``mask``),
    classes in label order; fewer where a class has fewer."""
    labels = np.asarray(labels)
    keep = np.ones(len(labels), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    chosen = [np.flatnonzero((labels == c) & keep)[:per_class] for c in range(num_classes)]
    return np.concatenate(chosen).astype(np.int64)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A heat map ``(H, W)`` in [0, 1] blended over a ``(3, H, W)`` uint8 image, as ``(H, W, 3)`` floats."""
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (1 - alpha) * _hwc(image) + alpha * heat


GRADCAM_HEADERS = ("image", "Grad-CAM for the\npredicted class")
SECTION_TITLES = {"fixed": "the same images every time", "correct": "right calls", "wrong": "wrong calls"}


def gradcam_figure(sections: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                   classes: Sequence[str], threshold: float = 0.5, pairs_per_row: int = 4,
                   title: str = "Grad-CAM for the predicted class") -> Figure:
    """Image | Grad-CAM pairs, one block per section: ``{name: (images, cams, p_real, labels)}`` with
    images ``(N, 3, H, W)`` uint8 and cams ``(N, H, W)`` in [0, 1]. Each pair stands under one caption
    (the call, the truth, p(FAKE); green right, red wrong) with the headers "image" and "Grad-CAM for the
    predicted class" over each block's first row; a section with no images (no wrong call) is one short
    line, not an empty block."""
    sizes = {name: len(section[0]) for name, section in sections.items()}
    pairs = max(1, min(pairs_per_row, max(sizes.values(), default=1)))
    rows = {name: -(-size // pairs) for name, size in sizes.items()}
    pair_w, row_h, header_h, line_h = 2.5, 1.55, 0.55, 0.4
    heights = [header_h + row_h * r if r else line_h for r in rows.values()]
    fig = Figure(figsize=(pair_w * pairs, sum(heights) + 0.5), layout="constrained")
    blocks = fig.subfigures(len(sections), 1, height_ratios=heights, squeeze=False)[:, 0] if sections else []
    for block, (name, (images, cams, p_real, labels)) in zip(blocks, sections.items(), strict=True):
        label = SECTION_TITLES.get(name, name)
        if len(images) == 0:
            block.text(0.01, 0.5, f"{label}: none among the images searched", fontsize=9, va="center",
                       color=CORRECT_COLOUR if name == "wrong" else "black")
            continue
        block.suptitle(f"{label} ({len(images)})", x=0.01, ha="left", fontsize=9, fontweight="bold")
        cells = block.subfigures(rows[name], pairs, squeeze=False)
        for k, cell in enumerate(cells.flat):
            if k >= len(images):
                continue  # the last row's unused cells stay empty subfigures: nothing drawn
            text, right = _caption(float(p_real[k]), int(labels[k]), classes, threshold)
            cell.suptitle(text, fontsize=7.5, color=CORRECT_COLOUR if right else WRONG_COLOUR)
            image_ax, cam_ax = cell.subplots(1, 2)
            image_ax.imshow(_hwc(images[k]), interpolation="nearest")
            cam_ax.imshow(overlay(images[k], cams[k]), interpolation="bilinear")
            for ax, header in zip((image_ax, cam_ax), GRADCAM_HEADERS, strict=True):
                ax.set_axis_off()
                if k < pairs:  # the block's first row
                    ax.set_title(header, fontsize=7, color="dimgrey")
    fig.suptitle(title, fontsize=10)
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
    ax.margins(y=0.12)  # room for the counts over the tallest bars
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", frameon=False)
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
            # Outlines, not translucent fills: where the classes overlap no third colour appears.
            ax.hist(column[labels == label], bins=edges, density=True, histtype="step", lw=1.3, label=name)
        ax.set_title(names[k], fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside upper right", fontsize=8, ncols=len(classes),
               frameon=False)
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
    # 0.7 in a point: a name such as pil_scale under each tick stays clear of the next one.
    fig = Figure(figsize=(max(5.0, 2.6 + 0.7 * max(cursor, 1)), 2.6 * len(metrics) + 0.6), layout="constrained")
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
    # Beside the panels, not in them: a strong perturbation drops a line to where the legend would sit.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False)
    axes[-1].set_xticks(ticks, labels, fontsize=8)
    fig.suptitle(title)
    return fig


ACCURACY_COLOUR = "#3d6fb4"
FEW_COLOUR = "#b9cde8"  # the accuracy colour, faded: a bin too small for its accuracy to mean much
GAP_COLOUR = WRONG_COLOUR
# A bin of fewer predictions than this is drawn faded and dotted: its accuracy's standard error can
# reach 0.09 (sqrt(0.25 / 30)), wider than any gap worth reading. A drawing convention, like the colours.
FEW_PREDICTIONS = 30
LEGEND_ORDER = ("accuracy of the bin", "a bin of fewer", "mean confidence", "gap", "calibrated", "")


def reliability_figure(edges: np.ndarray, count: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray,
                       ece: float | None = None, log_counts: bool = True,
                       title: str = "Reliability of the predicted class", before: Any = None) -> Figure:
    """Reliability diagram of per-bin mean ``confidence`` and ``accuracy`` (NaN for empty bins) over
    confidence bins ``edges``, as :func:`cifake.analysis.calibration.reliability_bins` gives them, in the
    field's form (Guo et al. 2017): a bar per bin as tall as its accuracy, its mean confidence as a line
    across it, and the gap between the two outlined, so the bar keeps its colour and the gap the
    legend's (a bar above the diagonal: the model is underconfident there; below: overconfident).
    Bins of fewer than :data:`FEW_PREDICTIONS` predictions are faded and dotted; the predictions per bin
    are under it, the legend outside the axes. ``before``: the bins of the same predictions before a
    temperature was applied (anything with ``confidence``, ``accuracy``, ``count`` and ``ece``), drawn
    as a line with its ECE."""
    edges, count = np.asarray(edges, dtype=np.float64), np.asarray(count)
    confidence, accuracy = np.asarray(confidence, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    left, widths = edges[:-1], np.diff(edges)
    filled = count > 0
    few = filled & (count < FEW_PREDICTIONS)
    enough = filled & ~few
    fig = Figure(figsize=(5.0, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(left[enough], accuracy[enough], widths[enough], align="edge", color=ACCURACY_COLOUR, edgecolor="white",
            lw=0.5, label="accuracy of the bin (bar height)", zorder=2)
    if few.any():
        top.bar(left[few], accuracy[few], widths[few], align="edge", color=FEW_COLOUR, edgecolor=ACCURACY_COLOUR,
                hatch="..", lw=0.5, label=f"a bin of fewer than {FEW_PREDICTIONS} predictions", zorder=2)
    # The gap is an outline without fill: inside a bar (underconfident) it leaves the bar's colour as it is.
    inset = widths[filled] * 0.12
    top.bar(left[filled] + inset, np.abs(confidence - accuracy)[filled], widths[filled] - 2 * inset,
            bottom=np.minimum(accuracy, confidence)[filled], align="edge", fill=False, edgecolor=GAP_COLOUR, lw=1.2,
            label="gap to the mean confidence", zorder=3)
    top.hlines(confidence[filled], left[filled], left[filled] + widths[filled], colors=GAP_COLOUR, lw=2.2,
               label="mean confidence of the bin", zorder=4)
    top.plot(edges[[0, -1]], edges[[0, -1]], ls="--", c="grey", lw=1,
             label="calibrated: accuracy = confidence", zorder=2.5)  # over the bars: the line to judge them by
    if before is not None:
        kept = np.asarray(before.count) > 0
        top.plot(np.asarray(before.confidence)[kept], np.asarray(before.accuracy)[kept], "o-", c="tab:orange",
                 ms=3, lw=1, label=f"accuracy before the temperature (ECE {before.ece:.4f})", zorder=5)
    shown = [accuracy[filled], confidence[filled], [edges[0]]]
    if before is not None:
        shown.append(np.asarray(before.accuracy, dtype=np.float64)[np.asarray(before.count) > 0])
    low = np.nanmin(np.concatenate(shown))
    top.set(xlim=(edges[0], edges[-1]), ylim=(min(edges[0], np.floor(low * 10) / 10), 1.01),
            ylabel="accuracy of the predicted class")
    top.grid(alpha=0.3, zorder=0)
    top.set_axisbelow(True)
    fig.suptitle(title if ece is None else f"{title}\nECE = {ece:.4f} (n={int(count.sum()):,})")
    handles = dict(zip(*reversed(top.get_legend_handles_labels()), strict=True))  # label -> artist
    order = sorted(handles, key=lambda label: [label.startswith(p) for p in LEGEND_ORDER].index(True))
    fig.legend([handles[k] for k in order], order, loc="outside lower center", ncols=2, fontsize=7.5, frameon=False)
    bottom.bar(left[enough], count[enough], widths[enough], align="edge", color="grey", edgecolor="black", lw=0.5)
    bottom.bar(left[few], count[few], widths[few], align="edge", color="#dddddd", edgecolor="black", hatch="..",
               lw=0.5)
    if log_counts and filled.any():
        bottom.set_yscale("log")
        # 1, 2 and 5 of each decade where the counts span little (they still get numbers on the axis),
        # the decades alone where they span much (the labels would run into each other).
        span = count[filled].max() / count[filled].min()
        bottom.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if span < 100 else (1.0,)))
        bottom.yaxis.set_major_formatter("{x:,.0f}")  # plain counts, not 6x10^2
        bottom.yaxis.set_minor_formatter("")
    bottom.set(xlabel="confidence = max(p(REAL), p(FAKE))", ylabel="predictions")
    return fig
