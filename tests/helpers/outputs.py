"""Reading what a run leaves: metrics.json, TensorBoard event files, CSV tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

METRIC_KEYS = {"accuracy", "auroc", "precision", "recall", "f1", "confusion_matrix", "n", "threshold", "ece", "tta",
               "scoring", "compute", "answers", "split"}  # compute: a network's training compute and the evaluation's
# (not an ONNX file's); answers: the four answers' shares; split: test, or validation (scored_split)
PER_CLASS = [f"{m}_{c}" for m in ("precision", "recall", "f1") for c in ("fake", "real")]


def check_metrics_file(path: Path, n: int) -> dict:
    """metrics.json of an evaluation of ``n`` images: its keys, and numbers that agree with its confusion matrix."""
    report = json.loads(path.read_text())
    assert METRIC_KEYS - {"compute"} <= set(report) <= METRIC_KEYS  # a forest records no FLOPs
    assert sum(report["answers"]["shares"].values()) == pytest.approx(1.0)
    if "compute" in report:
        assert report["compute"]["train_pflop"] > 0 and report["compute"]["evaluation_pflop"] > 0
    cm = report["confusion_matrix"]
    assert sum(map(sum, cm)) == report["n"] == n
    assert report["accuracy"] == pytest.approx((cm[0][0] + cm[1][1]) / n)
    for k, name in enumerate(("FAKE", "REAL")):
        assert all(set(report[m]) == {"FAKE", "REAL"} for m in ("precision", "recall", "f1"))
        predicted = cm[0][k] + cm[1][k]
        if predicted:
            assert report["precision"][name] == pytest.approx(cm[k][k] / predicted)
        assert report["recall"][name] == pytest.approx(cm[k][k] / sum(cm[k]))
    assert report["threshold"] == 0.5 and 0.0 <= report["auroc"] <= 1.0
    assert report["scoring"] == {"precision": "32-true", "device": "cpu"}  # float32 by default, whatever the CPU
    return report


def read_events(folder: Path) -> dict:
    """Tags by kind across every event file of a TensorBoard run folder, and the hparams plugin."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, set[str]] = {"scalars": set(), "images": set(), "tensors": set()}
    hparams: dict[str, bytes] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
        ea.Reload()
        for kind in tags:
            tags[kind] |= set(ea.Tags()[kind])
        if "hparams" in ea.PluginAssets("hparams") or "_hparams_/experiment" in ea.summary_metadata:
            hparams.update(ea.PluginTagToContent("hparams"))
    return {**tags, "hparams": hparams}


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows, as dictionaries keyed by its header."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
