"""The export job behind ``export.py``: a checkpoint as ``model.onnx`` plus ``model.json``, the contract
that says how to turn an image file into the model's input and what its output means
(:mod:`cifake.export.onnx`), or as a safetensors export with its model card (:mod:`cifake.export.safetensors`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cifake.core.errors import ConfigError, require
from cifake.export.onnx import CONTRACT_FILE, check_parity, write_onnx_export
from cifake.export.run_folder import run_folder, run_record, training_recipe
from cifake.export.safetensors import check_weights, write_safetensors_export
from cifake.models.classifier import Classifier
from cifake.scoring import check_threshold, choose_resample, model_kind
from cifake.scoring.network import TEMPERATURE_KEY, Answering, read_checkpoint, rebuild_classifier, trained_resample
from cifake.scoring.onnx_contract import INPUT_NAME, OUTPUT_NAME
from cifake.scoring.weights import BUNDLED_DIR, CARD_FILE

log = logging.getLogger(__name__)

FORMATS = ("onnx", "safetensors", "bundled")


def export_safetensors(cfg: DictConfig, model: Classifier, raw: dict[str, Any], path: Path, resample: str,
                       folder: Path, card: Path) -> dict[str, Any]:
    """``model.safetensors`` and ``config.json`` in ``folder`` and the model card at ``card``, with the
    figures and the recipe of the run folder the checkpoint lies in; the export scored against the
    checkpoint on random images (``cfg.check``). Returns the config."""
    run = run_folder(path)
    record = run_record(run)
    command = " ".join(["python export.py", *(HydraConfig.get().overrides.task if HydraConfig.initialized() else [])])
    recipe = training_recipe(record, path, cfg.card, command)
    weights, config = write_safetensors_export(model, raw, cfg.threshold, resample, record, recipe, folder, card)
    if record["metrics"] is None:
        log.warning("%s holds no metrics.json (train.py evaluate=true writes it): the model card has no figures", run)
    if cfg.check.enabled:
        gap = check_weights(model, weights, raw.get(TEMPERATURE_KEY), cfg.check.batch_size, cfg.check.atol,
                            cfg.check.seed)
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
    answering = Answering.of_checkpoint(raw, cfg.threshold)
    onnx_path, terms = write_onnx_export(model, out, str(ckpt_path), resample, answering, cfg.opset, cfg.dynamo)
    if cfg.check.enabled:
        gap = check_parity(model, onnx_path, cfg.check.batch_size, cfg.check.atol, cfg.check.seed, answering.scope)
        log.info("onnxruntime matches PyTorch on %d random images (largest difference %.1e)", cfg.check.batch_size,
                 gap)
    log.info("Exported %s -> %s (%.1f MB) and its contract %s: input %s %s float32 in [0, 1], output %s",
             ckpt_path, onnx_path, onnx_path.stat().st_size / 1e6, out / CONTRACT_FILE, INPUT_NAME,
             terms["input"]["shape"], OUTPUT_NAME)
    return terms
