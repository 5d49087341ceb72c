"""What a training run folder says about itself, for the model card of a safetensors export: its figures,
robustness table, folders of one class scored with it, and the recipe that made the model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifake.evaluation.folder import FOLDER_FILE


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint lies in: ``<run>/checkpoints/best.ckpt`` or ``<run>/<file>``."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


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


def training_recipe(record: Mapping[str, Any], source: Path, card: Mapping[str, Any],
                    export_command: str) -> dict[str, Any]:
    """How the model was made, for its card: the experiment, command and seed of the run (``record``:
    :func:`run_record`), where and when it was trained (``card``'s commit, machine and train_time where set,
    else what the run's results.json recorded), the weights a fine-tune started from (``card.init_from`` where set,
    else the run's record of them), the checkpoint exported (``source``) and the export's command."""
    made = record["results"].get("run") or {}
    started = made.get("init_from")
    if started:  # the record: what init_from named, the file it read and that file's SHA-256
        started = f"`init_from={started['init_from']}`: {started['file']}, sha256 `{started['sha256']}`"
    overrides = record["overrides"]
    command = None if overrides is None else " ".join(["python train.py", *overrides])
    return {"experiment": None if record["config"] is None else record["config"].get("task_name"),
            "command": command, "seed": None if record["config"] is None else record["config"].get("seed"),
            "commit": card.get("commit") or made.get("commit"), "machine": card.get("machine") or made.get("machine"),
            "train_time": card.get("train_time") or made.get("train_time"),
            "init_from": card.get("init_from") or started, "source_checkpoint": str(source),
            "export_command": export_command}
