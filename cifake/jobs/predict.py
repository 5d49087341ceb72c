"""The prediction job behind ``predict.py``: REAL or FAKE for every image file under some paths,
from a checkpoint (``.ckpt``) or an exported model (``.onnx`` with its ``model.json``).

Every file found is listed in ``predictions.csv`` and ``predictions.jsonl``: with p(FAKE), p(REAL)
and the predicted class, or with the reason it could not be read (a broken image or a file that is
no image never stops the run).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cifake.data.augment import to_unit_float
from cifake.data.decode import decode_image
from cifake.data.scan import is_hidden
from cifake.errors import ConfigError, DataError
from cifake.jobs.evaluate import check_threshold, load_classifier, network_predictor
from cifake.explain import gradcam
from cifake.jobs.export import CONTRACT_FORMAT, choose_resample, trained_resample
from cifake.models.classifier import Classifier
from cifake.plots import overlay
from cifake.tta import check_tta, uint8_mean_over_views
from cifake.utils import friendly_errors, require, resolve_precision

log = logging.getLogger(__name__)
from cifake.configs import CONF_DIR  # noqa: E402
FIELDS = ("path", "predicted", "p_fake", "p_real", "threshold", "error", "gradcam")


@dataclass(frozen=True)
class Predictor:
    """A model that maps uint8 images ``(N, 3, S, S)`` to p(REAL) ``(N,)``, and what its inputs need."""

    p_real: Callable[[np.ndarray], np.ndarray]
    image_size: int
    resample: str | None  # the filter its training images were resized with, where recorded
    classes: tuple[str, ...]
    model: Classifier | None = None  # the PyTorch model, for Grad-CAM; None for ONNX
    device: torch.device | None = None


def checkpoint_predictor(ckpt_path: Path, device: torch.device, precision: str = "auto") -> Predictor:
    """A ``.ckpt`` written by train.py, on ``device``, in eval mode, at ``precision`` (``auto``:
    bf16 where the device computes it natively, as training chooses)."""
    model = load_classifier(ckpt_path).to(device).eval()
    precision = str(resolve_precision(precision, device.type))
    model.set_channels_last(model.uses_channels_last(device))
    predict = network_predictor(model, device, precision)

    def p_real(images: np.ndarray) -> np.ndarray:
        return predict(torch.from_numpy(images)).numpy()

    return Predictor(p_real, int(model.hparams.image_size), trained_resample(ckpt_path),
                     tuple(model.hparams.get("classes", ("FAKE", "REAL"))), model, device)


def with_tta(predictor: Predictor, tta: dict[str, Any]) -> Predictor:
    """``predictor`` with p(REAL) averaged over the test-time views ``tta["mode"]`` names (the same
    views evaluate.py averages over); unchanged for ``none``."""
    mode = tta.get("mode", "none")
    if mode == "none":
        return predictor
    base = predictor.p_real

    def p_real(images: np.ndarray) -> np.ndarray:
        as_tensor = lambda x: torch.from_numpy(base(x.numpy()))  # noqa: E731
        return uint8_mean_over_views(as_tensor, torch.from_numpy(images), mode, tta.get("shift", 1),
                                     tta.get("padding", "reflect")).numpy()

    return replace(predictor, p_real=p_real)


def read_contract(path: Path) -> dict[str, Any]:
    """The ``model.json`` that export.py wrote beside a ``model.onnx``."""
    if not path.is_file():
        raise ConfigError(f"{path} is missing: an .onnx model needs the model.json that export.py wrote beside it "
                          "(or pass contract=<its path>)")
    try:
        terms = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); export the checkpoint again with export.py") from err
    if not isinstance(terms, dict) or terms.get("format") != CONTRACT_FORMAT:
        raise ConfigError(f"{path} is not a contract written by this version's export.py "
                          f"(format {CONTRACT_FORMAT!r}); export the checkpoint again")
    return terms


def onnx_predictor(onnx_path: Path, contract_path: Path) -> Predictor:
    """An exported ``.onnx`` run by onnxruntime on the CPU, fed as its contract says."""
    import onnxruntime as ort  # only needed here; checkpoints never import it

    terms = read_contract(contract_path)
    inp, out = terms["input"], terms["output"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    divisor = np.float32(inp["divide_by"])

    def p_real(images: np.ndarray) -> np.ndarray:
        # float32 division, exactly as to_unit_float scales for training and the checkpoint path.
        return session.run([out["name"]], {inp["name"]: images.astype(np.float32) / divisor})[0].astype(np.float32)

    return Predictor(p_real, int(inp["image_size"]), inp["resample"], tuple(terms["classes"]))


def load_predictor(ckpt_path: str, contract: str | None, device: str, precision: str = "auto") -> Predictor:
    """A checkpoint or, for a ``.onnx`` file, the exported model with its contract (``contract``, or
    ``model.json`` beside it)."""
    path = Path(ckpt_path).expanduser()
    if path.suffix.lower() != ".onnx":
        return checkpoint_predictor(path, pick_device(device), precision)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r} is not a file; pass a model.onnx written by export.py")
    return onnx_predictor(path, Path(contract).expanduser() if contract else path.with_suffix(".json"))


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA where there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        yield from (Path(dirpath) / f for f in filenames if not is_hidden(f))


def find_files(inputs: str | Sequence[str]) -> list[Path]:
    """Every file named in ``inputs`` or under a folder named there (recursively; hidden files and
    folders such as ``.DS_Store`` left out), each folder's files sorted, each file once."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise ConfigError("inputs is empty; pass inputs=<file or folder> or inputs=[a.jpg,photos/]")
    files: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = sorted(_walk(path))
        elif path.is_file():
            found = [path]
        else:
            raise ConfigError(f"input {str(path)!r} does not exist; pass image files or folders, e.g. "
                              "inputs=photos/ or inputs=[a.jpg,b.png] (relative to the folder you run from)")
        for file in found:
            if (key := file.resolve()) not in seen:
                seen.add(key)
                files.append(file)
    if not files:
        raise DataError(f"no file found under {[str(i) for i in items]}; put the images to classify there "
                        "(JPEG, PNG, WebP, GIF, ... of any size)")
    return files


