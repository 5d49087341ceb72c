"""Writing a safetensors export: the network's weights (``model.safetensors``), what scoring needs
(``config.json``, read back by :mod:`cifake.scoring.weights`) and a model card (Hugging Face's
model-card layout: YAML metadata with a ``model-index`` of the measured figures, then the sections)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cifake.analysis.calibration import apply_temperature
from cifake.analysis.metrics import headline
from cifake.core.atomic import atomic_path
from cifake.core.digest import file_sha256
from cifake.models.scope import RECORD_KEYS
from cifake.scoring.network import SCOPE_KEY, Answering, TrainingRecord
from cifake.scoring.weights import (
    CONFIG_FILE,
    CONFIG_FORMAT,
    METADATA,
    NETWORKS,
    SCOPE_PREFIX,
    SCOPE_TENSORS,
    WEIGHTS_FILE,
    weights_scorer,
)

CARD_METRICS = ("accuracy", "auroc")  # the model-index entries a re-evaluation is checked against


def write_weights(net: Any, folder: Path, scope: Mapping[str, Any] | None = None) -> Path:
    """``folder/model.safetensors``: the network's state dict as contiguous CPU tensors, and the
    out-of-scope score's (a checkpoint's :data:`~cifake.scoring.network.SCOPE_KEY` record) under
    :data:`~cifake.scoring.weights.SCOPE_PREFIX`, written whole."""
    from safetensors.torch import save_file

    tensors = {name: value.detach().cpu().contiguous() for name, value in net.state_dict().items()}
    if scope is not None:
        tensors.update({f"{SCOPE_PREFIX}{name}": scope[name].detach().cpu().float().contiguous()
                        for name in SCOPE_TENSORS})
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


def write_config(folder: Path, weights: Path, hparams: Mapping[str, Any], resample: str, answering: Answering,
                 trained: TrainingRecord, recipe: Mapping[str, Any],
                 metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``folder/config.json``: the network (:func:`network_spec` of ``hparams``), the input (size, resampling,
    scaling), the answer (classes, threshold, unsure band, temperature, out-of-scope score), the test-time
    augmentation its figures (``metrics``, as recorded) were measured with, the data settings it trained on,
    what that data was (``trained.data``: the record its checkpoint keeps,
    :meth:`cifake.data.datamodule.CIFAKEDataModule.data_record`), its training compute and the recipe that
    made it."""
    band, temperature, scope, training = answering.band, answering.temperature, answering.scope, trained.settings
    tta = metrics["tta"] if metrics else {"mode": "none", "shift": 1, "padding": "reflect"}
    config = {
        "format": CONFIG_FORMAT,
        "weights": {"file": weights.name, "sha256": file_sha256(weights), "bytes": weights.stat().st_size},
        "network": network_spec(hparams),
        "classes": list(hparams["classes"]),
        "image_size": int(hparams["image_size"]),
        "input": "RGB, resized to image_size x image_size with Pillow's `resample` filter, float32 pixel / 255, NCHW",
        "resample": resample,
        "gradcam_layer": hparams.get("gradcam_layer"),
        "threshold": answering.threshold,
        "unsure_band": None if band is None else [float(v) for v in band],
        "temperature": None if temperature is None else float(temperature),
        "output": "p(REAL): the network's sigmoid, averaged over the test-time views when tta says so, then "
                  "calibrated as sigmoid(logit(p) / temperature); REAL when above threshold, UNSURE inside "
                  "unsure_band, OUT_OF_SCOPE where out_of_scope says",
        "tta": dict(tta),
        "out_of_scope": None if scope is None else _scope_entry(scope),
        # What it trained on (augmentation, degradations: the robustness table's "trained on"), not where.
        "training": None if training is None else {k: v for k, v in training.items()
                                                    if k not in ("root", "cache_dir", "decode_workers")},
        "compute": None if trained.compute is None else dict(trained.compute),
        "evaluation": None if metrics is None else headline(metrics),  # its test-split figures, as recorded
        "data": _data(trained.data, training),
        "recipe": dict(recipe),
    }
    path = folder / CONFIG_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o644)
    return config


