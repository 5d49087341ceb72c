"""Whether p(REAL) can be read as a probability (expected calibration error, reliability bins),
making it one (a temperature fitted on validation), and the choice of the decision threshold on the
validation split.

Calibration is measured on the predicted class (top-label calibration, Guo et al. 2017): each
prediction is the more probable class, REAL when ``p_real > 0.5`` as in the metrics, and its
confidence is ``max(p_real, 1 - p_real)``, in [0.5, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from cifake.core.errors import ConfigError
from cifake.data.labels import CLASSES

METHODS = ("f1", "precision")

# A hair below a target precision still reaches it, so that e.g. 97/100 counts as 0.97 whatever the rounding.
PRECISION_TOLERANCE = 1e-12


def _check(p_real: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Float64 probabilities in [0, 1] and 0/1 labels of the same 1-D shape."""
    p, y = np.asarray(p_real, dtype=np.float64), np.asarray(labels)
    if p.ndim != 1 or p.shape != y.shape or len(p) == 0:
        raise ValueError(f"p_real {p.shape} and labels {y.shape} must be equal, non-empty and 1-D")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p_real must be probabilities in [0, 1] (no NaN)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {np.unique(y)[:10].tolist()}")
    return p, y.astype(np.int64)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: ``edges`` (``n_bins + 1``, from 0.5 to 1) and per bin the
    number of predictions, their mean confidence and the share of them that are right (NaN for
    empty bins)."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Sum over bins of ``count / N * |accuracy - confidence|``."""
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] * gaps) / self.count.sum())


def reliability_bins(p_real: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Bin the predictions by confidence ``max(p, 1 - p)`` into ``n_bins`` equal-width bins over
    [0.5, 1]: bin ``i`` holds ``edges[i] < confidence <= edges[i + 1]``, the first also 0.5.

    The range starts at 0.5 because a binary prediction is never less confident than that; bins
    over [0, 1] would leave half of them empty.
    """
    p, y = _check(p_real, labels)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError(f"calibration n_bins must be an integer >= 1, got {n_bins}")
    n_bins = int(n_bins)
    predicted = (p > 0.5).astype(np.int64)
    confidence = np.maximum(p, 1.0 - p)
    correct = (predicted == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    # Right-closed bins: compared with the very edges the figure shows, so no rounding moves a point.
    which = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges=edges, count=count, confidence=mean_conf, accuracy=accuracy)


def expected_calibration_error(p_real: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE: ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over the :func:`reliability_bins`
    ``B_b``, where conf is the mean of ``max(p, 1 - p)`` in the bin and acc the share of its
    predictions (REAL when ``p > 0.5``) that are right. 0 when calibrated, at most 1; it is the
    same whichever class is called positive."""
    return reliability_bins(p_real, labels, n_bins).ece


def apply_temperature(p_real: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / temperature)`` in float32: p(REAL) made less (``temperature > 1``) or more
    (``< 1``) confident. It never reverses two scores and maps 0.5 to 0.5, so accuracy at 0.5 is
    unchanged and AUROC too (but for ties float32 may form right next to 0 and 1); scores of exactly
    0 or 1 stay there. At ``temperature`` 1 it gives float32 scores back bit for bit (the round trip through
    the logit is in float64)."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature={temperature} must be a finite number > 0 (1: no change)")
    p = np.asarray(p_real, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)
    return (1.0 / (1.0 + np.exp(-logit / temperature))).astype(np.float32)


