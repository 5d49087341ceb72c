"""Scoring the files :func:`cifake.data.inputs.find_files` found, as ``predict.py`` does: one row per file
(p(FAKE), p(REAL), the answer of four, the precision and device that computed it, or why it could not be
read) written to ``predictions.csv`` and ``predictions.jsonl`` as the rows come (:func:`predict_files`), and
the images per answer (:func:`summarize`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cifake.core.atomic import atomic_path, bytes_on_disk, check_space, space_errors
from cifake.data.inputs import Found, decode_all
from cifake.scoring import Scorer
from cifake.scoring.scorer import OUT_OF_SCOPE, UNSURE, scope_reason, verdicts

FIELDS = ("path", "predicted", "p_fake", "p_real", "threshold", "error", "gradcam", "precision", "device",
          "out_of_scope")
RUN_SETTING = "hydra.run.dir (or paths.log_dir)"  # what moves predict.py's output folder


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def predict_files(found: Found, scorer: Scorer, resample: str, threshold: float, batch_size: int, out_dir: Path,
                  explainer: Any = None, progress: bool = True) -> list[dict[str, Any]]:
    """Predict every file :func:`find_files` found in batches, writing ``predictions.csv`` and
    ``predictions.jsonl`` in ``out_dir`` row by row as they come (into ``.partial`` files, renamed into
    place when whole); with the scorer's unsure band (low, high) (``scorer.unsure_band``), p(REAL) in
    ``(low, high]`` is answered ``UNSURE``. Each scored row names the precision and device that
    computed it (:attr:`Scorer.computed`); ``found.problems`` are rows with their reason.
    Returns the rows."""
    files, problems, band = found.files, found.problems, scorer.unsure_band
    classes = scorer.classes
    computed = scorer.computed
    rows: list[dict[str, Any]] = []
    # Rows of ~200 and ~350 bytes besides the path: checked before, and a disk that fills anyway is the
    # same one line; each file is written whole (a .partial file renamed at the end) or not at all.
    needed = bytes_on_disk([sum(len(str(f)) + 200 for f in files), sum(len(str(f)) + 350 for f in files)], out_dir)
    what = f"the predictions of {len(files)} files"
    check_space(out_dir, needed, what, RUN_SETTING)
    with (atomic_path(out_dir / "predictions.csv") as csv_path,
          atomic_path(out_dir / "predictions.jsonl") as jsonl_path,
          space_errors(out_dir, needed, what, RUN_SETTING),
          csv_path.open("w", newline="") as csv_file, jsonl_path.open("w") as jsonl_file,
          tqdm(total=len(files), desc="predict", unit="file", disable=not progress) as bar):
        writer = csv.writer(csv_file)
        writer.writerow(FIELDS)
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images, ok, bad = decode_all(chunk, scorer.image_size, resample, problems)
            p = scorer.p_real(images, batch_size)
            scope = scorer.out_of_scope(images, batch_size)
            predicted = (p > threshold).astype(np.int64)  # as binary_report and metrics.json count
            labels = verdicts(p, classes, threshold, band, scope, scorer.scope_threshold)
            overlays = [""] * len(ok)
            if explainer is not None:  # named by row, so every file gets its own
                names = [f"{start + i:06d}_{label}_{chunk[i].stem}.png" for i, label in zip(ok, labels, strict=True)]
                overlays = explainer.write(images, predicted, names)
            distances = [None] * len(ok) if scope is None else scope.tolist()
            results = dict(zip(ok, zip(p.tolist(), labels, overlays, distances, strict=True), strict=True))
            for i, path in enumerate(chunk):
                p_real, label, overlay_png, distance = results.get(i, (None, "", "", None))
                row = {"path": str(path), "predicted": label, "p_fake": None if p_real is None else 1.0 - p_real,
                       "p_real": p_real, "threshold": float(threshold), "error": bad.get(i, ""),
                       "gradcam": overlay_png, **{k: None if p_real is None else v for k, v in computed.items()},
                       "out_of_scope": distance}
                if label == OUT_OF_SCOPE:
                    row["reason"] = scope_reason(distance, scorer.scope_settings)
                writer.writerow([row["path"], label, _number(row["p_fake"]), _number(p_real), f"{threshold:g}",
                                 row["error"], overlay_png, row["precision"] or "", row["device"] or "",
                                 _number(distance)])
                jsonl_file.write(json.dumps(row) + "\n")
                rows.append(row)
            bar.update(len(chunk))
    return rows


def summarize(rows: Sequence[dict[str, Any]], classes: Sequence[str], show: int,
              possible: Sequence[str] = ()) -> dict[str, Any]:
    """Images per answer (the classes; UNSURE and OUT_OF_SCOPE where given or ``possible``) and the
    unreadable files (the first ``show`` named)."""
    counts = Counter(r["predicted"] for r in rows if not r["error"])
    unreadable = [(r["path"], r["error"]) for r in rows if r["error"]]
    answers = [*classes, *(extra for extra in (UNSURE, OUT_OF_SCOPE) if counts.get(extra) or extra in possible)]
    return {"files": len(rows), "predicted": {c: counts.get(c, 0) for c in answers},
            "unreadable": len(unreadable), "unreadable_examples": unreadable[:show]}


def summary_lines(rows: Sequence[dict[str, Any]], summary: dict[str, Any], show: int, out: Path,
                  gradcam: bool) -> list[str]:
    """What predict.py tells at the end: the images per answer (``summary``: :func:`summarize`), the first
    ``show`` answers, the unreadable files it names and where the files were written (``gradcam``: with the
    overlays' folder)."""
    lines = [f"{summary['files']} files: " + ", ".join(f"{n} {c}" for c, n in summary["predicted"].items())
             + f", {summary['unreadable']} unreadable"]
    read = [r for r in rows if not r["error"]]
    lines += [f"  {r['path']}: {r['predicted']} (p_real {r['p_real']:.4f}"
              + ("" if r["out_of_scope"] is None else f", out of scope {r['out_of_scope']:.2f}") + ")"
              for r in read[:show]]
    if len(read) > show:
        lines.append(f"  ... and {len(read) - show} more in predictions.csv")
    lines += [f"  unreadable: {path}: {why}" for path, why in summary["unreadable_examples"]]
    if summary["unreadable"] > len(summary["unreadable_examples"]):
        lines.append(f"  ... and {summary['unreadable'] - len(summary['unreadable_examples'])} more")
    lines.append(f"Written to {out}: predictions.csv, predictions.jsonl" + (", gradcam/" if gradcam else ""))
    return lines
