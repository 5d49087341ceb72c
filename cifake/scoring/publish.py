"""Writing a safetensors export: the network's weights (``model.safetensors``), what scoring needs
(``config.json``, read back by :mod:`cifake.scoring.weights`) and a model card (Hugging Face's
model-card layout: YAML metadata with a ``model-index`` of the measured figures, then the sections)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cifake.core.atomic import atomic_path
from cifake.scoring.weights import CONFIG_FILE, CONFIG_FORMAT, METADATA, NETWORKS, WEIGHTS_FILE, sha256

CARD_METRICS = ("accuracy", "auroc")  # the model-index entries a re-evaluation is checked against


def write_weights(net: Any, folder: Path) -> Path:
    """``folder/model.safetensors``: the network's state dict as contiguous CPU tensors, written whole."""
    from safetensors.torch import save_file

    tensors = {name: value.detach().cpu().contiguous() for name, value in net.state_dict().items()}
    path = folder / WEIGHTS_FILE
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(METADATA))
    path.chmod(0o644)  # a file to publish and ship: readable by all, as the rest of the package
    return path


def network_spec(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The network's ``_target_`` and arguments from a checkpoint's hyper-parameters, checked to be
    one :mod:`cifake.scoring.weights` will build."""
    spec = dict(hparams["net"])
    if spec.get("_target_") not in NETWORKS:
        raise ValueError(f"network {spec.get('_target_')!r} cannot be exported as safetensors; one of {list(NETWORKS)}")
    return spec


def write_config(folder: Path, weights: Path, spec: Mapping[str, Any], hparams: Mapping[str, Any], resample: str,
                 threshold: float, band: list[float] | None, temperature: float | None, tta: Mapping[str, Any],
                 training: Mapping[str, Any] | None, recipe: Mapping[str, Any],
                 compute: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``folder/config.json``: the network, the input (size, resampling, scaling), the answer
    (classes, threshold, unsure band, temperature), the test-time augmentation its figures were
    measured with, the data settings it trained on, its training compute and the recipe that made it."""
    config = {
        "format": CONFIG_FORMAT,
        "weights": {"file": weights.name, "sha256": sha256(weights), "bytes": weights.stat().st_size},
        "network": dict(spec),
        "classes": list(hparams["classes"]),
        "image_size": int(hparams["image_size"]),
        "input": "RGB, resized to image_size x image_size with Pillow's `resample` filter, float32 pixel / 255, NCHW",
        "resample": resample,
        "gradcam_layer": hparams.get("gradcam_layer"),
        "threshold": float(threshold),
        "unsure_band": None if band is None else [float(v) for v in band],
        "temperature": None if temperature is None else float(temperature),
        "output": "p(REAL): the network's sigmoid, averaged over the test-time views when tta says so, then "
                  "calibrated as sigmoid(logit(p) / temperature); REAL when above threshold, UNSURE inside "
                  "unsure_band",
        "tta": dict(tta),
        # What it trained on (augmentation, degradations: the robustness table's "trained on"), not where.
        "training": None if training is None else {k: v for k, v in training.items()
                                                    if k not in ("root", "cache_dir", "decode_workers")},
        "compute": None if compute is None else dict(compute),
        "recipe": dict(recipe),
    }
    path = folder / CONFIG_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o644)
    return config


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def card_text(config: Mapping[str, Any], metrics: Mapping[str, Any] | None, robustness_md: str | None,
              parameters: int) -> str:
    """The model card (markdown with YAML metadata) of an export whose ``config.json`` is ``config``,
    with the figures of the run's ``metrics.json`` and ``robustness.md`` when they are given."""
    recipe = config["recipe"]
    weights = config["weights"]
    meta: dict[str, Any] = {"license": "mit", "library_name": "cifake", "pipeline_tag": "image-classification",
                            "tags": ["ai-generated-image-detection", "cifake", "safetensors"],
                            "datasets": ["cifake"]}
    if metrics:
        results = [{"type": name, "value": round(float(metrics[name]), 6),
                    "name": f"test {name} ({metrics['n']:,} images)"} for name in CARD_METRICS]
        meta["model-index"] = [{"name": f"cifake-{recipe.get('experiment') or 'model'}", "results": [{
            "task": {"type": "image-classification", "name": "real vs AI-generated"},
            "dataset": {"type": "cifake", "name": "CIFAKE", "split": "test"},
            "metrics": results}]}]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# Model card: cifake `{recipe.get('experiment') or 'model'}`", "",
             "A 32x32 real-vs-AI-generated image detector trained on CIFAKE with the project's own training command. "
             "It answers p(REAL) for an image; REAL above the threshold, FAKE below, UNSURE inside the unsure band.",
             "", "## Model details", "",
             f"- Network: `{config['network']['_target_']}` ({parameters:,} parameters), "
             f"arguments `{json.dumps({k: v for k, v in config['network'].items() if k != '_target_'})}`",
             f"- Weights: `{weights['file']}`, {weights['bytes'] / 1e6:.2f} MB, float32, "
             f"sha256 `{weights['sha256']}`",
             f"- Input: {config['image_size']}x{config['image_size']} RGB, resized with Pillow's {config['resample']} "
             "filter, pixels / 255",
             f"- Output: p(REAL) with temperature {_pct(config['temperature'])} (fitted on the validation split), "
             f"threshold {config['threshold']}, unsure band "
             f"{'none' if config['unsure_band'] is None else [round(v, 4) for v in config['unsure_band']]}",
             f"- Test-time augmentation the figures below were measured with: `{config['tta']['mode']}`",
             "", "## Intended use", "",
             "- Telling CIFAKE-like 32x32 images (CIFAR-10-style photographs of its ten classes, and Stable Diffusion "
             "v1.4 renders of them) apart, as a baseline, a teaching tool and a starting point for fine-tuning.",
             "- Triage with the UNSURE answer: the band is chosen on validation so that the confident answers of each "
             "class reach the recipe's precision.",
             "", "## Out-of-scope use", "",
             "- Verdicts on photographs from phones or cameras, screenshots, drawings, or renders of other generators "
             "(Midjourney, DALL-E, newer diffusion models): the model saw none of them, and a large image shrunk to "
             "32x32 loses most of the evidence. Its answer on such an image means little.",
             "- Any decision about a person (authorship, honesty, legal evidence).",
             "", "## Training data", "",
             "CIFAKE's training split (Kaggle layout): 50,000 REAL (CIFAR-10) and 50,000 FAKE (Stable Diffusion v1.4) "
             "32x32 JPEGs; 10% of them held out as the validation split (stratified, fixed seed), on which the "
             "temperature, the threshold and the unsure band were chosen.",
             "", "## Training recipe", "",
             f"- Command: `{recipe.get('command')}`",
             f"- Seed: {recipe.get('seed')}; commit: `{recipe.get('commit')}`",
             f"- Machine: {recipe.get('machine')}",
             f"- Training time: {recipe.get('train_time') or 'not recorded'}",
             f"- Exported with: `{recipe.get('export_command')}`",
             "", "## Evaluation data", "",
             "CIFAKE's test split: 10,000 REAL and 10,000 FAKE images, never seen in training or in any choice. "
             "'Leak-free' leaves out the test images that are exact or near (pHash) copies of training images "
             "(`python audit.py`).", ""]
    if metrics:
        precision, recall = metrics["precision"], metrics["recall"]
        leak = metrics.get("leak_free") or {}
        unsure = metrics.get("unsure") or {}
        temp = metrics.get("temperature") or {}
        lines += ["## Metrics", "",
                  f"| metric | all {metrics['n']:,} test images | leak-free |", "|---|---|---|",
                  f"| accuracy | {_pct(metrics['accuracy'])} | {_pct(leak.get('accuracy'))} |",
                  f"| AUROC | {_pct(metrics['auroc'])} | {_pct(leak.get('auroc'))} |"]
        leak_precision, leak_recall = leak.get("precision") or {}, leak.get("recall") or {}
        for name in config["classes"]:
            lines.append(f"| precision / recall of {name} | {_pct(precision[name])} / {_pct(recall[name])} | "
                         f"{_pct(leak_precision.get(name))} / {_pct(leak_recall.get(name))} |")
        lines += [f"| ECE (15 bins) | {_pct(metrics['ece'])} | {_pct(leak.get('ece'))} |", ""]
        if temp:
            lines += [f"Temperature scaling: test ECE {_pct(temp['ece_before'])} before, {_pct(temp['ece_after'])} "
                      "after (one temperature fitted on validation; accuracy and AUROC do not move).", ""]
        if unsure:
            lines += [f"Unsure band {[round(v, 4) for v in unsure['band']]}: {unsure['coverage']:.1%} of the test "
                      f"images get a confident answer, {_pct(unsure['confident_accuracy'])} of those are right; "
                      f"{unsure['n_unsure']:,} are UNSURE.", ""]
        lines += [f"Scored in {metrics['scoring']['precision']} on {metrics['scoring']['device']}, threshold "
                  f"{metrics['threshold']}, test-time augmentation `{metrics['tta']['mode']}`.", ""]
    if robustness_md:
        lines += ["## Robustness", "",
                  "The test split again after each perturbation (`python evaluate.py robustness=true`). `trained on`: "
                  "`yes`, training saw that condition; `family only`, that kind of degradation but not that "
                  "strength; `no`, held out (another implementation or filter). Coverage and confident accuracy "
                  "are those of the unsure band.", "",
                  robustness_md.strip(), ""]
    lines += ["## Limitations", "",
              "- 32x32 inputs only: whatever the size of the image given, it is resized to 32x32 first.",
              "- One generator (Stable Diffusion v1.4) and one real source (CIFAR-10): the model may have learned "
              "their particular traces (JPEG history, colour statistics), not AI generation in general.",
              "- Heavy blur, strong noise or downscaling below the training conditions destroy the evidence it uses "
              "(see Robustness); the held-out rows show how far it carries beyond training.",
              "- Probabilities are calibrated on CIFAKE's validation split; on other images they are not.",
              "", "## How to use", "",
              "```bash", "cifake-predict photo.png                      # the bundled model when no ckpt_path is given",
              f"cifake-predict photo.png ckpt_path=<folder with {WEIGHTS_FILE} and {CONFIG_FILE}>",
              "cifake-serve                                  # the page and the API on http://127.0.0.1:8000",
              "```", ""]
    return "\n".join(lines)


def read_card_metrics(text: str) -> dict[str, float]:
    """The ``model-index`` figures of a card written by :func:`card_text` (``{"accuracy": ..., ...}``)."""
    if not text.startswith("---\n"):
        return {}
    meta = yaml.safe_load(text.split("---\n", 2)[1]) or {}
    found = {}
    for model in meta.get("model-index") or []:
        for result in model.get("results") or []:
            for metric in result.get("metrics") or []:
                found[metric["type"]] = float(metric["value"])
    return found
