"""The prediction job behind ``predict.py``: REAL or FAKE for every image file under some paths,
from any trained model file: a checkpoint (``.ckpt``), a forest (``.skops``) or an exported model
(``.onnx`` with its ``model.json``).

Every file found is listed in ``predictions.csv`` and ``predictions.jsonl``: with p(FAKE), p(REAL),
the predicted class and the precision and device that computed them, or with the reason it could
not be read (a broken image or a file that is no image never stops the run). Predicting from an
``.onnx`` file loads neither torch nor Lightning: this module imports them only through the scorer
of a checkpoint, and Grad-CAM only when asked.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import UnidentifiedImageError
from tqdm import tqdm

from cifake.core.atomic import atomic_path, bytes_on_disk, check_space, space_errors
from cifake.core.errors import ConfigError, DataError, require
from cifake.data.decode import decode_image
from cifake.data.scan import is_hidden
from cifake.scoring import Scorer, check_threshold, choose_resample, model_or_bundled, open_scorer, resolve_band
from cifake.scoring.scorer import OUT_OF_SCOPE, UNSURE, resolve_scope, scope_reason, verdicts

log = logging.getLogger(__name__)
FIELDS = ("path", "predicted", "p_fake", "p_real", "threshold", "error", "gradcam", "precision", "device",
          "out_of_scope")
RUN_SETTING = "hydra.run.dir (or paths.log_dir)"  # what moves predict.py's output folder


def _walk(folder: Path, problems: dict[Path, str]) -> Iterator[Path]:
    """The files under ``folder``; a sub-folder that cannot be listed goes into ``problems`` instead of
    stopping the walk (``os.walk`` would skip it silently)."""
    def unlisted(err: OSError) -> None:
        path = Path(err.filename)
        problems[path] = f"folder cannot be listed ({type(err).__name__}: {err.strerror}): nothing under it was read"

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        yield from (Path(dirpath) / f for f in filenames if not is_hidden(f))


def entry_problem(path: Path) -> str | None:
    """Why ``path`` cannot even be opened as an image file (``None``: it can be tried): a symbolic-link
    loop, a broken link, or a socket, FIFO or device (opening a FIFO would wait for a writer forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself): not a file"
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"
        return f"{type(err).__name__}: {err.strerror}"
    if not stat.S_ISREG(mode):
        kind = ("socket" if stat.S_ISSOCK(mode) else "FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode)
                else "special file")
        return f"a {kind}, not a regular file"
    return None


def _key(path: Path) -> Path:
    """What ``path`` is, to list each file once: its resolved path (itself where it cannot be resolved, as a loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's symlink loop
        return path.absolute()


class Found(NamedTuple):
    """What :func:`find_files` found: the ``files``, and why some of them cannot be read (``problems``)."""

    files: list[Path]
    problems: dict[Path, str]


def find_files(inputs: str | Sequence[str]) -> Found:
    """Every file named in ``inputs`` or under a folder named there (recursively; hidden files and
    folders such as ``.DS_Store`` left out), each folder's files sorted, each file once; and why some
    of them cannot be read at all (:func:`entry_problem`; folders that cannot be listed are listed
    with the reason). A bad entry never stops the search: it becomes one line of the output."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise ConfigError("inputs is empty; pass inputs=<file or folder> or inputs=[a.jpg,photos/]")
    files: list[Path] = []
    problems: dict[Path, str] = {}
    seen: set[Path] = set()
    for item in items:
        path = Path(str(item)).expanduser()
        walked: dict[Path, str] = {}
        if path.is_dir():
            found = list(_walk(path, walked))
            found = sorted([*found, *walked])  # the folders that could not be listed, in their place
        elif path.exists() or path.is_symlink():  # a file, or a link that a line of the output explains
            found = [path]
        else:
            raise ConfigError(f"input {str(path)!r} does not exist; pass image files or folders, e.g. "
                              "inputs=photos/ or inputs=[a.jpg,b.png] (relative to the folder you run from)")
        for file in found:
            if (key := _key(file)) not in seen:
                seen.add(key)
                files.append(file)
                problem = walked.get(file) or entry_problem(file)
                if problem is not None:
                    problems[file] = problem
    if not files:
        raise DataError(f"no file found under {[str(i) for i in items]}; put the images to classify there "
                        "(JPEG, PNG, WebP, GIF, ... of any size)")
    return Found(files, problems)


def unreadable_reason(err: Exception, path: Path) -> str:
    """Why ``path`` could not be used, in one line."""
    empty = False
    with contextlib.suppress(OSError):  # gone or unreachable meanwhile: the error says why
        empty = path.is_file() and path.stat().st_size == 0
    if empty:
        return "empty file (0 bytes)"
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or not an image at all)"
    return f"{type(err).__name__}: {err}".strip()


