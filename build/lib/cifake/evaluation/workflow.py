"""Evaluating any trained model on the test split, shared by ``train.py evaluate=true`` and
``evaluate.py``: score the split through a :class:`~cifake.scoring.Scorer`, choose the threshold
on validation if asked, explain examples with Grad-CAM, perturb for robustness, and hand the
predictions to :mod:`cifake.analysis.report` for the files and figures."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from cifake.analysis.calibration import (
    answers_report,
    apply_temperature,
    choose_threshold,
    choose_unsure_band,
    confident_accuracy_text,
    expected_calibration_error,
    fit_temperature,
    unsure_report,
)
from cifake.analysis.report import (
    Explained,
    Findings,
    Predictions,
    ReportSettings,
    ScoredBy,
    write_report,
    write_robustness_report,
)
from cifake.analysis.robustness import condition_scores, robustness_table, trained_with
from cifake.analysis.robustness import conditions as robustness_conditions
from cifake.analysis.tta import view_count
from cifake.audit import leaked_test_files
from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule
from cifake.evaluation.settings import SCORED_SPLITS, EvaluationSettings, Limit, ScopeFit, ThresholdChoice
from cifake.models.gradcam import explained_sections, explanation_sets
from cifake.models.scope import RECORD_KEYS as SCOPE_RECORD_KEYS
from cifake.models.scope import fit_mahalanobis, fit_rows, scope_record, threshold_for
from cifake.scoring import Scorer
from cifake.scoring.network import network_features, network_scope
from cifake.scoring.scorer import with_temperature

log = logging.getLogger(__name__)


def leaking_test_files(datamodule: CIFAKEDataModule, near_distance: int | None) -> set[str]:
    """The test files that leak from train (:func:`cifake.audit.leaked_test_files`), named as
    :class:`~cifake.analysis.report.Predictions` names them, for ``write_report(exclude=...)``."""
    root = datamodule.decoded(datamodule.hparams.test_split).root
    return {str(root / path) for path in leaked_test_files(datamodule, near_distance)}


def limited(indices: np.ndarray, batch: int, limit: Limit) -> np.ndarray:
    """The first batches of ``indices`` that ``limit`` keeps, read as Lightning reads
    ``trainer.limit_predict_batches``: a float up to 1.0 is a fraction of the batches, an int a
    number of them, ``None`` all."""
    if limit is None:
        return indices
    if limit <= 0:
        raise ConfigError(f"trainer.limit_predict_batches={limit}: evaluation needs at least one batch; "
                          "leave it null to score every image")
    n_batches = -(-len(indices) // batch)
    keep = max(1, int(n_batches * limit)) if isinstance(limit, float) and limit <= 1.0 else min(int(limit), n_batches)
    return indices[:keep * batch]


def score_split(scorer: Scorer, datamodule: CIFAKEDataModule, stage: str, limit: Limit = None) -> Predictions:
    """p(REAL) of the images of the ``stage`` set (``validate`` or ``test``), in row order: every
    image, or the first ``limit`` batches of the set's fixed shuffled order (both classes)."""
    datamodule.setup("fit" if stage == "validate" else "test")
    images = datamodule.val_set if stage == "validate" else datamodule.test_set
    rows = np.sort(limited(np.asarray(images.indices), datamodule.eval_batch, limit))
    p_real = scorer.p_real(images.split.images[rows], datamodule.eval_batch, progress=f"Scoring ({stage})")
    return Predictions.of_rows(images.split, rows, p_real)


def threshold_on_validation(scorer: Scorer, datamodule: CIFAKEDataModule, choice: ThresholdChoice,
                            limit: Limit = None) -> float:
    """The threshold ``choice.method`` picks on the validation split (see
    :func:`cifake.analysis.calibration.choose_threshold`), to be used on the test split."""
    val = score_split(scorer, datamodule, "validate", limit)
    threshold = choose_threshold(val.p_real, val.labels, choice.method, choice.target_precision, choice.positive,
                                 scorer.classes)
    log.info("Threshold chosen on the validation split (%d images, %s): %.4f", len(val.labels), choice.method,
             threshold)
    return float(threshold)


