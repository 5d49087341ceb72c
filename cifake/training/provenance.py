"""What made a training run, as ``results.json`` and the resume line record it: the command and overrides it was
started with, the commit of the code it ran, the machine (CPU model, cores, native bf16, the GPU) and what the fit
computed in."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cifake.analysis.metrics import flat_metrics
from cifake.models.precision import native_bf16
from cifake.scoring.scorer import device_name
from cifake.training.sweep import RESULTS_FILE

log = logging.getLogger(__name__)

ENTRY_SCRIPT = "train.py"  # the checkout's entry point; installed, it is the console script below
CONSOLE_SCRIPT = "cifake-train"


def entry_command() -> list[str]:
    """How this job was started: ``python train.py`` (as typed) or the console script, with the
    ``--config-dir`` folders it was given."""
    script = sys.argv[0] if Path(sys.argv[0]).name == ENTRY_SCRIPT else None
    command = ["python", script] if script else [CONSOLE_SCRIPT]
    if HydraConfig.initialized():
        command += [f"--config-dir={source.path}"
                    for source in HydraConfig.get().runtime.config_sources if source.provider == "command-line"]
    return command


def run_overrides(out: Path) -> list[str]:
    """The overrides the run in ``out`` was started with (Hydra's, else its ``.hydra/overrides.yaml``),
    less ``ckpt_path`` and ``hydra.run.dir``."""
    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    elif (out / ".hydra" / "overrides.yaml").is_file():
        overrides = list(OmegaConf.load(out / ".hydra" / "overrides.yaml"))
    else:
        overrides = []
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]


def training_arithmetic(trainer: L.Trainer, matmul: str) -> dict[str, Any]:
    """What the fit computes in and on (results.json's ``computed.training``), said in the log when
    float32 matrix products and convolutions may use TF32 (``float32_matmul_precision``)."""
    record = {"precision": str(trainer.precision), "device": device_name(trainer.strategy.root_device),
              "devices": int(trainer.num_devices), "float32_matmul_precision": matmul}
    if matmul != "highest":
        log.info("Training in %s on %s with TF32 float32 matrix products and convolutions where the GPU has them "
                 "(Ampere and newer; float32_matmul_precision=%s); scoring stays true float32 (scoring.precision)",
                 record["precision"], record["device"], matmul)
    return record


def write_results(out: Path, metrics: dict[str, Any], computed: dict[str, dict[str, Any]],
                  run: dict[str, Any]) -> Path:
    """``results.json``: the run's final metrics as flat scalars (test ones as ``test/...``), for
    sweep summaries and scripts; ``computed``: the precision and device of the fit (``training``:
    the train and validation metrics, and its wall time) and of the test split's scoring (``test``,
    when evaluated); ``run``: the commit and the machine that made it (:func:`made_by`)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    path.write_text(json.dumps({"metrics": flat_metrics(metrics), "computed": computed, "run": run}, indent=2) + "\n")
    return path


def source_commit() -> str:
    """The code this process runs: ``git rev-parse HEAD`` of the checkout an editable install runs from,
    ``+ changes`` when it has uncommitted ones; the package version when it is not a checkout."""
    here = Path(__file__).resolve().parents[2]  # the checkout, when the package runs from one
    try:
        if not (here / ".git").exists():
            raise OSError("not a checkout")
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        commit = head.stdout.strip() + (" + changes" if dirty.stdout.strip() else "") if head.returncode == 0 \
            else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    if commit is None:
        commit = f"cifake {importlib.metadata.version('cifake')} (not a git checkout)"
    return commit


def made_by(training: dict[str, Any], commit: str, started: dict[str, str] | None = None) -> dict[str, Any]:
    """``commit`` (:func:`source_commit`, read when the run started), the machine (CPU model, cores,
    whether it computes bf16 natively, the GPU if training used one), the training's wall time and, for a
    fine-tune, the weights it started from (``started``: :func:`cifake.training.fit.started_from`)."""
    bf16 = "yes" if native_bf16(torch.device("cpu")) else "no"
    machine = f"{machine_cpu()}, {os.cpu_count()} cores, native bf16: {bf16}"
    if str(training.get("device", "")).startswith("cuda"):
        machine += f"; {torch.cuda.get_device_name()}"
    seconds = training.get("seconds")
    made = {"commit": commit, "machine": machine,
            "train_time": None if seconds is None else f"{seconds / 60:.1f} min of training"}
    return made if started is None else {**made, "init_from": started}


def machine_cpu() -> str:
    """The CPU's model name with its family and model numbers (``/proc/cpuinfo``: a virtual machine's
    name may not say more than "AMD EPYC"; family 25 is Zen 3 and 4, 26 is Zen 5), the platform's
    processor string elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    except (OSError, KeyError):
        return platform.processor() or platform.machine() or "unknown CPU"
