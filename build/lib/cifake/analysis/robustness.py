"""How well a classifier holds up when its test images are degraded (:mod:`cifake.data.degradations`:
JPEG re-compression, blur, down-and-up scaling, noise, mirroring), each at a few strengths,
against the clean baseline. A fake detector that keys on high-frequency artefacts tends to lose
them to exactly these operations, which images on the web go through all the time.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cifake.analysis.calibration import unsure_report
from cifake.analysis.metrics import binary_report
from cifake.core.errors import ConfigError
from cifake.data.degradations import BASELINE, Strength, perturb


@dataclass(frozen=True)
class RobustnessSettings:
    """How the robustness battery runs (``report.robustness``, conf/report/default.yaml): each
    perturbation's strengths (``{name: [strength, ...]}``), ``options[name]`` (extra keyword arguments of a
    perturbation), the noise ``seed`` and the images per ``batch_size``."""

    perturbations: Mapping[str, Sequence[Strength]]
    options: Mapping[str, Mapping[str, Any]]
    seed: int
    batch_size: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RobustnessSettings:
        """The settings of a ``report.robustness`` node (a DictConfig or a plain mapping)."""
        return cls(perturbations=dict(cfg["perturbations"]), options=dict(cfg["options"] or {}),
                   seed=int(cfg["seed"]), batch_size=int(cfg["batch_size"]))


def conditions(perturbations: Mapping[str, Sequence[Strength]]) -> list[tuple[str, Strength]]:
    """``(name, strength)`` pairs to evaluate: the ``none`` baseline first, then each strength of
    each perturbation in the order given."""
    pairs: list[tuple[str, Strength]] = [(BASELINE, None)]
    for name, strengths in perturbations.items():
        if isinstance(strengths, (str, bytes)) or not isinstance(strengths, Sequence):
            raise ConfigError(f"perturbation {name!r} needs a list of strengths, got {strengths!r}")
        pairs += [(str(name), s) for s in strengths]
    return pairs


def robustness_table(score: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
                     settings: RobustnessSettings, threshold: float, progress: str | None = "Robustness",
                     band: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Accuracy and AUROC of ``score`` on ``images`` ``(N, 3, H, W)`` uint8 under each
    perturbation and strength of ``settings``, plus the ``none`` baseline first.

    ``score`` takes a uint8 numpy batch and returns p(REAL) per image (a
    :class:`~cifake.scoring.Scorer`'s ``score``); it is called under ``torch.inference_mode``.
    Predictions count as REAL when ``p_real > threshold``, as in ``metrics.json``.
    ``settings.options[name]`` holds extra keyword arguments of a perturbation. Each condition's noise
    comes from its own generator seeded with ``settings.seed``, so the table does not depend on which
    other conditions are listed. Rows: ``{perturbation, strength, accuracy, auroc, n}``, and with an
    unsure ``band`` (low, high) also ``coverage`` and ``confident_accuracy``
    (:func:`cifake.analysis.calibration.unsure_report`).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need uint8 images (N, C, H, W) and N labels, got {images.dtype} {images.shape} "
                         f"and {labels.shape}")
    batch_size, seed, options = settings.batch_size, settings.seed, settings.options
    if batch_size < 1:
        raise ConfigError(f"robustness batch_size must be >= 1, got {batch_size}")
    pairs = conditions(settings.perturbations)
    # Fail on a bad name, strength or option now, not after minutes of predictions.
    probe = torch.tensor(images[:1])
    for name, strength in pairs:
        perturb(name, probe, strength, torch.Generator().manual_seed(seed), options.get(name))

    rows = []
    with tqdm(total=len(pairs) * len(images), desc=progress, unit="img", disable=progress is None,
              mininterval=1) as bar:
        for name, strength in pairs:
            scores = torch.from_numpy(condition_scores(score, images, name, strength, options.get(name), batch_size,
                                                       seed, bar.update))
            report = binary_report(scores, torch.from_numpy(labels).long(), float(threshold))
            row = {"perturbation": name, "strength": strength, "accuracy": report["accuracy"],
                   "auroc": report["auroc"], "n": report["n"]}
            if band is not None:
                unsure = unsure_report(scores.numpy(), labels, band)
                row.update(coverage=unsure["coverage"], confident_accuracy=unsure["confident_accuracy"])
            rows.append(row)
    return rows


def condition_scores(score: Callable[[np.ndarray], np.ndarray], images: np.ndarray, name: str, strength: Strength,
                     options: Mapping[str, Any] | None, batch_size: int, seed: int,
                     done: Callable[[int], Any] | None = None) -> np.ndarray:
    """p(REAL) of ``images`` after perturbation ``name`` at ``strength``, ``batch_size`` at a time;
    the noise comes from a generator seeded with ``seed``, so a condition's scores do not depend
    on what was scored before. ``done(n)`` is told after each batch (a progress bar)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.tensor(images[start:start + batch_size])  # a copy: the array may be read-only
            batch = perturb(name, batch, strength, generator, options)
            p = np.asarray(score(batch.cpu().numpy()), dtype=np.float32).reshape(-1)
            if len(p) != len(batch):
                raise ValueError(f"score returned {len(p)} probabilities for {len(batch)} images")
            out.append(p)
            if done is not None:
                done(len(batch))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _strength_text(strength: Strength) -> str:
    return "" if strength is None else f"{strength:g}"


