import math

import pytest
import torch

from cifake.analysis.metrics import binary_report, format_report


def test_report_numbers_on_a_hand_worked_example() -> None:
    # labels: 3 FAKE (0), 2 REAL (1); predictions at 0.5: FAKE, REAL, FAKE | REAL, FAKE
    p = torch.tensor([0.1, 0.7, 0.2, 0.9, 0.4])
    y = torch.tensor([0, 0, 0, 1, 1])
    r = binary_report(p, y, threshold=0.5)
    assert r["confusion_matrix"] == [[2, 1], [1, 1]]
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["precision"] == pytest.approx({"FAKE": 2 / 3, "REAL": 1 / 2})
    assert r["recall"] == pytest.approx({"FAKE": 2 / 3, "REAL": 1 / 2})
    assert r["f1"]["REAL"] == pytest.approx(0.5)
    # AUROC: pairs (REAL, FAKE) ranked right: 0.9 beats all 3; 0.4 beats 0.1, 0.2 -> 5/6
    assert r["auroc"] == pytest.approx(5 / 6)
    assert r["n"] == 5 and r["threshold"] == 0.5
    assert "precision" in format_report(r)


def test_threshold_applies_to_p_real_strictly() -> None:
    p = torch.tensor([0.3, 0.3, 0.31])
    r = binary_report(p, torch.tensor([1, 0, 1]), threshold=0.3)
    assert r["confusion_matrix"] == [[1, 0], [1, 1]]
    r = binary_report(p, torch.tensor([1, 0, 1]), threshold=0.0)
    assert r["confusion_matrix"] == [[0, 1], [0, 2]]
    assert r["precision"]["FAKE"] == 0.0  # nothing predicted FAKE: 0, not a division error


def test_single_class_gives_nan_auroc_not_a_crash() -> None:
    r = binary_report(torch.tensor([0.2, 0.8]), torch.tensor([1, 1]), 0.5)
    assert math.isnan(r["auroc"]) and r["accuracy"] == 0.5


def test_dashboard_metrics_match_the_report_over_many_batches() -> None:
    from cifake.analysis.metrics import classification_metrics, report_scalars, two_class_probs

    gen = torch.Generator().manual_seed(0)
    p = torch.rand(1000, generator=gen)
    y = (torch.rand(1000, generator=gen) < 0.2 + 0.6 * p).long()
    metrics = classification_metrics(prefix="val/")
    for start in range(0, 1000, 64):  # batches, with a reset-and-reuse as between epochs
        metrics.update(two_class_probs(p[start:start + 64]), y[start:start + 64])
    metrics.compute()
    metrics.reset()
    for start in range(0, 1000, 64):
        metrics.update(two_class_probs(p[start:start + 64]), y[start:start + 64])
    logged = {k: float(v) for k, v in metrics.compute().items()}
    expected = report_scalars(binary_report(p, y, threshold=0.5), prefix="val/")
    assert set(logged) == set(expected)
    for key, value in expected.items():
        # AUROC is binned on 200 thresholds for the dashboard, exact in the report.
        assert logged[key] == pytest.approx(value, abs=2e-3 if key.endswith("auroc") else 1e-6), key