def unreadable_reason(err: Exception, path: Path) -> str:
    """Why ``path`` could not be used, in one line."""
    if path.is_file() and path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or not an image at all)"
    return f"{type(err).__name__}: {err}".strip()


def decode_all(files: Sequence[Path], size: int, resample: str) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode ``files`` to ``(n_ok, 3, size, size)`` uint8; the positions that decoded, and the
    reason for each that did not."""
    images, ok, bad = [], [], {}
    for i, path in enumerate(files):
        try:
            images.append(decode_image(path, size, resample)[0])
            ok.append(i)
        # Any file may turn up, and Pillow raises many kinds of error on hostile ones (SyntaxError,
        # struct.error, DecompressionBombError...): one bad file must not stop the run.
        except Exception as err:
            bad[i] = unreadable_reason(err, path)
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    return stacked, ok, bad


class GradcamWriter:
    """Grad-CAM overlays of the predicted class: one PNG per image, the image (as the model saw
    it) beside its heat map, both enlarged ``scale`` times, under ``folder``."""

    def __init__(self, predictor: Predictor, layer: str | None, folder: Path, limit: int | None, scale: int,
                 alpha: float) -> None:
        self.model = predictor.model
        self.device = predictor.device
        self.layer = layer or self.model.hparams.get("gradcam_layer")
        if self.layer is None:
            raise ConfigError("gradcam=true, but the checkpoint names no model.gradcam_layer; set "
                              "gradcam_layer=<a layer>, e.g. net.features.1.3")
        self.folder, self.left, self.scale, self.alpha = folder, limit, scale, alpha
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, images: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> list[str]:
        """Overlays for the first images of a batch while the limit lasts; the file written for each
        image ("" where none)."""
        n = len(images) if self.left is None else min(len(images), self.left)
        if n == 0:
            return [""] * len(images)
        maps = gradcam(self.model, to_unit_float(torch.from_numpy(images[:n]).to(self.device)), predicted[:n],
                       self.layer)
        written = []
        for image, cam, name in zip(images[:n], maps, names[:n], strict=True):
            both = np.concatenate([np.transpose(image, (1, 2, 0)) / 255.0, overlay(image, cam, self.alpha)], axis=1)
            png = Image.fromarray(np.clip(both * 255.0 + 0.5, 0, 255).astype(np.uint8))
            png = png.resize((png.width * self.scale, png.height * self.scale), Image.Resampling.NEAREST)
            png.save(self.folder / name)
            written.append(str(self.folder / name))
        if self.left is not None:
            self.left -= n
        return written + [""] * (len(images) - n)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def predict_files(files: Sequence[Path], predictor: Predictor, resample: str, threshold: float, batch_size: int,
                  out_dir: Path, explainer: GradcamWriter | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Predict every file in batches, writing ``predictions.csv`` and ``predictions.jsonl`` in
    ``out_dir`` row by row as they come; returns the rows."""
    classes = predictor.classes
    rows: list[dict[str, Any]] = []
    with ((out_dir / "predictions.csv").open("w", newline="") as csv_file,
          (out_dir / "predictions.jsonl").open("w") as jsonl_file,
          tqdm(total=len(files), desc="predict", unit="file", disable=not progress) as bar):
        writer = csv.writer(csv_file)
        writer.writerow(FIELDS)
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images, ok, bad = decode_all(chunk, predictor.image_size, resample)
            p = predictor.p_real(images) if len(images) else np.zeros(0, dtype=np.float32)
            predicted = (p > threshold).astype(np.int64)  # as binary_report and metrics.json count
            labels = [classes[int(c)] for c in predicted]
            overlays = [""] * len(ok)
            if explainer is not None:  # named by row, so every file gets its own
                names = [f"{start + i:06d}_{label}_{chunk[i].stem}.png" for i, label in zip(ok, labels, strict=True)]
                overlays = explainer.write(images, predicted, names)
            results = dict(zip(ok, zip(p.tolist(), labels, overlays, strict=True), strict=True))
            for i, path in enumerate(chunk):
                p_real, label, overlay_png = results.get(i, (None, "", ""))
                row = {"path": str(path), "predicted": label, "p_fake": None if p_real is None else 1.0 - p_real,
                       "p_real": p_real, "threshold": float(threshold), "error": bad.get(i, ""),
                       "gradcam": overlay_png}
                writer.writerow([row["path"], label, _number(row["p_fake"]), _number(p_real), f"{threshold:g}",
                                 row["error"], overlay_png])
                jsonl_file.write(json.dumps(row) + "\n")
                rows.append(row)
            bar.update(len(chunk))
    return rows