def unsure_band_on_validation(scorer: Scorer, datamodule: CIFAKEDataModule, settings: EvaluationSettings,
                              val: Predictions | None = None) -> tuple[float, float]:
    """The narrowest band around ``settings.threshold`` outside which both classes' validation answers reach
    ``settings.unsure_precision`` (:func:`cifake.analysis.calibration.choose_unsure_band`).
    ``settings.unsure_conditions="trained"``: on the clean validation images and under every condition of the
    robustness battery (``settings.report.robustness``) the model trained on (``trained_with == "yes"``), the
    widest of those bands, so the confident answers hold up on images degraded as in training; conditions
    the model never trained on stay out of the choice, to be measured, not fitted. ``val``: ``scorer``'s
    validation predictions, when they are already at hand."""
    threshold, target_precision = settings.threshold, settings.unsure_precision
    assert target_precision is not None, "called only with unsure_precision set"
    if val is None:
        val = score_split(scorer, datamodule, "validate", settings.limit)
    pairs: list[tuple[str, Any]] = [("none", None)]
    battery = settings.report.robustness
    if settings.unsure_conditions == "trained":
        pairs += [(name, strength) for name, strength in robustness_conditions(battery.perturbations)
                  if trained_with(name, strength, scorer.training) == "yes"]
    bands = []
    for name, strength in pairs:
        p = val.p_real if name == "none" else condition_scores(
            scorer.score, val.images, name, strength, battery.options.get(name), datamodule.eval_batch, battery.seed)
        bands.append(choose_unsure_band(p, val.labels, threshold, target_precision, scorer.classes))
    band = (min(b[0] for b in bands), max(b[1] for b in bands))
    report = unsure_report(val.p_real, val.labels, band)
    log.info("Unsure band chosen on the validation split (%d images, %d condition%s, precision >= %g each side): "
             "(%.4f, %.4f]; clean coverage %.4f, accuracy of the confident answers %s", len(val.labels), len(pairs),
             "" if len(pairs) == 1 else "s", target_precision, *band, report["coverage"],
             confident_accuracy_text(report))
    return band


def temperature_on_validation(val: Predictions) -> float:
    """The temperature that calibrates the validation predictions ``val``
    (:func:`cifake.analysis.calibration.fit_temperature`), with the validation ECE before and after it logged."""
    temperature = fit_temperature(val.p_real, val.labels)
    log.info("Temperature fitted on the validation split (%d images): %.4f; validation ECE %.4f before, %.4f after",
             len(val.labels), temperature, expected_calibration_error(val.p_real, val.labels),
             expected_calibration_error(apply_temperature(val.p_real, temperature), val.labels))
    return temperature


def choose_on_validation(scorer: Scorer, datamodule: CIFAKEDataModule,
                         settings: EvaluationSettings) -> tuple[Scorer, float | None, tuple[float, float] | None]:
    """What ``train.py`` and ``evaluate.py`` choose on the validation split before the test split is
    scored, in this order (conf/evaluation/default.yaml): the temperature (``calibration.temperature``:
    ``auto`` fits one, a number is taken as it is, ``null`` keeps the model's own), then the unsure
    band on the calibrated scores (``unsure_precision``, ``unsure_conditions``). Returns the calibrated
    scorer, the temperature chosen now (``None`` if none) and the band (``None`` if not asked for).
    The validation split is scored once for both: the band's scores are the fitted ones, calibrated."""
    temperature, band, val = None, None, None
    if settings.temperature == "auto":
        val = score_split(scorer, datamodule, "validate", settings.limit)
        temperature = temperature_on_validation(val)
        val = dataclasses.replace(val, p_real=apply_temperature(val.p_real, temperature))
    elif settings.temperature is not None:
        temperature = float(settings.temperature)
    scorer = with_temperature(scorer, temperature)
    if settings.unsure_precision:
        band = unsure_band_on_validation(scorer, datamodule, settings, val)
    return scorer, temperature, band


