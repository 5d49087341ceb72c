"""Scoring a folder of images of one class (``evaluate.py folder=<dir> folder_class=REAL``): the share
answered with each of the four answers (the class, the other class, UNSURE, OUT_OF_SCOPE), with the
model's own figures on CIFAKE's test split beside them. What tells how a detector meets images from
outside CIFAKE, such as the photo set of ``python -m cifake.tools.photos`` (docs/photos.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cifake.analysis.calibration import answers_report
from cifake.analysis.metrics import headline
from cifake.core.atomic import atomic_path
from cifake.core.errors import ConfigError, DataError
from cifake.data.decode import decode_image
from cifake.data.scan import folder_files
from cifake.scoring import Scorer
from cifake.scoring.scorer import verdicts  # the same answers as predict.py and the server give

log = logging.getLogger(__name__)
FOLDER_FILE = "folder.json"


def cifake_figures(scorer: Scorer) -> dict[str, Any] | None:
    """The model's figures on CIFAKE's test split as its files record them: a checkpoint's run folder
    ``metrics.json``, a safetensors export's ``config.json`` (``evaluation``); None where none is kept."""
    source = Path(scorer.source)
    if scorer.kind == "safetensors":
        try:
            return json.loads((source.parent / "config.json").read_text()).get("evaluation")
        except (OSError, ValueError):
            return None
    run = source.parent.parent if source.parent.name == "checkpoints" else source.parent
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return headline(metrics)


def score_folder(scorer: Scorer, folder: Path, label: str, resample: str, threshold: float,
                 band: tuple[float, float] | None, batch_size: int, out_dir: Path) -> dict[str, Any]:
    """Score every image under ``folder`` (all of class ``label``) and write ``folder.json`` in ``out_dir``:
    the four-way shares, each file's answer, the unreadable files and the model's CIFAKE figures."""
    if label not in scorer.classes:
        raise ConfigError(f"folder_class={label!r}; the model's classes are {list(scorer.classes)}")
    files = folder_files(folder)
    images, kept, unreadable = [], [], {}
    size = int(scorer.image_size or 32)
    for path in tqdm(files, desc="Decoding (folder)", unit="file", disable=len(files) < 100):
        try:
            images.append(decode_image(path, size, resample)[0])
            kept.append(path)
        # Any file may turn up, and Pillow raises many kinds of error on hostile ones (SyntaxError, struct.error,
        # DecompressionBombError...): one bad file is listed with its reason, never the end of the run.
        except Exception as err:
            unreadable[str(path)] = f"{type(err).__name__}: {err}"
    if not kept:
        raise DataError(f"none of the {len(files)} files under {folder} could be read as an image")
    pixels = np.stack(images)
    p_real = scorer.p_real(pixels, batch_size, progress="Scoring (folder)")
    scope = scorer.out_of_scope(pixels, batch_size)
    labels = np.full(len(kept), scorer.classes.index(label))
    answers = answers_report(p_real, labels, scorer.classes, threshold, band, scope, scorer.scope_threshold)
    said = verdicts(p_real, scorer.classes, threshold, band, scope, scorer.scope_threshold)
    report = {"folder": str(folder), "class": label, "model": scorer.source, "threshold": threshold,
              "unsure_band": None if band is None else list(band), "tta": dict(scorer.tta),
              "out_of_scope_threshold": scorer.scope_threshold, "n": len(kept), "unreadable": unreadable,
              "shares": answers["by_class"][label], "cifake_test": cifake_figures(scorer),
              "files": [{"path": str(path), "answer": answer, "p_real": float(p),
                         "out_of_scope": None if scope is None else float(d)}
                        for path, answer, p, d in zip(kept, said, p_real,
                                                      scope if scope is not None else [None] * len(kept),
                                                      strict=True)]}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / FOLDER_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", folder_summary(report))
    return report


def folder_summary(report: Mapping[str, Any]) -> str:
    """A few lines: the shares of each answer on the folder, and the model's CIFAKE figures beside them."""
    shares = ", ".join(f"{100 * v:.1f}% {k}" for k, v in report["shares"].items())
    lines = [f"{report['n']} images of {report['folder']} (all {report['class']}): {shares}"
             + (f"; {len(report['unreadable'])} unreadable" if report["unreadable"] else "")]
    cifake = report["cifake_test"]
    if cifake:
        answers = cifake.get("answers") or {}
        lines.append(f"The model on CIFAKE's test split (as recorded with it): accuracy {cifake.get('accuracy')}"
                     + (f", {100 * answers['answered']:.1f}% answered, accuracy on those "
                        f"{answers['accuracy_answered']:.4f}, {100 * answers['shares']['OUT_OF_SCOPE']:.1f}% out "
                        "of scope" if answers else ""))
    else:
        lines.append("The model's CIFAKE figures are not recorded with it (evaluate it on data.root=<cifake>)")
    return "\n".join(lines)
