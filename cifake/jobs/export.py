"""The export job behind ``export.py``: a checkpoint as ``model.onnx`` plus ``model.json``, the
contract that says how to turn an image file into the model's input and what its output means.

The ONNX graph takes float32 images ``(batch, 3, S, S)``, RGB, scaled to [0, 1] by dividing by 255,
and returns ``p_real`` ``(batch,)``: the probability of REAL (label 1), the sigmoid included, so a
consumer needs nothing but the contract and onnxruntime. The sigmoid lives in the export wrapper
:class:`ProbabilityOfReal`, not in the network, which keeps emitting a logit for the loss.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifake.analysis.calibration import apply_temperature
from cifake.core.errors import ConfigError, require
from cifake.data.labels import CLASSES
from cifake.evaluation.folder import FOLDER_FILE
from cifake.models.classifier import Classifier
from cifake.models.scope import RECORD_KEYS, ScopedNetwork, scope_from_record
from cifake.scoring import check_threshold, choose_resample, model_kind
from cifake.scoring.network import (
    SCOPE_KEY,
    TEMPERATURE_KEY,
    Answering,
    TrainingRecord,
    read_checkpoint,
    rebuild_classifier,
    trained_resample,
)
from cifake.scoring.onnx_contract import CONTRACT_FORMAT, INPUT_NAME, OUTPUT_NAME, PIXEL_DIVISOR, SCOPE_OUTPUT_NAME
from cifake.scoring.weights import BUNDLED_DIR, CARD_FILE

log = logging.getLogger(__name__)



class ProbabilityOfReal(nn.Module):
    """``net`` followed by the sigmoid that training leaves to the loss: float images
    ``(N, 3, H, W)`` in [0, 1] -> p(REAL) ``(N,)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images))


def export_wrapper(model: Classifier, scope: dict[str, Any] | None) -> nn.Module:
    """What the ONNX graph computes: p(REAL), and the out-of-scope score beside it where the
    checkpoint stores one (``scope``, its :data:`SCOPE_KEY` record)."""
    if scope is None:
        return ProbabilityOfReal(model.net).eval()
    head, _ = scope_from_record(scope)
    return ScopedNetwork(model.net, head).eval()


def export_onnx(model: Classifier, path: Path, opset: int, dynamo: bool, scope: dict[str, Any] | None = None) -> None:
    """Write ``model``'s network with the sigmoid as ONNX at ``path``: input ``images``
    ``(batch, 3, S, S)`` float32, output ``p_real`` ``(batch,)`` (and ``out_of_scope`` ``(batch,)`` with a
    ``scope``), any batch size."""
    size = int(model.hparams.image_size)
    wrapper = export_wrapper(model, scope)
    outputs = [OUTPUT_NAME] if scope is None else [OUTPUT_NAME, SCOPE_OUTPUT_NAME]
    # Two images, not one: a batch of one would let the tracer specialise the batch axis to 1.
    example = (torch.rand(2, 3, size, size),)
    names = {"input_names": [INPUT_NAME], "output_names": outputs, "opset_version": opset, "verbose": False}
    for name in ("onnxscript", "onnx_ir"):  # their optimiser passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        if dynamo:
            # A named axis ("batch") is dynamic and keeps its name in the file; external_data=False:
            # one self-contained file (the report's VGG is far below ONNX's 2 GB limit).
            torch.onnx.export(wrapper, example, str(path), dynamo=True, dynamic_shapes={"images": {0: "batch"}},
                              external_data=False, **names)
        else:
            with warnings.catch_warnings():  # the deprecation notice is about the choice we made
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(wrapper, example, str(path), dynamo=False,
                                  dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]}, **names)