def store_in_export(folder: Path, net: Any, band: list[float] | None, temperature: float | None,
                    scope: Mapping[str, Any] | None) -> dict[str, Any]:
    """Store choices made after the export (an unsure band, a temperature, an out-of-scope score) in a
    safetensors export's ``config.json`` (and the score's tensors in ``model.safetensors``, whose hash
    the config records anew), as :func:`write_config` would have written them; ``None`` leaves an entry
    as it is. Returns the config."""
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text())
    if scope is not None or not (folder / WEIGHTS_FILE).is_file():
        weights = write_weights(net, folder, scope)
        config["weights"] = {"file": weights.name, "sha256": file_sha256(weights), "bytes": weights.stat().st_size}
    if scope is not None:
        config["out_of_scope"] = _scope_entry(scope)
    if band is not None:
        config["unsure_band"] = [float(v) for v in band]
    if temperature is not None:
        config["temperature"] = float(temperature)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o644)
    return config


def write_safetensors_export(model: Any, raw: Mapping[str, Any], threshold: float, resample: str,
                             record: Mapping[str, Any], recipe: Mapping[str, Any], folder: Path,
                             card: Path) -> tuple[Path, dict[str, Any]]:
    """``model.safetensors`` and ``config.json`` in ``folder`` and the model card at ``card`` for the
    classifier ``model`` and its checkpoint ``raw`` (its band, temperature, out-of-scope score and training
    record), with the figures of its run folder (``record``: :func:`cifake.export.run_folder.run_record`) and
    the ``recipe`` that made it. Returns the weights file and the config."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = write_weights(model.net, folder, raw.get(SCOPE_KEY))
    metrics = record["metrics"]
    config = write_config(folder, weights, model.hparams, resample, Answering.of_checkpoint(raw, threshold),
                          TrainingRecord.of_checkpoint(raw), recipe, metrics=metrics)
    parameters = sum(p.numel() for p in model.net.parameters())
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(card_text(config, metrics, record["robustness"], parameters, record["folders"]))
    return weights, config


def check_weights(model: Any, weights: Path, temperature: float | None, batch_size: int, atol: float,
                  seed: int) -> float:
    """The export at ``weights``, opened as every job opens it, against the checkpoint's own network
    (``model``, its p(REAL) calibrated by the checkpoint's ``temperature``) on the same random images; the
    largest difference in p(REAL), or raise if it exceeds ``atol``."""
    import torch

    size = int(model.hparams.image_size)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed)).numpy()
    exported = weights_scorer(weights, "cpu", "32-true").score(images)
    with torch.no_grad():
        expected = torch.sigmoid(model.net(torch.from_numpy(images).float() / 255.0)).numpy()
    gap = float(abs(apply_temperature(expected, temperature or 1.0) - exported).max())
    if not gap <= atol:
        raise RuntimeError(f"{weights}: the export and the checkpoint differ by {gap:.2e} (> {atol:g}) "
                           "on random images; please report this as a bug")
    return gap


def _scope_entry(scope: Mapping[str, Any]) -> dict[str, Any]:
    return {**{key: scope[key] for key in RECORD_KEYS},
            "tensors": [f"{SCOPE_PREFIX}{name}" for name in SCOPE_TENSORS],
            "meaning": "sqrt(min over classes of the squared Mahalanobis distance of the network's penultimate "
                       "features / their dimension), on the image as it is (no test-time views); OUT_OF_SCOPE "
                       "above threshold, before the unsure band and the threshold"}


def _data(data: Mapping[str, Any] | None, training: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint's record of its data; for a checkpoint made before it was kept, what its data
    settings still tell (generated demo data, or an unknown kind)."""
    if data is not None:
        return json.loads(json.dumps(data))  # plain types for config.json
    if training is not None and training.get("demo") is not None:
        return {"kind": "demo", "name": "the built-in generated demo data (data=demo), not CIFAKE", "splits": {}}
    return None


def _count(split: Mapping[str, int] | None) -> str:
    if not split:
        return "not recorded"
    return f"{sum(split.values()):,} images (" + ", ".join(f"{n:,} {name}" for name, n in split.items()) + ")"


def _data_lines(data: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None,
                classes: list[str]) -> tuple[list[str], list[str]]:
    """The card's "Training data" and "Evaluation data" paragraphs, from the run's own record."""
    if data is None:
        training = ["Not recorded: the checkpoint predates the record of its data (retrain with this version to have "
                    "its kind and split sizes here)."]
    else:
        splits = data.get("splits") or {}
        held = ("a stratified, seeded hold-out of the training folder" if data.get("validate_on") == "holdout"
                else "the test split (as the report did)")
        training = [f"{data['name'][0].upper()}{data['name'][1:]}.", "",
                    f"- Trained on: {_count(splits.get('train'))}",
                    *([f"- Of those, the images of `{data['extra_train']}` (`data.extra_train`) are from outside "
                       "that dataset: added to training only, never to validation or test"]
                      if data.get("extra_train") else []),
                    f"- Validation ({held}; the temperature, threshold and unsure band were chosen on it): "
                    f"{_count(splits.get('validation'))}"]
    if metrics:
        cm = metrics.get("confusion_matrix")
        counts = {name: sum(row) for name, row in zip(classes, cm, strict=False)} if cm else None
        where = {"cifake": "CIFAKE's test split", "demo": "the demo data's test split (generated, not CIFAKE)"}.get(
            (data or {}).get("kind"), "the test split of the folder it trained on")
        size = _count(counts) if counts else f"{metrics['n']:,} images"
        evaluation = [f"{where[0].upper()}{where[1:]}: {size}, "
                      "never seen in training or in any choice. 'Leak-free' leaves out the test images that are exact "
                      "or near (pHash) copies of training images (`python audit.py`)."]
    else:
        evaluation = ["Not evaluated: the run folder holds no metrics.json (`train.py evaluate=true` writes it)."]
    return training, evaluation


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def card_text(config: Mapping[str, Any], metrics: Mapping[str, Any] | None, robustness_md: str | None,
              parameters: int, folders: list[Mapping[str, Any]] | None = None) -> str:
    """The model card (markdown with YAML metadata) of an export whose ``config.json`` is ``config``,
    with the figures of the run's ``metrics.json`` and ``robustness.md`` when they are given, and the
    four-way answers on folders of images from outside CIFAKE (``folders``: ``folder.json`` reports of
    ``evaluate.py folder=...``)."""
    recipe = config["recipe"]
    weights = config["weights"]
    data = config.get("data")
    kind = (data or {}).get("kind")
    meta: dict[str, Any] = {"license": "mit", "library_name": "cifake", "pipeline_tag": "image-classification",
                            "tags": ["ai-generated-image-detection", "cifake", "safetensors"]}
    if kind == "cifake":  # a claim only the run's own record makes: never for demo data or a subset
        meta["datasets"] = ["cifake"]
    dataset = {"cifake": {"type": "cifake", "name": "CIFAKE", "split": "test"},
               "demo": {"type": "cifake-demo", "name": "generated demo data (not CIFAKE)", "split": "test"}}.get(
                   kind, {"type": "imagefolder", "name": "the test split of the folder it trained on", "split": "test"})
    trained_on = {"cifake": "trained on CIFAKE",
                  "demo": "trained on the project's generated demo data (not CIFAKE, so its figures say nothing about "
                          "CIFAKE or real images)",
                  "subset": "trained on a folder in CIFAKE's layout smaller than CIFAKE or holding other images"}.get(
                      kind, "trained on data whose kind its checkpoint does not record")
    training_lines, evaluation_lines = _data_lines(data, metrics, list(config["classes"]))
    if metrics:
        results = [{"type": name, "value": round(float(metrics[name]), 6),
                    "name": f"test {name} ({metrics['n']:,} images)"} for name in CARD_METRICS]
        meta["model-index"] = [{"name": f"cifake-{recipe.get('experiment') or 'model'}", "results": [{
            "task": {"type": "image-classification", "name": "real vs AI-generated"},
            "dataset": dataset,
            "metrics": results}]}]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# Model card: cifake `{recipe.get('experiment') or 'model'}`", "",
             f"A {config['image_size']}x{config['image_size']} real-vs-AI-generated image detector {trained_on}, with "
             "the project's own training command. "
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
             *([] if not config.get("out_of_scope") else [
                 f"- Out of scope: a {config['out_of_scope']['method']} score of the penultimate features, fitted on "
                 f"{config['out_of_scope']['fit_images']:,} training images; OUT_OF_SCOPE above "
                 f"{config['out_of_scope']['threshold']:.4f}, where {config['out_of_scope']['validation_flagged']:.0%} "
                 "of the validation images lie"]),
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
             "", "## Training data", "", *training_lines,
             "", "## Training recipe", "",
             f"- Command: `{recipe.get('command')}`",
             f"- Seed: {recipe.get('seed')}; commit: `{recipe.get('commit')}`",
             f"- Machine: {recipe.get('machine')}",
             f"- Training time: {recipe.get('train_time') or 'not recorded'}",
             *([f"- Started from (a fine-tune): {recipe['init_from']}"] if recipe.get("init_from") else []),
             f"- Exported with: `{recipe.get('export_command')}`",
             "", "## Evaluation data", "", *evaluation_lines, ""]
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
        answers = metrics.get("answers") or {}
        if answers:
            shares = ", ".join(f"{v:.1%} {k}" for k, v in answers["shares"].items())
            lines += [f"The four answers on the test split: {shares}; {_pct(answers.get('accuracy_answered'))} of the "
                      f"{answers['answered']:.1%} answered with a class are right.", ""]
        lines += [f"Scored in {metrics['scoring']['precision']} on {metrics['scoring']['device']}, threshold "
                  f"{metrics['threshold']}, test-time augmentation `{metrics['tta']['mode']}`.", ""]
    if robustness_md:
        lines += ["## Robustness", "",
                  "The test split again after each perturbation (`python evaluate.py robustness=true`). `trained on`: "
                  "`yes`, training saw that condition; `family only`, that kind of degradation but not that "
                  "strength; `no`, held out (another implementation or filter). Coverage and confident accuracy "
                  "are those of the unsure band.", "",
                  robustness_md.strip(), ""]
    if folders:
        lines += ["## Images from outside CIFAKE", "",
                  "Folders of one class scored as `cifake-predict` scores a file (`python evaluate.py "
                  "ckpt_path=<model> folder=<folder> folder_class=<class>`; the photo set: `python -m "
                  "cifake.tools.photos`, docs/photos.md). The share of each answer:", "",
                  "| folder | class | images | REAL | FAKE | UNSURE | OUT_OF_SCOPE |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for report in folders:
            shares = report["shares"]
            lines.append(f"| `{report['folder']}` | {report['class']} | {report['n']} | "
                         + " | ".join(f"{shares.get(k, 0.0):.1%}" for k in ("REAL", "FAKE", "UNSURE", "OUT_OF_SCOPE"))
                         + " |")
        lines.append("")
    size = config["image_size"]
    lines += ["## Limitations", "",
              f"- {size}x{size} inputs only: whatever the size of the image given, it is resized to {size}x{size} "
              "first.",
              "- One generator (Stable Diffusion v1.4) and one real source (CIFAR-10): the model may have learned "
              "their particular traces (JPEG history, colour statistics), not AI generation in general.",
              "- Heavy blur, strong noise or downscaling below the training conditions destroy the evidence it uses "
              "(see Robustness); the held-out rows show how far it carries beyond training.",
              "- Probabilities are calibrated on the validation split named above; on other images they are not.",
              *_outside_limits(folders or [], list(config["classes"])),
              "", "## How to use", "",
              "```bash", "cifake-predict photo.png                      # the bundled model when no ckpt_path is given",
              f"cifake-predict photo.png ckpt_path=<folder with {WEIGHTS_FILE} and {CONFIG_FILE}>",
              "cifake-serve                                  # the page and the API on http://127.0.0.1:8000",
              "```", ""]
    return "\n".join(lines)


def _outside_limits(folders: list[Mapping[str, Any]], classes: list[str]) -> list[str]:
    """The card's limitation lines that the folders from outside CIFAKE show: the worst share answered
    with the wrong class, per true class."""
    lines = []
    for name in classes:
        other = next(c for c in classes if c != name)
        scored = [f for f in folders if f.get("class") == name]
        if scored:
            worst = max(scored, key=lambda f: f["shares"].get(other, 0.0))
            lines.append(f"- Images of class {name} from outside CIFAKE are still answered {other} at times: up to "
                         f"{worst['shares'].get(other, 0.0):.1%} of `{worst['folder']}` (Images from outside CIFAKE); "
                         "the out-of-scope answer does not catch every image the model has no ground for.")
    return lines


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
