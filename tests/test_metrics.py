import math

import pytest
import torch

from cifake.metrics import binary_report, format_report


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