def contract(model: Classifier, onnx_file: str, source: str, resample: str, answering: Answering, opset: int,
             dynamo: bool) -> dict[str, Any]:
    """``model.json``: everything a consumer needs to feed an image file to ``onnx_file`` and
    read its output, without this package, answering as ``answering`` says."""
    threshold, unsure_band, temperature, scope = (answering.threshold, answering.band, answering.temperature,
                                                  answering.scope)
    size = int(model.hparams.image_size)
    classes = list(model.hparams.get("classes", CLASSES))
    return {
        "format": CONTRACT_FORMAT,
        "model_file": onnx_file,
        "source_checkpoint": source,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", 3, size, size],
            "channel_order": "RGB",
            "image_size": size,
            "divide_by": PIXEL_DIVISOR,
            "range": [0.0, 1.0],
            "preprocessing": (
                f"open with Pillow (first frame of animations), convert to RGB (alpha dropped, palettes and grey "
                f"expanded), resize the whole image to {size}x{size} with Pillow's {resample} filter (aspect ratio "
                f"not kept; Pillow antialiases when it shrinks), then float32 pixel / {PIXEL_DIVISOR:g} in NCHW"
            ),
            "resample": resample,
            "resample_library": "Pillow",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch"],
            "meaning": f"probability that the image is {classes[1]} (label 1); p({classes[0]}) = 1 - {OUTPUT_NAME}"
                       + ("" if temperature is None else
                          f"; calibrated: sigmoid(logit({OUTPUT_NAME}) / temperature), after averaging any "
                          "test-time views, before the threshold and the unsure band"),
        },
        "temperature": None if temperature is None else float(temperature),
        "classes": classes,
        "labels": {name: i for i, name in enumerate(classes)},
        "threshold": float(threshold),
        "decision": f"{classes[1]} when {OUTPUT_NAME} > threshold, else {classes[0]}"
                    + ("; UNSURE when unsure_band[0] < p_real <= unsure_band[1]" if unsure_band else ""),
        "unsure_band": None if unsure_band is None else [float(v) for v in unsure_band],
        "out_of_scope": None if scope is None else {
            "output": SCOPE_OUTPUT_NAME, **{key: scope[key] for key in RECORD_KEYS},
            "meaning": "how unlike the training images the input is: sqrt(min over classes of the squared Mahalanobis "
                       "distance of the network's penultimate features / their dimension), on the image as it is (no "
                       "test-time views); OUT_OF_SCOPE when above threshold, before the unsure band and the threshold"},
        "opset": opset,
        "exporter": f"torch.onnx.export({'dynamo=True' if dynamo else 'dynamo=False (TorchScript)'})",
        "torch_version": torch.__version__,
    }


def check_parity(model: Classifier, onnx_path: Path, batch_size: int, atol: float, seed: int,
                 scope: dict[str, Any] | None = None) -> float:
    """Run the exported file in onnxruntime and the network in PyTorch on the same random batch;
    return the largest difference in p(REAL) (and in the out-of-scope score, with a ``scope``), or raise
    if it exceeds ``atol``."""
    import onnxruntime as ort  # only the export and ONNX prediction need it

    size = int(model.hparams.image_size)
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = export_wrapper(model, scope)(images)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = [OUTPUT_NAME] if scope is None else [OUTPUT_NAME, SCOPE_OUTPUT_NAME]
    got = session.run(outputs, {INPUT_NAME: images.numpy()})
    gap = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    if any(g.shape != e.shape for g, e in zip(got, expected, strict=True)) or not gap <= atol:
        raise RuntimeError(f"{onnx_path}: onnxruntime and PyTorch differ by {gap:.2e} (> {atol:g}) on random "
                           "inputs; please report this as a bug")
    return gap


FORMATS = ("onnx", "safetensors", "bundled")


def run_record(run: Path) -> dict[str, Any]:
    """What a training run folder says about itself: its ``metrics.json`` (the test evaluation),
    ``results.json`` (``run``: commit, machine, wall time, when recorded), ``robustness.md``, the
    experiment and the overrides it was started with, and the folders of one class scored with it
    (``folders/<name>/folder.json``: ``evaluate.py folder=... hydra.run.dir=<run>/folders/<name>``)."""
    def read(name: str) -> Any:
        path = run / name
        return json.loads(path.read_text()) if path.is_file() else None

    config = run / ".hydra" / "config.yaml"
    overrides = run / ".hydra" / "overrides.yaml"
    robustness = run / "robustness.md"
    return {"metrics": read("metrics.json"), "results": read("results.json") or {},
            "robustness": robustness.read_text() if robustness.is_file() else None,
            "config": OmegaConf.load(config) if config.is_file() else None,
            "overrides": [str(o) for o in OmegaConf.load(overrides)] if overrides.is_file() else None,
            "folders": [json.loads(path.read_text()) for path in sorted(run.glob(f"folders/*/{FOLDER_FILE}"))]}


