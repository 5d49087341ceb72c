"""The figures read as they should: the reliability diagram's bars, gaps and legend read back from its
artists for an overconfident and an underconfident model, and the Grad-CAM and prediction grids without
blank cells or empty blocks (cifake/analysis/plots.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from cifake.analysis.plots import (
    FEW_PREDICTIONS,
    GRADCAM_HEADERS,
    gradcam_figure,
    prediction_grid_figure,
    reliability_figure,
)

EDGES = np.linspace(0.5, 1.0, 6)
COUNT = np.array([0, 12, 300, 800, 2000])  # an empty bin, a bin of few predictions, three full ones
CONFIDENCE = np.array([np.nan, 0.64, 0.74, 0.85, 0.96])


def drawn(fig: Figure) -> Figure:
    fig.savefig(io.BytesIO(), format="png", dpi=60)  # lays it out, as a reader gets it
    return fig


def container(ax, prefix: str):
    found = [c for c in ax.containers if c.get_label().startswith(prefix)]
    assert len(found) == 1, [c.get_label() for c in ax.containers]
    return found[0]


def legend_handle(fig: Figure, prefix: str):
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    return legend.legend_handles[next(i for i, t in enumerate(texts) if t.startswith(prefix))]


@pytest.mark.parametrize("shift", [-0.12, +0.12], ids=["overconfident", "underconfident"])
def test_reliability_bars_are_accuracies_and_gaps_span_to_the_confidence(shift: float) -> None:
    accuracy = np.clip(CONFIDENCE + shift, 0, 1)
    fig = drawn(reliability_figure(EDGES, COUNT, CONFIDENCE, accuracy, ece=0.1))
    top = fig.axes[0]
    full, few = container(top, "accuracy of the bin"), container(top, "a bin of fewer")
    # Bar heights are the bins' accuracies; the empty bin has no bar, the small one is drawn apart.
    assert [round(p.get_height(), 6) for p in full] == [round(a, 6) for a in accuracy[2:]]
    assert [round(p.get_height(), 6) for p in few] == [round(accuracy[1], 6)]
    assert [round(p.get_x(), 6) for p in few] == [round(EDGES[1], 6)] and COUNT[1] < FEW_PREDICTIONS
    # Each gap patch spans from the accuracy to the mean confidence, whichever is higher.
    gaps = container(top, "gap")
    spans = [(round(p.get_y(), 6), round(p.get_y() + p.get_height(), 6)) for p in gaps]
    low, high = np.minimum(accuracy, CONFIDENCE)[1:], np.maximum(accuracy, CONFIDENCE)[1:]
    assert spans == [(round(a, 6), round(b, 6)) for a, b in zip(low, high, strict=True)]
    if shift < 0:  # overconfident: the gap stands on the bar
        assert all(p.get_y() == pytest.approx(a) for p, a in zip(gaps, accuracy[1:], strict=True))
    else:  # underconfident: the gap lies inside the bar, which reaches the accuracy
        assert all(p.get_y() + p.get_height() == pytest.approx(a) for p, a in zip(gaps, accuracy[1:], strict=True))
    # The gap is an outline in the legend's colour, with no fill: the bar keeps its own colour under it.
    swatch = legend_handle(fig, "gap")
    for p in gaps:
        assert to_rgba(p.get_facecolor())[3] == 0
        assert to_rgba(p.get_edgecolor()) == to_rgba(swatch.get_edgecolor())
    bar_colour = to_rgba(legend_handle(fig, "accuracy of the bin").get_facecolor())
    assert {to_rgba(p.get_facecolor()) for p in full} == {bar_colour}
    assert to_rgba(swatch.get_edgecolor()) != bar_colour
    # The mean confidence is drawn across each bin, at its height.
    line = next(c for c in top.collections if c.get_label().startswith("mean confidence"))
    assert [round(float(seg[0][1]), 6) for seg in line.get_segments()] == [round(c, 6) for c in CONFIDENCE[1:]]


def test_reliability_legend_is_outside_the_data() -> None:
    fig = drawn(reliability_figure(EDGES, COUNT, CONFIDENCE, CONFIDENCE - 0.1, ece=0.1))
    assert not fig.axes[0].get_legend()  # not in the axes, over the bars
    box = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), "the legend covers an axis"
    assert "ECE = 0.1000" in fig._suptitle.get_text()


def sections(sizes: dict[str, int], wrong: tuple[str, ...] = ("wrong",)) -> dict[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(0)
    out = {}
    for name, n in sizes.items():
        labels = np.arange(n) % 2
        p_real = np.where(labels == 1, 0.9, 0.1) if name not in wrong else np.where(labels == 1, 0.1, 0.9)
        out[name] = (rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), rng.random((n, 8, 8)), p_real, labels)
    return out


def all_texts(fig: Figure) -> list:
    return list(fig.findobj(lambda a: hasattr(a, "get_text") and a.get_text()))


def test_gradcam_pairs_share_one_caption_under_headers_and_no_cell_is_blank() -> None:
    fig = drawn(gradcam_figure(sections({"fixed": 8, "correct": 8, "wrong": 3}), ("FAKE", "REAL"), 0.5, 4))
    assert len(fig.axes) == 2 * (8 + 8 + 3)  # an image and its map per pair, no empty axes
    assert all(len(ax.images) == 1 for ax in fig.axes)
    headers = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert headers.count(GRADCAM_HEADERS[0]) == headers.count(GRADCAM_HEADERS[1]) == 4 + 4 + 3  # each block's top row
    texts = [t.get_text() for t in all_texts(fig)]
    captions = [t for t in texts if t.startswith("called ")]
    assert len(captions) == 19 and sum("(wrong)" in c for c in captions) == 3  # one caption per pair
    assert "wrong calls (3)" in texts


def test_gradcam_with_no_wrong_call_says_so_in_a_line() -> None:
    without = drawn(gradcam_figure(sections({"fixed": 8, "correct": 8}), ("FAKE", "REAL"), 0.5, 4))
    fig = drawn(gradcam_figure(sections({"fixed": 8, "correct": 8, "wrong": 0}), ("FAKE", "REAL"), 0.5, 4))
    assert any("wrong calls: none" in t.get_text() for t in all_texts(fig))
    assert fig.get_figheight() - without.get_figheight() <= 0.5  # a line, not a third of the figure
    alone = drawn(gradcam_figure(sections({"wrong": 0}), ("FAKE", "REAL"), 0.5, 4))  # the callback's own figure
    assert alone.get_figheight() <= 1.0 and not alone.axes


def test_prediction_grid_has_no_blank_cells() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(11) % 2
    p_real = np.where(labels == 1, 0.8, 0.3)
    p_real[0] = 0.9  # a FAKE called REAL
    fig = drawn(prediction_grid_figure(rng.integers(0, 256, (11, 3, 8, 8), dtype=np.uint8), p_real, labels,
                                       ("FAKE", "REAL"), 0.5, 8, "Predictions"))
    assert len(fig.axes) == 11 and all(len(ax.images) == 1 for ax in fig.axes)
    assert "10 of 11 right" in fig._suptitle.get_text()
    assert sum("(wrong)" in ax.get_title() for ax in fig.axes) == 1
    few = drawn(prediction_grid_figure(rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8), p_real[:3], labels[:3],
                                       ("FAKE", "REAL"), 0.5, 8))
    assert len(few.axes) == 3 and few.get_figwidth() < 6  # three images: three columns, not eight


def test_robustness_legend_is_beside_the_panels() -> None:
    from cifake.analysis.plots import robustness_figure

    rows = [{"perturbation": "none", "strength": None, "accuracy": 0.97, "auroc": 0.99}]
    rows += [{"perturbation": "blur", "strength": s, "accuracy": a, "auroc": 0.9, "trained": "yes"}
             for s, a in ((0.5, 0.6), (1.0, 0.5))]
    fig = drawn(robustness_figure(rows))
    assert not any(ax.get_legend() for ax in fig.axes)
    box = fig.legends[0].get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