# Scores are float32: 1 - 6e-8 is the largest below 1. Fitting clips logits to what float32 can tell apart,
# so a confidently wrong score of exactly 0 or 1 costs a large but finite loss instead of an infinite one.
FIT_LOGIT_LIMIT = 17.0
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(p_real: ArrayLike, labels: ArrayLike) -> float:
    """The temperature ``T`` that minimises the log loss of ``sigmoid(logit(p_real) / T)`` on these
    (validation) predictions (Guo et al. 2017's temperature scaling, for one logit). ``T > 1`` softens
    overconfident scores, ``T < 1`` sharpens underconfident ones (label smoothing leaves a model
    underconfident). One number: it keeps the order of the scores, so accuracy at 0.5 and AUROC do
    not move. Searched in :data:`TEMPERATURE_BOUNDS`."""
    from scipy.optimize import minimize_scalar  # scikit-learn's dependency; only fitting needs it

    p, y = _check(p_real, labels)
    with np.errstate(divide="ignore"):
        logit = np.clip(np.log(p) - np.log1p(-p), -FIT_LOGIT_LIMIT, FIT_LOGIT_LIMIT)
    sign = np.where(y == 1, 1.0, -1.0)

    def log_loss(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -sign * logit / np.exp(log_t))))

    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    found = minimize_scalar(log_loss, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


@dataclass(frozen=True)
class ThresholdSweep:
    """Every distinct split of the predictions by a threshold on p(REAL), with precision, recall
    and F1 of the positive class; thresholds increase."""

    threshold: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


def threshold_sweep(p_real: ArrayLike, labels: ArrayLike, positive: str = "REAL",
                    classes: Sequence[str] = CLASSES) -> ThresholdSweep:
    """Precision, recall and F1 of ``positive`` for each distinct split, an image being REAL when
    ``p_real > threshold`` (the metrics' rule), thresholds in [0, 1] as the metrics require.

    Each threshold lies midway between two neighbouring distinct scores, so it splits these
    predictions exactly as any threshold in that gap would, with the most room on both sides for
    scores not seen yet. The ends are midway between 0 and the lowest score (all REAL; left out
    when some score is 0, which no threshold in [0, 1] calls REAL) and between the highest score
    and 1 (all FAKE). Ratios with a zero denominator count as 0, as in the metrics.
    """
    p, y = _check(p_real, labels)
    if positive not in classes:
        raise ConfigError(f"positive class must be one of {list(classes)}, got {positive!r}")
    order = np.argsort(p, kind="stable")
    p, y = p[order], y[order]
    scores = np.unique(p)
    # Images at or below each distinct score: those called FAKE when the threshold sits just above it.
    below = np.searchsorted(p, scores, side="right")
    real_cum = np.concatenate([[0], np.cumsum(y)])
    called_fake = np.concatenate([[0], below])  # split j: the j lowest scores are FAKE
    real_in_fake = real_cum[called_fake]
    lower, upper = np.concatenate([[0.0], scores]), np.concatenate([scores, [1.0]])
    threshold = (lower + upper) / 2
    # The metrics compare in float32: a midpoint between two neighbouring float32 scores may round
    # up onto the upper one, which would then count as FAKE; the lower score splits the same way.
    threshold = np.where(threshold.astype(np.float32) < upper.astype(np.float32), threshold, lower)
    n, n_real = len(p), int(y.sum())
    if classes.index(positive) == 1:  # REAL positive: called REAL above the threshold
        tp, called, actual = n_real - real_in_fake, n - called_fake, n_real
    else:
        tp, called, actual = called_fake - real_in_fake, called_fake, n - n_real
    tp, called = tp.astype(np.float64), called.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(called > 0, tp / called, 0.0)
        recall = tp / actual if actual else np.zeros_like(tp)
        f1 = np.where(called + actual > 0, 2 * tp / (called + actual), 0.0)
    first = 1 if scores[0] == 0 else 0
    return ThresholdSweep(threshold=threshold[first:], precision=precision[first:], recall=recall[first:],
                          f1=f1[first:])


def choose_threshold(p_real: ArrayLike, labels: ArrayLike, method: str = "f1", target_precision: float | None = None,
                     positive: str = "REAL", classes: Sequence[str] = CLASSES) -> float:
    """A threshold on p(REAL) (REAL when ``p_real > threshold``) chosen on validation predictions.

    ``method="f1"``: the threshold of highest F1 of ``positive`` (ties: the lowest threshold).
    ``method="precision"``: among thresholds whose precision for ``positive`` reaches
    ``target_precision``, the one of highest recall of ``positive`` (ties: the higher precision);
    for REAL positive that is the lowest threshold reaching the target. A :class:`ConfigError` says
    when no threshold reaches it. Thresholds are those of :func:`threshold_sweep`.
    """
    if method not in METHODS:
        raise ConfigError(f"threshold method must be one of {list(METHODS)}, got {method!r}")
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise ValueError("choosing a threshold needs labels of both classes")
    sweep = threshold_sweep(p_real, labels, positive, classes)
    if method == "f1":
        return float(sweep.threshold[int(np.argmax(sweep.f1))])
    if target_precision is None or not 0 < target_precision <= 1:
        raise ConfigError(f"method 'precision' needs target_precision in (0, 1], got {target_precision}")
    reached = np.flatnonzero(sweep.precision >= target_precision - PRECISION_TOLERANCE)
    if len(reached) == 0:
        best = int(np.argmax(sweep.precision))
        raise ConfigError(
            f"no threshold reaches precision {target_precision} for {positive} on these {len(y)} predictions: "
            f"the highest is {sweep.precision[best]:.4f} (threshold {sweep.threshold[best]:.4g}, recall "
            f"{sweep.recall[best]:.4f}). Lower target_precision or choose by F1."
        )
    # lexsort's last key is the primary one: highest recall, then highest precision.
    best = reached[np.lexsort((sweep.precision[reached], sweep.recall[reached]))[-1]]
    return float(sweep.threshold[best])


def choose_unsure_band(p_real: ArrayLike, labels: ArrayLike, threshold: float, target_precision: float,
                       classes: Sequence[str] = CLASSES) -> tuple[float, float]:
    """The narrowest band ``(low, high)`` around ``threshold`` outside which both classes' answers
    reach ``target_precision`` on these (validation) predictions: REAL when ``p_real > high``,
    FAKE when ``p_real <= low``, UNSURE in between.

    ``high`` is the lowest cut at or above ``threshold`` whose REAL answers reach the target and
    ``low`` the highest cut at or below it whose FAKE answers do (cuts of :func:`threshold_sweep`,
    midway between scores); a class that reaches it nowhere gets no confident answers (``high=1``,
    ``low=0``). The two sides are independent, so together they give the narrowest such band.
    """
    if not 0 < target_precision <= 1:
        raise ConfigError(f"unsure target_precision must lie in (0, 1], got {target_precision}")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold={threshold} must lie in [0, 1]")
    real = threshold_sweep(p_real, labels, classes[1], classes)
    fake = threshold_sweep(p_real, labels, classes[0], classes)
    ok_high = (real.threshold >= threshold) & (real.precision >= target_precision - PRECISION_TOLERANCE)
    ok_low = (fake.threshold <= threshold) & (fake.precision >= target_precision - PRECISION_TOLERANCE)
    high = float(real.threshold[ok_high].min()) if ok_high.any() else 1.0
    low = float(fake.threshold[ok_low].max()) if ok_low.any() else 0.0
    return min(low, threshold), max(high, threshold)


def unsure_report(p_real: ArrayLike, labels: ArrayLike, band: Sequence[float]) -> dict[str, Any]:
    """Coverage (the share of confident answers) and accuracy on the confident ones, for the band
    ``(low, high)``: FAKE when ``p <= low``, REAL when ``p > high``, UNSURE between
    (``confident_accuracy`` is None when every answer is UNSURE)."""
    p, y = _check(p_real, labels)
    low, high = float(band[0]), float(band[1])
    fake, real = p <= low, p > high
    confident = fake | real
    right = (fake & (y == 0)) | (real & (y == 1))
    n = int(confident.sum())
    return {"band": [low, high], "coverage": float(confident.mean()) if len(p) else 0.0,
            "confident_accuracy": float(right.sum() / n) if n else None, "n_confident": n,
            "n_unsure": int(len(p) - n)}


ANSWERS = ("REAL", "FAKE", "UNSURE", "OUT_OF_SCOPE")  # the order the four-way shares are reported in


def answers_report(p_real: ArrayLike, labels: ArrayLike | None, classes: Sequence[str], threshold: float,
                   band: Sequence[float] | None = None, scope: ArrayLike | None = None,
                   scope_threshold: float | None = None) -> dict[str, Any]:
    """The four-way answers, as :func:`cifake.scoring.scorer.verdicts` gives them (out of scope first,
    then unsure, then the class): the share of each answer over all images and, with ``labels``, per
    true class, and the accuracy on the images answered with a class (``accuracy_answered``; None when
    none is)."""
    p = np.asarray(p_real, dtype=np.float64)
    out = np.zeros(len(p), dtype=bool)
    if scope is not None and scope_threshold is not None:
        out = np.asarray(scope, dtype=np.float64) > scope_threshold
    unsure = ~out & ((p > band[0]) & (p <= band[1]) if band is not None else np.zeros(len(p), dtype=bool))
    answered = ~out & ~unsure
    predicted = (p > threshold).astype(np.int64)
    names = {classes[0]: answered & (predicted == 0), classes[1]: answered & (predicted == 1), "UNSURE": unsure,
             "OUT_OF_SCOPE": out}

    def shares(mask: np.ndarray) -> dict[str, float]:
        n = int(mask.sum())
        return {name: float((chosen & mask).sum() / n) if n else 0.0 for name, chosen in names.items()}

    report: dict[str, Any] = {"n": len(p), "shares": shares(np.ones(len(p), dtype=bool)),
                              "answered": float(answered.mean()) if len(p) else 0.0,
                              "out_of_scope_threshold": None if scope_threshold is None else float(scope_threshold)}
    if labels is not None:
        y = np.asarray(labels)
        n = int(answered.sum())
        report["accuracy_answered"] = float((predicted[answered] == y[answered]).sum() / n) if n else None
        report["by_class"] = {name: shares(y == i) for i, name in enumerate(classes)}
    return report


def confident_accuracy_text(report: dict[str, Any]) -> str:
    """An :func:`unsure_report`'s confident accuracy for a log line: ``0.9937``, or what it means
    when there is none."""
    value = report["confident_accuracy"]
    return "none (every answer UNSURE)" if value is None else f"{value:.4f}"