def scope_on_training(scorer: Scorer, datamodule: CIFAKEDataModule, fit: ScopeFit,
                      limit: Limit = None) -> tuple[Scorer, dict[str, Any] | None]:
    """With ``fit.method`` (``out_of_scope_fit``, conf/evaluation/default.yaml): the out-of-scope score
    (:mod:`cifake.models.scope`) fitted on ``fit.images`` training images (a seeded sample, both
    classes as they come, unaugmented), its threshold set so that a share ``fit.flagged`` of the
    validation images lie above it. Returns ``scorer`` answering with it, and its record for the
    checkpoint; ``(scorer, None)`` without a method."""
    if fit.method is None:
        return scorer, None
    if not scorer.explainable:
        kind = "a forest" if scorer.kind == "forest" else "an ONNX export"
        raise ConfigError(f"out_of_scope_fit needs a network's features, and {scorer.source} is {kind}; fit it on "
                          "the checkpoint (then export), or leave out_of_scope_fit.method=null")
    datamodule.setup("fit")
    train = datamodule.train_set
    rows = fit_rows(train.indices, fit.images)
    embed = network_features(scorer.model, scorer.device)
    features = np.concatenate([embed(train.split.images[rows[i:i + datamodule.eval_batch]])
                               for i in tqdm(range(0, len(rows), datamodule.eval_batch), desc="Features (train)",
                                             unit="batch")])
    head = fit_mahalanobis(features, train.split.labels[rows])
    provisional = dataclasses.replace(scorer, scope=network_scope(scorer.model, head, scorer.device),
                                      scope_settings=None)
    val = datamodule.val_set
    val_rows = np.sort(limited(np.asarray(val.indices), datamodule.eval_batch, limit))
    scores = provisional.out_of_scope(val.split.images[val_rows], datamodule.eval_batch, progress="Out of scope (val)")
    threshold = threshold_for(scores, fit.flagged)
    record = scope_record(head, threshold, fit.flagged, len(rows))
    log.info("Out-of-scope score fitted on %d training images (%s, %d features): threshold %.4f, above which %.1f%% "
             "of the %d validation images lie (median %.3f)", len(rows), fit.method, features.shape[1], threshold,
             100 * float(np.mean(scores > threshold)), len(scores), float(np.median(scores)))
    return dataclasses.replace(provisional, scope_settings={k: record[k] for k in SCOPE_RECORD_KEYS}), record


def evaluate_run(scorer: Scorer, datamodule: CIFAKEDataModule, settings: EvaluationSettings, out_dir: Path,
                 loggers: list, step: int = 0, band: tuple[float, float] | None = None) -> dict[str, Any]:
    """The test-split evaluation of ``train.py evaluate=true`` and ``evaluate.py``, as their shared
    ``settings`` say: :func:`evaluate_model` with the leaking test files left out of ``leak_free``
    (``exclude_leaks``, ``leak_near_distance``). Returns the metrics."""
    exclude = leaking_test_files(datamodule, settings.leak_near_distance) if settings.exclude_leaks else None
    return evaluate_model(scorer, datamodule, settings, out_dir, loggers, step, band, exclude)


def explain(scorer: Scorer, pred: Predictions, threshold: float, settings: ReportSettings) -> Explained | None:
    """Grad-CAM overlays of correctly and wrongly classified test images of each class, for the
    report; ``None`` (with the reason logged) where the model has no layer to explain."""
    layer = settings.gradcam_layer or scorer.gradcam_layer
    if not scorer.explainable:
        log.info("Grad-CAM skipped: %s is a%s, which has no layer to explain", scorer.source,
                 " random forest on image statistics" if scorer.kind == "forest" else "n ONNX export")
        return None
    if layer is None:
        log.info("Grad-CAM skipped: the checkpoint names no model.gradcam_layer; set report.gradcam_layer")
        return None
    predicted = pred.predicted(threshold)
    # The prediction grid already shows the first images; a report explains right and wrong calls.
    sets = explanation_sets(pred.labels, predicted, settings.gradcam_per_class)
    sets = {"correct": sets["correct"], "wrong": sets["wrong"]}
    return Explained(layer, explained_sections(scorer.model, pred.images, pred.labels, pred.p_real, predicted, sets,
                                               layer, scorer.device))


