"""Calibration error, reliability bins and the choice of threshold, on predictions worked out by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cifake.analysis.calibration import (
    choose_threshold,
    expected_calibration_error,
    reliability_bins,
    threshold_sweep,
)
from cifake.analysis.metrics import binary_report
from cifake.analysis.plots import reliability_figure
from cifake.core.errors import ConfigError


def test_ece_on_a_hand_worked_example() -> None:
    # 5 bins over confidence [0.5, 1]: edges 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 (right-closed; 0.5 in the first).
    #   p     label  predicted  confidence  right   bin
    #   0.95  1      REAL       0.95        yes     4
    #   0.05  0      FAKE       0.95        yes     4
    #   0.92  0      REAL       0.92        no      4
    #   0.02  0      FAKE       0.98        yes     4   -> conf (.95+.95+.92+.98)/4 = .95, acc 3/4, gap .20
    #   0.35  0      FAKE       0.65        yes     1
    #   0.65  0      REAL       0.65        no      1   -> conf .65, acc 1/2, gap .15
    #   0.55  1      REAL       0.55        yes     0
    #   0.50  1      FAKE (not > .5) 0.50   no      0   -> conf .525, acc 1/2, gap .025
    # ECE = 4/8 * .20 + 2/8 * .15 + 2/8 * .025 = .1 + .0375 + .00625 = .14375
    p = np.array([0.95, 0.05, 0.92, 0.02, 0.35, 0.65, 0.55, 0.50])
    y = np.array([1, 0, 0, 0, 0, 0, 1, 1])
    bins = reliability_bins(p, y, n_bins=5)
    np.testing.assert_allclose(bins.edges, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert bins.count.tolist() == [2, 2, 0, 0, 4]
    np.testing.assert_allclose(bins.confidence[[0, 1, 4]], [0.525, 0.65, 0.95])
    np.testing.assert_allclose(bins.accuracy[[0, 1, 4]], [0.5, 0.5, 0.75])
    assert np.isnan(bins.accuracy[2]) and np.isnan(bins.confidence[3])  # empty bins
    assert expected_calibration_error(p, y, n_bins=5) == pytest.approx(0.14375)
    assert bins.ece == pytest.approx(0.14375)
    # The same with the classes swapped: top-label ECE has no positive class.
    assert expected_calibration_error(1 - p[:-1], 1 - y[:-1], n_bins=5) == pytest.approx(
        expected_calibration_error(p[:-1], y[:-1], n_bins=5))


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    # Confidence 0.75 and 6 of 8 right; confidence 1 and both right.
    p = np.array([0.75] * 4 + [0.25] * 4 + [1.0, 0.0])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)


def test_confident_and_wrong_predictions_have_ece_near_one() -> None:
    p = torch.tensor([1.0, 0.0, 0.999, 0.001])  # tensors are accepted too
    y = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(p, y) == pytest.approx(1.0, abs=1e-3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="n_bins"):
        reliability_bins([0.2, 0.8], [0, 1], n_bins=0)
    with pytest.raises(ValueError, match="1-D"):
        reliability_bins([0.2, 0.8], [0, 1, 1])
    with pytest.raises(ValueError, match="probabilities"):
        reliability_bins([0.2, 1.5], [0, 1])


def test_reliability_figure_builds() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    bins = reliability_bins(p, y, n_bins=10)
    fig = reliability_figure(bins.edges, bins.count, bins.confidence, bins.accuracy, bins.ece)
    fig.savefig(io.BytesIO(), format="png", dpi=50)
    assert "ECE" in fig._suptitle.get_text()


# Six validation predictions (threshold: REAL when p > t; candidates midway between scores):
#   t      called REAL     REAL: P     R    F1    | called FAKE     FAKE: P     R    F1
#   0.05   all 6           3/6   3/3  6/9         | none            0     0     0
#   0.20   5               3/5   3/3  6/8         | .1              1/1   1/3  2/4
#   0.35   4 (.4 .6 .8 .9) 3/4   3/3  6/7 best    | .1 .3           2/2   2/3  4/5
#   0.50   3               2/3   2/3  4/6         | .1 .3 .4        2/3   2/3  4/6
#   0.70   2 (.8 .9)       2/2   2/3  4/5         | + .6            3/4   3/3  6/7 best
#   0.85   1               1/1   1/3  2/4         | 5               3/5   3/3  6/8
#   0.95   none            0     0    0           | all 6           3/6   3/3  6/9
P = np.array([0.1, 0.3, 0.4, 0.6, 0.8, 0.9])
Y = np.array([0, 0, 1, 0, 1, 1])


def test_sweep_matches_the_table() -> None:
    sweep = threshold_sweep(P, Y)
    np.testing.assert_allclose(sweep.threshold, [0.05, 0.2, 0.35, 0.5, 0.7, 0.85, 0.95])
    np.testing.assert_allclose(sweep.precision, [3 / 6, 3 / 5, 3 / 4, 2 / 3, 1, 1, 0])
    np.testing.assert_allclose(sweep.f1, [6 / 9, 6 / 8, 6 / 7, 4 / 6, 4 / 5, 2 / 4, 0])
    fake = threshold_sweep(P, Y, positive="FAKE")
    np.testing.assert_allclose(fake.precision, [0, 1, 1, 2 / 3, 3 / 4, 3 / 5, 3 / 6])
    np.testing.assert_allclose(fake.recall, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])


def test_choose_threshold_by_f1_of_either_class() -> None:
    assert choose_threshold(P, Y, "f1") == pytest.approx(0.35)
    assert choose_threshold(P, Y, "f1", positive="FAKE") == pytest.approx(0.7)


def test_choose_threshold_by_target_precision() -> None:
    # REAL: 0.75 reaches 0.7 with all REAL found; 0.8 first needs t=0.7 (the highest recall of those at 1.0).
    assert choose_threshold(P, Y, "precision", 0.7) == pytest.approx(0.35)
    assert choose_threshold(P, Y, "precision", 0.8) == pytest.approx(0.7)
    assert choose_threshold(P, Y, "precision", 1.0) == pytest.approx(0.7)
    # FAKE: precision 1 at t=0.2 and t=0.35; 0.35 finds more FAKE.
    assert choose_threshold(P, Y, "precision", 1.0, positive="FAKE") == pytest.approx(0.35)
    assert choose_threshold(P, Y, "precision", 0.75, positive="FAKE") == pytest.approx(0.7)


def test_unreachable_precision_and_bad_settings_are_config_errors() -> None:
    # The highest score is a FAKE: REAL precision is at most 2/3 (everything called REAL).
    with pytest.raises(ConfigError, match="no threshold reaches precision 0.9"):
        choose_threshold([0.9, 0.8, 0.1], [0, 1, 1], "precision", 0.9)
    with pytest.raises(ConfigError, match="target_precision"):
        choose_threshold(P, Y, "precision")
    with pytest.raises(ConfigError, match="method"):
        choose_threshold(P, Y, "accuracy")
    with pytest.raises(ConfigError, match="positive"):
        choose_threshold(P, Y, positive="CAT")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([0.2, 0.7], [1, 1])


def test_chosen_threshold_gives_the_best_f1_as_the_metrics_count_it() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).astype(np.float32)
    p[:5] = [0.0, 1.0, 0.5, 0.5, 0.0]  # ties and the ends
    t = choose_threshold(p, y, "f1")

    def report(th: float) -> dict:
        return binary_report(torch.from_numpy(p), torch.from_numpy(y), float(th))

    sweep = threshold_sweep(p, y)
    assert sweep.threshold.min() >= 0 and sweep.threshold.max() <= 1  # as binary_report requires
    for k in range(0, len(sweep.threshold), 7):  # each split is what the metrics count at its threshold
        assert report(sweep.threshold[k])["f1"]["REAL"] == pytest.approx(sweep.f1[k]), k
    best = report(t)["f1"]["REAL"]
    assert best == pytest.approx(sweep.f1.max())
    assert all(report(th)["f1"]["REAL"] <= best + 1e-9 for th in np.linspace(0, 1, 101))
    t = choose_threshold(p, y, "precision", 0.8)
    assert report(t)["precision"]["REAL"] >= 0.8