def trained_with(name: str, strength: Strength, training: Mapping[str, Any] | None) -> str:
    """Whether a model trained on data settings ``training`` (its ``data`` config as the checkpoint
    records it) saw perturbation ``name`` in training: ``yes`` (the family, at this strength),
    ``family only`` (the family, at other strengths), ``no`` (held out), ``unknown`` (not recorded)."""
    if name == BASELINE:
        return ""
    if training is None:
        return "unknown"
    if name == "hflip":
        return "yes" if float(training.get("hflip") or 0) > 0 else "no"
    family = (training.get("degrade") or {}).get(name)  # jpeg, blur, scale, noise share their names
    if not family or float(family.get("p", 0)) <= 0:
        return "no"
    low, high = family["range"]
    return "yes" if strength is not None and low <= float(strength) <= high else "family only"


def robustness_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table with the change from the ``none`` baseline."""
    base = next((r for r in rows if r["perturbation"] == BASELINE), None)
    trained = any("trained" in r for r in rows)
    unsure = any("coverage" in r for r in rows)
    head = "| perturbation | strength |" + (" trained on |" if trained else "") + \
        " accuracy | Δ accuracy | AUROC | Δ AUROC | n |" + (" coverage | confident accuracy |" if unsure else "")
    rule = "|---|---:|" + ("---|" if trained else "") + "---:|---:|---:|---:|---:|" + ("---:|---:|" if unsure else "")
    lines = [head, rule]
    for r in rows:
        d_acc = f"{r['accuracy'] - base['accuracy']:+.4f}" if base else ""
        d_auroc = f"{r['auroc'] - base['auroc']:+.4f}" if base else ""
        line = f"| {r['perturbation']} | {_strength_text(r['strength'])} |"
        line += f" {r.get('trained', '')} |" if trained else ""
        line += f" {r['accuracy']:.4f} | {d_acc} | {r['auroc']:.4f} | {d_auroc} | {r['n']} |"
        if unsure:
            line += f" {r['coverage']:.4f} | {_number(r['confident_accuracy'])} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_robustness(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``robustness.csv`` (one row per condition, full precision) and ``robustness.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "robustness.csv", out_dir / "robustness.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        extra = [k for k in ("trained", "coverage", "confident_accuracy") if any(k in r for r in rows)]
        writer.writerow(["perturbation", "strength", "accuracy", "auroc", "n", *extra])
        for r in rows:
            writer.writerow([r["perturbation"], _strength_text(r["strength"]), f"{r['accuracy']:.6f}",
                             f"{r['auroc']:.6f}", r["n"],
                             *[r.get(k, "") if k == "trained" else _number(r[k], 6) for k in extra]])
    md_path.write_text(robustness_markdown(rows))
    return [csv_path, md_path]
