"""The prediction job behind ``predict.py``: REAL or FAKE for every image file under some paths,
from any trained model file: a checkpoint (``.ckpt``), a forest (``.skops``) or an exported model
(``.onnx`` with its ``model.json``).

Every file found (:func:`cifake.data.inputs.find_files`) is listed in ``predictions.csv`` and
``predictions.jsonl`` (:func:`cifake.evaluation.file_predictions.predict_files`): with p(FAKE), p(REAL),
the predicted class and the precision and device that computed them, or with the reason it could
not be read (a broken image or a file that is no image never stops the run). Predicting from an
``.onnx`` file loads neither torch nor Lightning: this module imports them only through the scorer
of a checkpoint, and Grad-CAM only when asked.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifake.core.errors import ConfigError, DataError, require
from cifake.data.inputs import find_files
from cifake.evaluation.file_predictions import predict_files, summarize, summary_lines
from cifake.scoring import check_threshold, choose_resample, model_or_bundled, open_scorer, resolve_band
from cifake.scoring.scorer import OUT_OF_SCOPE, UNSURE, resolve_scope

log = logging.getLogger(__name__)


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
        from cifake.models.gradcam import GradcamWriter  # torch, Grad-CAM and matplotlib: only when asked

        explainer = GradcamWriter(scorer.model, scorer.device, cfg.gradcam_layer, out / "gradcam", cfg.gradcam_limit,
                                  cfg.gradcam_scale, cfg.gradcam_alpha)
    log.info("Predicting %d files with %s (%dx%d input, %s resampling, REAL when p_real > %g, TTA %s%s)",
             len(files), ckpt_path, scorer.image_size, scorer.image_size, resample, cfg.threshold, scorer.tta["mode"],
             (f", UNSURE when {band[0]:.4f} < p_real <= {band[1]:.4f}" if band else "")
             + (f", OUT_OF_SCOPE when its out-of-scope score > {scorer.scope_threshold:.4f}"
                if scorer.scope_threshold is not None else ""))
    rows = predict_files(found, scorer, resample, cfg.threshold, cfg.batch_size, out, explainer, cfg.progress_bar)
    possible = [*([UNSURE] if band else []), *([OUT_OF_SCOPE] if scorer.scope_threshold is not None else [])]
    summary = summarize(rows, scorer.classes, cfg.show_unreadable, possible)
    lines = summary_lines(rows, summary, cfg.show_verdicts, out, gradcam=explainer is not None)
    log.info("%s", "\n".join(lines))
    if summary["unreadable"] == summary["files"]:
        raise DataError(f"none of the {summary['files']} files could be read as an image (reasons in "
                        f"{out / 'predictions.csv'}), e.g. {rows[0]['path']}: {rows[0]['error']}")
    return summary