def export_safetensors(cfg: DictConfig, model: Classifier, raw: dict[str, Any], path: Path, resample: str,
                       folder: Path, card: Path) -> dict[str, Any]:
    """``model.safetensors`` and ``config.json`` in ``folder`` and the model card at ``card``, with the
    figures and the recipe of the run folder the checkpoint lies in; the export scored against the
    checkpoint on random images (``cfg.check``). Returns the config."""
    from cifake.export.safetensors import card_text, write_config, write_weights
    from cifake.scoring.weights import weights_scorer

    run = path.resolve().parent.parent if path.resolve().parent.name == "checkpoints" else path.resolve().parent
    record = run_record(run)
    made = record["results"].get("run") or {}
    overrides = record["overrides"]
    command = None if overrides is None else " ".join(["python train.py", *overrides])
    recipe = {"experiment": None if record["config"] is None else record["config"].get("task_name"),
              "command": command, "seed": None if record["config"] is None else record["config"].get("seed"),
              "commit": cfg.card.commit or made.get("commit"), "machine": cfg.card.machine or made.get("machine"),
              "train_time": cfg.card.train_time or made.get("train_time"), "source_checkpoint": str(path),
              "export_command": " ".join(["python export.py", *(HydraConfig.get().overrides.task
                                                                 if HydraConfig.initialized() else [])])}
    folder.mkdir(parents=True, exist_ok=True)
    weights = write_weights(model.net, folder, raw.get(SCOPE_KEY))
    metrics = record["metrics"]
    config = write_config(folder, weights, model.hparams, resample, Answering.of_checkpoint(raw, cfg.threshold),
                          TrainingRecord.of_checkpoint(raw), recipe, metrics=metrics)
    parameters = sum(p.numel() for p in model.net.parameters())
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(card_text(config, metrics, record["robustness"], parameters, record["folders"]))
    if metrics is None:
        log.warning("%s holds no metrics.json (train.py evaluate=true writes it): the model card has no figures", run)
    if cfg.check.enabled:  # the export, opened as every job opens it, against the checkpoint's own network
        import torch

        size = int(model.hparams.image_size)
        images = torch.randint(0, 256, (cfg.check.batch_size, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(cfg.check.seed)).numpy()
        exported = weights_scorer(weights, "cpu", "32-true").score(images)
        with torch.no_grad():
            expected = torch.sigmoid(model.net(torch.from_numpy(images).float() / 255.0)).numpy()
        gap = float(abs(apply_temperature(expected, raw.get(TEMPERATURE_KEY) or 1.0) - exported).max())
        if not gap <= cfg.check.atol:
            raise RuntimeError(f"{weights}: the export and the checkpoint differ by {gap:.2e} (> {cfg.check.atol:g}) "
                               "on random images; please report this as a bug")
        log.info("The safetensors export matches the checkpoint on %d random images (largest difference %.1e)",
                 cfg.check.batch_size, gap)
    log.info("Exported %s -> %s (%.2f MB, sha256 %s), %s and the model card %s", path, weights,
             weights.stat().st_size / 1e6, config["weights"]["sha256"][:16], folder / "config.json", card)
    return config


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format`` says: ``onnx``, ``<run>/model.onnx`` and its
    ``model.json``; ``safetensors``, ``model.safetensors``, ``config.json`` and the model card
    ``README.md`` in the run folder; ``bundled``, the same weights and config as the package's bundled
    model (``cifake/bundled/``) with the card at ``card.path``. Returns the contract or the config."""
    ckpt_path = require(cfg, "ckpt_path", "pass the checkpoint to export, e.g. "
                        "ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}; choose one of {list(FORMATS)}")
    check_threshold(cfg.threshold)
    model_kind(ckpt_path, allowed=("checkpoint",))  # a forest or an .onnx has no network to export
    path = Path(ckpt_path).expanduser()
    raw = read_checkpoint(path)
    model = rebuild_classifier(raw, path).eval()
    resample = choose_resample(cfg.resample, trained_resample(raw), str(ckpt_path))
    out = Path(cfg.paths.output_dir)
    if cfg.format == "safetensors":
        return export_safetensors(cfg, model, raw, path, resample, out, out / CARD_FILE)
    if cfg.format == "bundled":
        return export_safetensors(cfg, model, raw, path, resample, BUNDLED_DIR, Path(cfg.card.path))
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path, cfg.opset, cfg.dynamo, raw.get(SCOPE_KEY))
    terms = contract(model, onnx_path.name, str(ckpt_path), resample, Answering.of_checkpoint(raw, cfg.threshold),
                     cfg.opset, cfg.dynamo)
    (out / "model.json").write_text(json.dumps(terms, indent=2) + "\n")
    if cfg.check.enabled:
        gap = check_parity(model, onnx_path, cfg.check.batch_size, cfg.check.atol, cfg.check.seed, raw.get(SCOPE_KEY))
        log.info("onnxruntime matches PyTorch on %d random images (largest difference %.1e)", cfg.check.batch_size,
                 gap)
    log.info("Exported %s -> %s (%.1f MB) and its contract %s: input %s %s float32 in [0, 1], output %s",
             ckpt_path, onnx_path, onnx_path.stat().st_size / 1e6, out / "model.json", INPUT_NAME,
             terms["input"]["shape"], OUTPUT_NAME)
    return terms