def summarize(rows: Sequence[dict[str, Any]], classes: Sequence[str], show: int) -> dict[str, Any]:
    """Images per predicted class and the unreadable files (the first ``show`` named)."""
    counts = Counter(r["predicted"] for r in rows if not r["error"])
    unreadable = [(r["path"], r["error"]) for r in rows if r["error"]]
    return {"files": len(rows), "predicted": {c: counts.get(c, 0) for c in classes},
            "unreadable": len(unreadable), "unreadable_examples": unreadable[:show]}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Predict every file under ``cfg.inputs`` with ``cfg.ckpt_path``; write ``predictions.csv``,
    ``predictions.jsonl`` (and Grad-CAM overlays with ``cfg.gradcam``) to the run folder. Returns
    the summary."""
    ckpt_path = require(cfg, "ckpt_path", "pass a checkpoint written by train.py or a model.onnx written by "
                        "export.py, e.g. ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt")
    inputs = require(cfg, "inputs", "pass the images to classify: inputs=<file or folder> or inputs=[a.jpg,photos/]")
    check_threshold(cfg.threshold)
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {cfg.batch_size}")
    inputs = OmegaConf.to_container(inputs) if OmegaConf.is_config(inputs) else inputs
    files = find_files(inputs)  # before loading the model: a mistyped path fails at once
    tta = cfg.get("tta") or {"mode": "none"}
    check_tta(tta["mode"], tta.get("shift", 1))
    predictor = with_tta(load_predictor(str(ckpt_path), cfg.contract, cfg.device, cfg.get("precision", "auto")), tta)
    resample = choose_resample(cfg.resample, predictor.resample, str(ckpt_path))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    explainer = None
    if cfg.gradcam and predictor.model is None:
        log.warning("Grad-CAM skipped: it needs the PyTorch checkpoint's gradients, and %s is an ONNX model; "
                    "pass the .ckpt to get overlays", ckpt_path)
    elif cfg.gradcam:
        explainer = GradcamWriter(predictor, cfg.gradcam_layer, out / "gradcam", cfg.gradcam_limit,
                                  cfg.gradcam_scale, cfg.gradcam_alpha)
    log.info("Predicting %d files with %s (%dx%d input, %s resampling, REAL when p_real > %g, TTA %s)",
             len(files), ckpt_path, predictor.image_size, predictor.image_size, resample, cfg.threshold, tta["mode"])
    rows = predict_files(files, predictor, resample, cfg.threshold, cfg.batch_size, out, explainer,
                         cfg.progress_bar)
    summary = summarize(rows, predictor.classes, cfg.show_unreadable)
    lines = [f"{summary['files']} files: " + ", ".join(f"{n} {c}" for c, n in summary["predicted"].items())
             + f", {summary['unreadable']} unreadable"]
    lines += [f"  unreadable: {path}: {why}" for path, why in summary["unreadable_examples"]]
    if summary["unreadable"] > len(summary["unreadable_examples"]):
        lines.append(f"  ... and {summary['unreadable'] - len(summary['unreadable_examples'])} more")
    lines.append(f"Written to {out}: predictions.csv, predictions.jsonl" + (", gradcam/" if explainer else ""))
    log.info("%s", "\n".join(lines))
    if summary["unreadable"] == summary["files"]:
        raise DataError(f"none of the {summary['files']} files could be read as an image (reasons in "
                        f"{out / 'predictions.csv'}), e.g. {rows[0]['path']}: {rows[0]['error']}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    """The ``cifake-predict`` console script (the same job as ``python predict.py``)."""
    friendly_errors(run)(cfg)
