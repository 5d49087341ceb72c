"""The files an evaluation leaves: ``predictions.csv`` and the figures, all drawn from the one set
of predictions that ``metrics.json`` was computed from."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from cifake.analysis.calibration import (
    apply_temperature,
    confident_accuracy_text,
    expected_calibration_error,
    reliability_bins,
)
from cifake.analysis.metrics import binary_report, format_report, report_scalars
from cifake.analysis.plots import (
    confusion_figure,
    gradcam_figure,
    pick_per_class,
    pr_figure,
    prediction_grid_figure,
    reliability_figure,
    robustness_figure,
    roc_figure,
)
from cifake.analysis.robustness import RobustnessSettings, robustness_markdown, write_robustness
from cifake.analysis.tensorboard_figures import log_figure, tensorboard_writers
from cifake.data.cache import DecodedSplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSettings:
    """What an evaluation's report holds (``report``, conf/report/default.yaml): the figures or not,
    images per class in the prediction grid (``examples_per_class``, ``ncols`` a row), Grad-CAM's images per
    class (``gradcam_per_class``, ``pairs_per_row`` a row) at ``gradcam_layer`` (``None``: the model's own),
    the reliability bins, and the robustness battery."""

    figures: bool
    examples_per_class: int
    ncols: int
    gradcam_per_class: int
    pairs_per_row: int
    gradcam_layer: str | None
    calibration_bins: int
    robustness: RobustnessSettings

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ReportSettings:
        """The settings of the composed ``report`` node."""
        return cls(figures=bool(cfg["figures"]), examples_per_class=int(cfg["examples_per_class"]),
                   ncols=int(cfg["ncols"]), gradcam_per_class=int(cfg["gradcam_per_class"]),
                   pairs_per_row=int(cfg["pairs_per_row"]),
                   gradcam_layer=None if cfg["gradcam_layer"] is None else str(cfg["gradcam_layer"]),
                   calibration_bins=int(cfg["calibration_bins"]),
                   robustness=RobustnessSettings.from_config(cfg["robustness"]))


@dataclass(frozen=True)
class ScoredBy:
    """What scored a set of predictions, as ``metrics.json`` records it: the model file (``source``) and its
    ``classes``; the precision and device that computed the scores (``computed``:
    :attr:`cifake.scoring.Scorer.computed`); the test-time augmentation (``tta``); the ``temperature`` the
    scores were calibrated with, if any; the model's training compute and this evaluation's (``compute``),
    where recorded."""

    source: str
    classes: tuple[str, ...]
    computed: Mapping[str, str]
    tta: Mapping[str, Any]
    temperature: float | None
    compute: Mapping[str, Any] | None
    split: str  # the split scored: test, or validation (scored_split)


@dataclass(frozen=True)
class Findings:
    """What an evaluation adds to its predictions' report, each optional: Grad-CAM overlays (``explained``),
    figures of the model's own (``extra_figures``, under ``extra_prefix/``), the files whose metrics also go in
    without them (``exclude``: ``leak_free``), the unsure band's coverage (``unsure``:
    :func:`cifake.analysis.calibration.unsure_report`) and the four-way answers (``answers``:
    :func:`cifake.analysis.calibration.answers_report`)."""

    explained: Explained | None = None
    extra_figures: dict[str, Figure] | None = None
    extra_prefix: str = "eda"
    exclude: set[str] | None = None
    unsure: dict[str, Any] | None = None
    answers: dict[str, Any] | None = None


@dataclass(frozen=True)
class Explained:
    """Grad-CAM overlays to draw: ``sections`` as :func:`cifake.models.gradcam.explained_sections` makes
    them, computed at ``layer``."""

    layer: str
    sections: dict[str, tuple[np.ndarray, ...]]


@dataclass(frozen=True)
class Predictions:
    """One prediction per image, aligned by construction: ``files[i]`` has ``labels[i]`` and
    ``p_real[i]``; ``images`` holds the decoded pixels ``(N, 3, H, W)`` uint8 in the same order."""

    files: Sequence[str]
    labels: np.ndarray
    p_real: np.ndarray
    images: np.ndarray

    @classmethod
    def of_rows(cls, split: DecodedSplit, rows: np.ndarray, p_real: np.ndarray) -> Predictions:
        """Predictions ``p_real[i]`` for row ``rows[i]`` of a decoded split; files, labels and
        pixels are looked up by row, so nothing can be misaligned."""
        rows = np.asarray(rows)
        return cls(files=[str(split.root / split.files[r]) for r in rows], labels=np.asarray(split.labels[rows]),
                   p_real=np.asarray(p_real, dtype=np.float32), images=split.images[rows])

    def predicted(self, threshold: float) -> np.ndarray:
        """Label 1 (REAL) where p(REAL) > ``threshold``, as ``metrics.json`` counts it."""
        return (self.p_real > threshold).astype(np.int64)


def write_predictions_csv(path: Path, pred: Predictions, classes: Sequence[str], threshold: float) -> None:
    """``path,label,p_real,predicted``: one row per image, class names for the labels."""
    predicted = pred.predicted(threshold)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "p_real", "predicted"])
        for file, label, p, guess in zip(pred.files, pred.labels, pred.p_real, predicted, strict=True):
            writer.writerow([file, classes[int(label)], f"{float(p):.6f}", classes[int(guess)]])


def curve_figures(pred: Predictions, confusion: Sequence[Sequence[int]], classes: Sequence[str],
                  title: str) -> dict[str, Figure]:
    """Exact ROC and PR curves of every prediction, and the confusion matrix as counted for
    ``metrics.json``."""
    p = torch.from_numpy(pred.p_real).float()
    y = torch.from_numpy(pred.labels).long()
    figures = {"confusion_matrix": confusion_figure(confusion, classes, f"Confusion ({title})")}
    if 0 < int(y.sum()) < len(y):  # curves need both classes
        fpr, tpr, _ = binary_roc(p, y)
        real = binary_precision_recall_curve(p, y)[:2]
        fake = binary_precision_recall_curve(1 - p, 1 - y)[:2]
        figures["roc"] = roc_figure(fpr.numpy(), tpr.numpy(), classes[1], f"ROC ({title})")
        figures["pr"] = pr_figure({classes[1]: tuple(v.numpy() for v in real),
                                   classes[0]: tuple(v.numpy() for v in fake)}, f"Precision-recall ({title})")
    else:
        log.warning("Only one class among the labels: ROC and precision-recall figures are skipped")
    return figures


def example_figures(pred: Predictions, classes: Sequence[str], threshold: float, settings: ReportSettings,
                    title: str, explained: Explained | None = None) -> dict[str, Figure]:
    """The prediction grid and, with ``explained``, its Grad-CAM overlays (computed by the caller:
    this module draws, it does not run models)."""
    grid = pick_per_class(pred.labels, settings.examples_per_class)
    figures = {"predictions": prediction_grid_figure(pred.images[grid], pred.p_real[grid], pred.labels[grid],
                                                     classes, threshold, settings.ncols, f"Predictions ({title})")}
    if explained is not None:
        figures["gradcam"] = gradcam_figure(explained.sections, classes, threshold, settings.pairs_per_row,
                                            f"Grad-CAM at {explained.layer} for the predicted class ({title})")
    return figures


def log_pr_curve(writers: list, tag: str, pred: Predictions, step: int, num_thresholds: int = 201) -> None:
    """TensorBoard's native precision-recall curve of every prediction (REAL positive)."""
    for writer in writers:
        writer.add_pr_curve(tag, pred.labels, pred.p_real, global_step=step, num_thresholds=num_thresholds)