def decode_all(files: Sequence[Path], size: int, resample: str,
               problems: Mapping[Path, str] | None = None) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode ``files`` to ``(n_ok, 3, size, size)`` uint8; the positions that decoded, and the
    reason for each that did not (``problems``: files known to be unreadable, with the reason, never opened)."""
    images, ok, bad = [], [], {}
    for i, path in enumerate(files):
        if problems and path in problems:
            bad[i] = problems[path]
            continue
        try:
            images.append(decode_image(path, size, resample)[0])
            ok.append(i)
        # Any file may turn up, and Pillow raises many kinds of error on hostile ones (SyntaxError,
        # struct.error, DecompressionBombError...): one bad file must not stop the run.
        except Exception as err:
            bad[i] = unreadable_reason(err, path)
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    return stacked, ok, bad


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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Predict every file under ``cfg.inputs`` with ``cfg.ckpt_path``; write ``predictions.csv``,
    ``predictions.jsonl`` (and Grad-CAM overlays with ``cfg.gradcam``) to the run folder. Returns
    the summary."""
    ckpt_path = model_or_bundled(cfg.ckpt_path)
    inputs = require(cfg, "inputs", "pass the images to classify: inputs=<file or folder> or inputs=[a.jpg,photos/]")
    check_threshold(cfg.threshold)
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {cfg.batch_size}")
    inputs = OmegaConf.to_container(inputs) if OmegaConf.is_config(inputs) else inputs
    found = find_files(inputs)  # before loading the model: a mistyped path fails at once
    files = found.files
    scorer = open_scorer(ckpt_path, device=cfg.device, precision=cfg.scoring.precision, tta=cfg.tta,
                         contract=cfg.contract)
    if scorer.image_size is None:
        raise ConfigError(f"{ckpt_path} does not record the image size it was trained on; retrain it with this "
                          "version (model.image_size is recorded in every model file it writes)")
    resample = choose_resample(cfg.resample, scorer.resample, str(ckpt_path))
    band = resolve_band(cfg.unsure_band, scorer, cfg.threshold)
    scorer = resolve_scope(cfg.out_of_scope, dataclasses.replace(scorer, unsure_band=band))  # answering with them
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    explainer = None
    if cfg.gradcam and not scorer.explainable:
        log.warning("Grad-CAM skipped: it needs a PyTorch checkpoint's gradients, and %s is %s; pass the .ckpt to "
                    "get overlays", ckpt_path, "a forest" if scorer.kind == "forest" else "an ONNX model")
    elif cfg.gradcam:
        from cifake.evaluation.overlays import GradcamWriter  # torch, Grad-CAM and matplotlib: only when asked

        explainer = GradcamWriter(scorer, cfg.gradcam_layer, out / "gradcam", cfg.gradcam_limit,
                                  cfg.gradcam_scale, cfg.gradcam_alpha)
    log.info("Predicting %d files with %s (%dx%d input, %s resampling, REAL when p_real > %g, TTA %s%s)",
             len(files), ckpt_path, scorer.image_size, scorer.image_size, resample, cfg.threshold, scorer.tta["mode"],
             (f", UNSURE when {band[0]:.4f} < p_real <= {band[1]:.4f}" if band else "")
             + (f", OUT_OF_SCOPE when its out-of-scope score > {scorer.scope_threshold:.4f}"
                if scorer.scope_threshold is not None else ""))
    rows = predict_files(found, scorer, resample, cfg.threshold, cfg.batch_size, out, explainer, cfg.progress_bar)
    possible = [*([UNSURE] if band else []), *([OUT_OF_SCOPE] if scorer.scope_threshold is not None else [])]
    summary = summarize(rows, scorer.classes, cfg.show_unreadable, possible)
    lines = [f"{summary['files']} files: " + ", ".join(f"{n} {c}" for c, n in summary["predicted"].items())
             + f", {summary['unreadable']} unreadable"]
    read = [r for r in rows if not r["error"]]
    lines += [f"  {r['path']}: {r['predicted']} (p_real {r['p_real']:.4f}"
              + ("" if r["out_of_scope"] is None else f", out of scope {r['out_of_scope']:.2f}") + ")"
              for r in read[:cfg.show_verdicts]]
    if len(read) > cfg.show_verdicts:
        lines.append(f"  ... and {len(read) - cfg.show_verdicts} more in predictions.csv")
    lines += [f"  unreadable: {path}: {why}" for path, why in summary["unreadable_examples"]]
    if summary["unreadable"] > len(summary["unreadable_examples"]):
        lines.append(f"  ... and {summary['unreadable'] - len(summary['unreadable_examples'])} more")
    lines.append(f"Written to {out}: predictions.csv, predictions.jsonl" + (", gradcam/" if explainer else ""))
    log.info("%s", "\n".join(lines))
    if summary["unreadable"] == summary["files"]:
        raise DataError(f"none of the {summary['files']} files could be read as an image (reasons in "
                        f"{out / 'predictions.csv'}), e.g. {rows[0]['path']}: {rows[0]['error']}")
    return summary