def forest_figures(scorer: Scorer, datamodule: CIFAKEDataModule, pred: Predictions) -> dict[str, Figure]:
    """A forest's exploratory figures of the test split's features (``test_*``)."""
    from cifake.models.forest.fit import eda_figures, split_features  # the forest's own figures

    split = datamodule.test_set.split
    features = split_features(scorer.model, split)[np.sort(datamodule.test_set.indices)]
    counts = dict(zip(scorer.classes, np.bincount(pred.labels, minlength=2).tolist(), strict=True))
    eda = eda_figures(features, pred.labels, scorer.model, {"test": counts}, "test")
    return {f"test_{name}": fig for name, fig in eda.items()}


def compute_record(scorer: Scorer, n_scored: int) -> dict[str, Any] | None:
    """metrics.json's ``compute``: the model's training compute where recorded (``train_pflop``: 3 x
    forward FLOPs x training images seen) and, apart from it, this evaluation's (``evaluation_pflop``:
    forward FLOPs x images scored x test-time views); ``None`` for a model that records neither."""
    if not scorer.compute:
        return None
    views = view_count(scorer.tta.get("mode", "none"), scorer.tta.get("shift", 1))
    evaluation = scorer.compute["forward_flops"] * n_scored * views / 1e15
    return {**scorer.compute, "evaluation_pflop": evaluation, "evaluation_views": views}


def evaluate_model(scorer: Scorer, datamodule: CIFAKEDataModule, settings: EvaluationSettings, out_dir: Path,
                   loggers: list, step: int = 0, band: tuple[float, float] | None = None,
                   exclude: set[str] | None = None) -> dict[str, Any]:
    """Score ``scorer`` on the test split and write the report (:func:`cifake.analysis.report.write_report`)
    as ``settings`` say. With ``settings.threshold_choice`` the threshold is chosen on the validation split
    first; with ``settings.robustness`` the test split is scored again under perturbations; ``exclude``: files
    whose metrics also go in without them (``leak_free``); with an unsure ``band``, coverage and the
    accuracy of the confident answers go in as ``unsure`` (and into the robustness rows); ``settings.limit``:
    score only the first batches of each set (``trainer.limit_predict_batches``). Returns the
    metrics."""
    threshold, limit, report_settings = settings.threshold, settings.limit, settings.report
    scorer.check_image_size(datamodule.hparams.image_size)
    if settings.threshold_choice is not None:
        threshold = threshold_on_validation(scorer, datamodule, settings.threshold_choice, limit)
    split = settings.scored_split
    pred = score_split(scorer, datamodule, SCORED_SPLITS[split], limit)
    explained, extra = None, None
    if report_settings.figures:
        explained = explain(scorer, pred, threshold, report_settings)
        extra = forest_figures(scorer, datamodule, pred) if scorer.kind == "forest" else None
    unsure = unsure_report(pred.p_real, pred.labels, band) if band is not None else None
    scope = scorer.out_of_scope(pred.images, datamodule.eval_batch, progress=f"Out of scope ({split})")
    answers = answers_report(pred.p_real, pred.labels, scorer.classes, threshold, band, scope, scorer.scope_threshold)
    scored = ScoredBy(source=scorer.source, classes=tuple(scorer.classes), computed=scorer.computed,
                      tta=dict(scorer.tta), temperature=scorer.temperature,
                      compute=compute_record(scorer, len(pred.labels)), split=split)
    findings = Findings(explained=explained, extra_figures=extra, exclude=exclude, unsure=unsure, answers=answers)
    report = write_report(pred, threshold, out_dir, report_settings, loggers, step, scored, findings)
    if settings.robustness:
        rows = robustness_table(scorer.score, pred.images, pred.labels, report_settings.robustness, threshold,
                                band=band)
        for row in rows:
            row["trained"] = trained_with(row["perturbation"], row["strength"], scorer.training)
        write_robustness_report(rows, out_dir, loggers, step, split)
    return report