def write_figures(figures: dict[str, Figure], out_dir: Path, writers: list, step: int, prefix: str = "test",
                  metadata: dict[str, dict[str, str]] | None = None) -> list[Path]:
    """Save each figure as ``out_dir/<name>.png`` (with ``metadata[name]`` as PNG text chunks) and
    log it to TensorBoard as ``<prefix>/<name>``."""
    written = []
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=120, metadata=(metadata or {}).get(name))
        log_figure(writers, f"{prefix}/{name}", fig, step)
        written.append(path)
    return written


def write_report(pred: Predictions, threshold: float, out_dir: Path, settings: ReportSettings, loggers: list,
                 step: int, scored: ScoredBy, findings: Findings) -> dict[str, Any]:
    """Everything an evaluation leaves, from ``pred`` alone: ``metrics.json``, ``predictions.csv``
    and (with ``settings.figures``) the figures as PNGs, logged to ``loggers`` under ``test/``
    too, with the Grad-CAM overlays and the model's own figures of ``findings``; with
    ``findings.exclude`` (file paths as in ``pred.files``) the metrics without those images go in as
    ``leak_free``; what ``scored`` says of the scores (the TTA, the precision and device, the compute) is
    recorded as given; with the temperature ``pred`` was calibrated with, the ECE before it goes in beside
    the ECE after (``temperature``) and into the reliability figure; so do the unsure band's coverage and
    the four-way answers of ``findings``. Returns the metrics."""
    classes, computed, temperature = scored.classes, scored.computed, scored.temperature
    unsure, answers, exclude = findings.unsure, findings.answers, findings.exclude
    report = binary_report(torch.from_numpy(pred.p_real), torch.from_numpy(pred.labels), threshold, tuple(classes))
    report["split"] = split = scored.split
    report["tta"] = dict(scored.tta) if scored.tta else {"mode": "none"}
    report["scoring"] = dict(computed)
    if scored.compute is not None:
        report["compute"] = dict(scored.compute)
    if unsure is not None:  # cifake.analysis.calibration.unsure_report: coverage and confident accuracy
        report["unsure"] = dict(unsure)
        log.info("Unsure band (%.4f, %.4f]: coverage %.4f, accuracy of the confident answers %s",
                 *unsure["band"], unsure["coverage"], confident_accuracy_text(unsure))
    if answers is not None:  # cifake.analysis.calibration.answers_report: REAL, FAKE, UNSURE, OUT_OF_SCOPE
        report["answers"] = dict(answers)
        log.info("Answers: %s; accuracy on the %.1f%% answered with a class: %s",
                 ", ".join(f"{100 * v:.1f}% {k}" for k, v in answers["shares"].items()), 100 * answers["answered"],
                 "none" if answers.get("accuracy_answered") is None else f"{answers['accuracy_answered']:.4f}")
    bins = reliability_bins(pred.p_real, pred.labels, settings.calibration_bins)
    report["ece"] = float(bins.ece)
    before = None
    if temperature is not None:  # the scores as the network gave them: the temperature inverted
        before = reliability_bins(apply_temperature(pred.p_real, 1.0 / temperature), pred.labels,
                                  settings.calibration_bins)
        report["temperature"] = {"value": float(temperature), "ece_before": float(before.ece),
                                 "ece_after": float(bins.ece), "fitted_on": "validation"}
        log.info("Temperature %.4f (fitted on validation): test ECE %.4f before, %.4f after", temperature,
                 before.ece, bins.ece)
    if exclude is not None:  # e.g. the test images that leak from train (cifake.audit)
        keep = np.array([f not in exclude for f in pred.files], dtype=bool)
        subset = binary_report(torch.from_numpy(pred.p_real[keep]), torch.from_numpy(pred.labels[keep]), threshold,
                               tuple(classes))
        subset["ece"] = expected_calibration_error(pred.p_real[keep], pred.labels[keep], settings.calibration_bins)
        report["leak_free"] = {**subset, "excluded": int((~keep).sum())}
        log.info("Without the %d leaking test images:\n%s", (~keep).sum(), format_report(subset, tuple(classes)))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_predictions_csv(out_dir / "predictions.csv", pred, classes, threshold)
    for lg in loggers:
        lg.log_metrics(report_scalars(report, f"{split}/"), step=step)
    written = ["metrics.json", "predictions.csv"]
    if settings.figures:
        writers = tensorboard_writers(loggers)
        figures = curve_figures(pred, report["confusion_matrix"], classes, split)
        figures["reliability"] = reliability_figure(bins.edges, bins.count, bins.confidence, bins.accuracy, bins.ece,
                                                    before=before)
        figures.update(example_figures(pred, classes, threshold, settings, split, findings.explained))
        # The counts travel inside the PNG too, so a figure can be checked against metrics.json.
        counts = {"confusion_matrix": {"confusion_matrix": json.dumps(report["confusion_matrix"])}}
        written += [p.name for p in write_figures(figures, out_dir, writers, step, prefix=split, metadata=counts)]
        log_pr_curve(writers, f"{split}/pr_curve", pred, step)
        if findings.extra_figures:
            written += [p.name for p in write_figures(findings.extra_figures, out_dir, writers, step,
                                                      prefix=findings.extra_prefix)]
    log.info("%s split, %s (%s on %s):\n%s\nWritten to %s: %s", split.capitalize(), scored.source,
             computed["precision"], computed["device"], format_report(report, tuple(classes)), out_dir,
             ", ".join(written))
    return report


def write_robustness_report(rows: list[dict[str, Any]], out_dir: Path, loggers: list, step: int,
                            split: str) -> None:
    """``robustness.csv``, ``robustness.md`` and ``robustness.png`` (also in TensorBoard, under ``<split>/``) of
    the rows :func:`cifake.analysis.robustness.robustness_table` computed on ``split``."""
    write_robustness(rows, out_dir)
    writers = tensorboard_writers(loggers)
    write_figures({"robustness": robustness_figure(rows)}, out_dir, writers, step, prefix=split)
    table = robustness_markdown(rows)
    for writer in writers:  # the table itself, under TensorBoard's Text tab
        writer.add_text(f"{split}/robustness", table, global_step=step)
    log.info("Robustness (%s split):\n%s", split, table)
