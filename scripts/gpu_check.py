"""The GPU check: on an offline machine with one CUDA GPU (an H100/H200 image that has torch, Lightning and
TensorBoard but not Hydra), one command of at most 6.5 minutes (``--budget``) measures the GPU path and writes one
Markdown table; ``run --rehearse`` runs the same plan on any CPU (docs/gpu-check.md).

Here, with the network (wheels of what such an image lacks, for CPython 3.12 on manylinux x86_64, and the
CIFAKE archive; ``make device-bundle`` does this):

    python scripts/gpu_check.py bundle .device-bundle --data ../shared/data/cifake.tar.xz

There, from the checkout's root, with ``.device-bundle`` beside it:

    python3 scripts/gpu_check.py run --bundle .device-bundle --out-dir /tmp/gpu_check --report-to "$OUT"

``run`` stops at once, in one line, where CUDA is not usable (before pip, before anything slow). Otherwise it
installs the bundle offline into the running python (``pip --no-index --no-deps``: its torch is left alone;
skipped for what is already importable, or with ``--no-install``), extracts the archive (into ``--scratch``,
reused by a rerun) and runs, through the project's own entry points, each as a subprocess with a timeout and
its log kept, for the seconds :func:`allocate` gives it (the most valuable first), going on to the next when
one fails or times out, and stopping where going on is pointless (the bundle did not install, CUDA went away):

1. ``train.py model=vgg trainer.max_epochs=2 data.root=<cifake>``, the mission's command: did it exit 0 and
   write every dashboard (the TensorBoard tags of conf/callbacks/default.yaml's callbacks)?
2. ``train.py experiment=reference trainer.max_epochs=2 evaluate=false``: the second epoch's time,
   validation included (TensorBoard wall times), and the GPU's busy share over it (NVML, sampled at 10 Hz
   in a thread of this script);
3. ``pytest tests/test_device_transfers.py -k cuda``: 20 training steps under
   ``torch.cuda.set_sync_debug_mode("error")``, which raises at the first host sync inside a step;
4. ``train.py experiment=reference debug=gpu_profile``: 20 steps under PyTorch's profiler (the wall time of
   a step, the CPU and CUDA totals, the kernels that take the GPU's time);
5. ``train.py experiment=best`` for ``--best-epochs`` epochs (``trainer.max_time``, set before it starts,
   keeps its evaluation inside its share of the budget), validating on the test split after every epoch with
   the final weights evaluated (no checkpoint chosen on test): its wall time, test accuracy and time to 0.95
   test accuracy;
6. ``python -m cifake.tools.bench --sections train,eval,precision``, a few steps each.

Everything goes into a fresh ``--out-dir`` (a non-empty one gets a timestamped sibling, so old TensorBoard
events never mix into the curves); the table (``gpu_check.md``) is made from that folder alone by
:func:`summarize`, so ``python scripts/gpu_check.py table <out-dir>`` redraws it from a recorded run.
``--report-to DIR`` copies the table, the logs and a record of the run (``gpu_check_record.tar.gz``: the
out folder without checkpoints) flat into DIR, seven files.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import lzma
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.95  # the test accuracy whose time-to-reach the check reports
ARCHIVE = "cifake.tar.xz"  # the archive's name inside the bundle
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / ARCHIVE
BUNDLE_LIMIT = 60 * 2**20  # what may travel beside the checkout to the device machine

# What train.py's, bench's and Grad-CAM's import path needs beyond a CUDA image with torch, Lightning,
# TensorBoard, scikit-learn, ONNX, OpenCV and Matplotlib: distribution -> (version, module to import).
# Versions as pyproject.toml allows and the tests here run; serving (litserve, FastAPI, pydantic) is not on
# train's path and stays out.
BUNDLE: dict[str, tuple[str, str]] = {
    "hydra-core": ("1.3.8", "hydra"),
    "omegaconf": ("2.3.1", "omegaconf"),
    "antlr4-python3-runtime": ("4.9.3", "antlr4"),  # hydra 1.3 and omegaconf 2.3 need 4.9.*; PyPI has an sdist
    "grad-cam": ("1.5.7", "pytorch_grad_cam"),  # an sdist on PyPI too: built here into a pure-python wheel
    "ttach": ("0.0.3", "ttach"),  # grad-cam imports it
    "skops": ("0.16.0", "skops"),  # cifake.models.forest, imported by the train job
    "prettytable": ("3.19.0", "prettytable"),  # skops requires it
    "wcwidth": ("0.9.4", "wcwidth"),  # prettytable requires it
}
# pip download's target: the device's python3 (CPython 3.12, glibc manylinux, x86-64).
WHEEL_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]

# The dashboards every validation epoch writes (cifake/callbacks/, conf/callbacks/default.yaml) and the
# HPARAMS row the train job adds: TensorBoard kind -> tags.
DASHBOARDS: dict[str, tuple[str, ...]] = {
    "scalars": ("train/loss", "val/loss", "val/acc", "val/auroc", "hp/val/acc"),
    "images": ("val/roc", "val/pr", "val/confusion_matrix", "val/predictions", "val/gradcam/fixed",
               "val/gradcam/correct", "val/gradcam/wrong"),
    "tensors": ("val/pr_curve",),
}

# The report's files, flat, for --report-to (the device tool brings back at most 8 files).
STEP_LOGS = ("headline", "reference", "best", "bench")  # syncs and profile: in the record and the table
PROFILE = "fit-profile.txt"  # Lightning's PyTorchProfiler report (conf/debug/gpu_profile.yaml)
RECORD = "gpu_check_record.tar.gz"
LEFT_OUT = (".ckpt", ".onnx", "predictions.csv")  # large, and the table needs none of them

log = logging.getLogger("gpu_check")


# -- the bundle (built here, with the network) ----------------------------------------------------
def _wheel_prefix(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def build_bundle(dest: Path, archive: Path | None, python: str = sys.executable) -> list[Path]:
    """Fill ``dest/wheels`` with a wheel of each of :data:`BUNDLE` for the device's python (pure-python
    ones built here where PyPI has only an sdist) and copy ``archive`` to ``dest/cifake.tar.xz``; returns
    the files. Wheels already there are kept; other versions of the same packages are removed."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name, (version, _module) in BUNDLE.items():
        prefix = _wheel_prefix(name, version)
        for stale in wheels.glob(f"{prefix.split('-')[0]}-*.whl"):
            if not stale.name.startswith(prefix):  # one version of each: two stop the install there
                stale.unlink()
        if any(wheels.glob(f"{prefix}*.whl")):
            continue
        spec = f"{name}=={version}"
        download = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_TARGET,
                    "--disable-pip-version-check", "-q", "-d", str(wheels), spec]
        if subprocess.run(download, capture_output=True, text=True).returncode:
            # No wheel on the index: build one here. It must be pure python to run on the device's 3.12.
            subprocess.run([python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                            "-w", str(wheels), spec], check=True)
            built = next(wheels.glob(f"{prefix}*.whl"), None)
            if built is None or not built.name.endswith("-none-any.whl"):
                raise SystemExit(f"bundle: {spec} has no wheel for CPython 3.12 and builds no pure-python one "
                                 f"here ({built.name if built else 'nothing built'})")
    if archive is not None:
        if not archive.is_file():
            raise SystemExit(f"bundle: no CIFAKE archive at {archive}; pass DATA=<cifake .tar.xz> (make) or "
                             "--data <archive>")
        copy = dest / ARCHIVE
        if not (copy.is_file() and copy.stat().st_size == archive.stat().st_size):
            shutil.copyfile(archive, copy)
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    if size > BUNDLE_LIMIT:
        raise SystemExit(f"bundle: {dest} holds {size / 2**20:.1f} MiB, over the {BUNDLE_LIMIT / 2**20:.0f} MiB "
                         "that may travel with the checkout")
    return files


# -- on the device: CUDA first, then the offline install ------------------------------------------
def _nvidia_smi(query: str) -> tuple[list[str], str | None]:
    """nvidia-smi's CSV rows for ``--query-gpu=query``, or why there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "no driver found"
    try:
        done = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"nvidia-smi failed: {err}"
    rows = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode or not rows:
        first = (done.stdout + done.stderr).strip().splitlines()
        return [], f"nvidia-smi failed: {first[0] if first else f'exit {done.returncode}'}"
    return rows, None


def driver_version() -> str:
    """The NVIDIA driver's version as nvidia-smi reports it, or why it cannot."""
    rows, problem = _nvidia_smi("driver_version")
    return rows[0] if rows else str(problem)


def cuda_problem() -> str | None:
    """``None`` when a CUDA kernel runs; else one line naming torch, its CUDA and the driver, and why."""
    with warnings.catch_warnings(record=True) as caught:  # torch warns (on stderr) where the driver is wrong
        warnings.simplefilter("always")
        try:
            import torch
        except ImportError as err:
            return f"gpu_check: torch is not importable by {sys.executable} ({err}); driver {driver_version()}"
        try:
            usable = torch.cuda.is_available()
            if usable:  # is_available() can say yes where no kernel runs (a driver too old for this build)
                torch.ones(1, device="cuda").add_(1).item()
            reason = None if usable else "torch.cuda.is_available() is False"
        except Exception as err:  # any failure of the first kernel means the same: no usable CUDA
            reason = f"{type(err).__name__}: {err}"
    if reason is None:
        return None
    said = [str(w.message) for w in caught if "cuda" in str(w.message).lower()]
    if said:
        reason += f" ({said[0]})"
    line = (f"gpu_check: CUDA is not usable here (torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"driver {driver_version()}): {reason}; nothing was run")
    return " ".join(line.split())  # one line, whatever the messages held


def missing_modules(modules: list[str]) -> list[str]:
    """Those of ``modules`` that the entry points (run from the checkout's root) cannot import."""
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    done = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


def install_bundle(bundle: Path) -> dict[str, Any]:
    """Install the bundle's wheels that the running python lacks, offline and without dependencies (its
    torch stays as it is), and the project where it is not importable from the checkout; returns what was
    done, for the table."""
    missing = missing_modules([module for _version, module in BUNDLE.values()] + ["cifake"])
    wanted = [name for name, (_v, module) in BUNDLE.items() if module in missing]
    wheels = [w for name in wanted for w in (bundle / "wheels").glob(f"{_wheel_prefix(name, BUNDLE[name][0])}*.whl")]
    done: dict[str, Any] = {"installed": [], "already_there": sorted(set(BUNDLE) - set(wanted)), "error": None}
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
           "--no-cache-dir", "-q"]
    if len(wheels) < len(wanted):
        done["error"] = f"the bundle {bundle} lacks wheels for some of {', '.join(wanted)}: run make device-bundle"
    elif wheels:
        proc = subprocess.run([*pip, *map(str, wheels)], capture_output=True, text=True)
        if proc.returncode:
            done["error"] = f"pip install failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
        else:
            done["installed"] = [f"{name} {BUNDLE[name][0]}" for name in wanted]
    if "cifake" in missing:  # the entry points run from the checkout's root, which puts it on their path
        # No build isolation: that would fetch setuptools from an index; the image has one.
        proc = subprocess.run([*pip, "--no-build-isolation", "-e", str(ROOT)], capture_output=True, text=True)
        if proc.returncode:
            done["error"] = f"installing the project failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
        else:
            done["installed"].append("cifake (editable)")
    return done


# -- the run folder, the data, the steps ---------------------------------------------------------
def fresh_folder(path: Path) -> Path:
    """``path`` when it is missing or empty, else a timestamped sibling: a rerun never mixes old
    TensorBoard events into new curves."""
    if path.exists() and any(path.iterdir()):
        return path.with_name(f"{path.name}-{datetime.now():%Y%m%d-%H%M%S}")
    return path


def prepare_data(data: Path, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """The CIFAKE folder (``train/``, ``test/``) for ``data.root``: ``data`` itself when it is a folder,
    else the archive extracted into ``scratch`` (once: a rerun reuses it). Raises :class:`CheckStop` with
    one line where the archive is missing or cannot be unpacked."""
    if data.is_dir():
        return data, {"name": "extract", "note": f"the folder {data}", "seconds": 0.0}
    if not data.is_file():
        raise CheckStop(f"no CIFAKE archive or folder at {data}: pass --data or build the bundle with it")
    target, stamp = scratch / "cifake", f"{data.name} {data.stat().st_size}"
    marker = target / ".extracted"
    if marker.is_file() and marker.read_text() == stamp:
        return _data_root(target), {"name": "extract", "note": "reused from a previous run", "seconds": 0.0}
    start, partial = time.time(), scratch / "cifake.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.mkdir(parents=True)
    how = unpack(data, partial)
    files = sum(len(names) for _, _, names in os.walk(partial))
    partial.rename(target)
    marker.write_text(stamp)
    return _data_root(target), {"name": "extract", "files": files, "start": start, "end": time.time(),
                                "seconds": time.time() - start, "how": how, "archive": data.name}


def unpack(archive: Path, dest: Path) -> str:
    """Unpack ``archive`` into ``dest`` with GNU tar where it can (3x faster than Python's tarfile: 10.9 s
    against 37 s for CIFAKE on a 2-core EPYC), else with tarfile; returns which did it, and why."""
    compressor = next((tool for suffix, tool in COMPRESSORS.items() if archive.name.endswith(suffix)), None)
    missing = [tool for tool in ("tar", compressor) if tool and shutil.which(tool) is None]
    if not missing:
        done = subprocess.run(["tar", "-xf", str(archive), "-C", str(dest)], capture_output=True, text=True)
        if done.returncode == 0:
            return "GNU tar"
        said = (done.stderr or done.stdout).strip().splitlines()
        raise CheckStop(f"tar could not unpack {archive}: {said[-1] if said else f'exit {done.returncode}'}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (OSError, EOFError, tarfile.TarError, lzma.LZMAError, zlib.error) as err:
        raise CheckStop(f"Python's tarfile could not unpack {archive}: {type(err).__name__}: {err}") from None
    return f"Python's tarfile: {' and '.join(missing)} not installed"


# The compressor GNU tar runs for an archive that ends so (it execs it: without it tar fails).
COMPRESSORS = {".tar.xz": "xz", ".txz": "xz", ".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bzip2"}


class CheckStop(Exception):
    """Going on is pointless (no data, no bundle, no GPU): one line says why."""


def _data_root(folder: Path) -> Path:
    """The folder holding ``train/`` and ``test/``: the archive's top or its one top-level folder."""
    if (folder / "train").is_dir():
        return folder
    inner = [p for p in folder.iterdir() if p.is_dir() and (p / "train").is_dir()]
    return inner[0] if len(inner) == 1 else folder


def rehearsal_archive(scratch: Path) -> Path:
    """A small CIFAKE-shaped archive made from the demo generator (conf/data/demo.yaml's look, fewer
    images), for a rehearsal to unpack the way the GPU check unpacks CIFAKE."""
    import yaml

    from cifake.data.demo import generate_demo

    archive = scratch / "rehearsal-demo.tar.xz"
    if archive.is_file():
        return archive
    look = yaml.safe_load((ROOT / "conf" / "data" / "demo.yaml").read_text())["demo"]
    source = generate_demo(scratch / "rehearsal-demo", **{**look, **REHEARSAL_DEMO, "image_size": 32})
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w:xz") as tar:
        for split in ("train", "test"):
            tar.add(source / split, arcname=split)
    partial.rename(archive)
    return archive


# -- the plan and its budget -----------------------------------------------------------------------
@dataclass
class Step:
    """One entry-point run: its name (log, run folder), its arguments to python, the seconds it needs at
    least to give its rows (``minimum``) and the seconds it can use well (``want``)."""

    name: str
    args: list[str]
    minimum: float
    want: float
    needs_data: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# Seconds on one H100 or H200, (minimum, want): estimates, as no GPU has run the check yet, from the recipes'
# FLOPs, eager PyTorch's per-step overhead (about 3 ms a step of batch 32: ~10 s an epoch of the reference)
# and this CPU's start-up times; docs/gpu-check.md adds them up. Each includes the run's start (imports,
# CUDA, reading the decode cache; the headline also decodes the 120,000 images once).
GPU_SECONDS = {"headline": (60, 110), "reference": (45, 80), "syncs": (25, 45), "profile": (30, 50),
               "bench": (30, 50)}
# experiment=best's parts: its start, one epoch (100,000 training images at batch 256, ~0.27 PFLOP, and
# validation on the test split) and its evaluation (the first leak hashing of 120,000 images: 15 s on a
# 2-core EPYC; flip TTA, the temperature, the report's figures).
GPU_BEST = {"startup": 15, "epoch": 6, "evaluation": 40}
GPU_BUDGET = 390.0  # the whole check, CUDA's start, the install and the unpacking included: 6.5 min
GPU_SCRATCH = Path(tempfile.gettempdir()) / "cifake-gpu-check"  # the unpacked archive and its decode cache

# The rehearsal on a 2-core CPU (tests/test_gpu_check.py, in CI): the same plan on the demo generator's
# images, small networks and few steps; seconds measured there, with one other test process beside it.
# 128 training images (115 where 10% are held out), 64 test ones. The wants are about three times what a step
# took on a 2-core EPYC without native bf16 with two other processes on its cores (15-45 s): a step stops short
# only where something is wrong, never because CI's machine is slow. The rehearsal itself takes 2-3 minutes.
REHEARSAL_DEMO = {"train_per_class": 64, "test_per_class": 32}
REHEARSAL_SECONDS = {"headline": (20, 120), "reference": (15, 100), "syncs": (10, 90), "profile": (15, 90),
                     "bench": (15, 120)}
REHEARSAL_BEST = {"startup": 50, "epoch": 10, "evaluation": 40}
REHEARSAL_BUDGET = 720.0
_CPU, _TINY_VGG = ["trainer.accelerator=cpu"], ["model.net.filters=[8,16,16,16]", "model.net.dense=[32]"]
# Every dashboard still drawn when it is due, from fewer images: a prediction grid of 2 per class, not 8, and one
# Grad-CAM pair per class, not 4, which more than halved the epochs that draw them (the rehearsal's costliest part
# after the steps' start-up); experiment=best's report figures alike.
_FEW_FIGURES = ["callbacks.prediction_grid.per_class=2", "callbacks.gradcam.per_class=1"]
REHEARSAL_OVERRIDES = {
    "headline": [*_CPU, *_TINY_VGG, *_FEW_FIGURES],
    "reference": [*_CPU, *_TINY_VGG, *_FEW_FIGURES],
    # the 4 batches of 32 there are (reference validates on test, so all 128 train): 1 waits, 1 warms up, 2 profiled
    "profile": [*_CPU, *_TINY_VGG, "trainer.limit_train_batches=4", "trainer.profiler.schedule.wait=1",
                "trainer.profiler.schedule.warmup=1", "trainer.profiler.schedule.active=2"],
    "best": [*_CPU, "model.net.stem=[8,8]", "model.net.widths=[16,16]", "model.net.blocks=[1,1]", *_FEW_FIGURES,
             "report.examples_per_class=2", "report.gradcam_per_class=1"],
    # the test split's 64 images in 4 evaluation batches; the small VGG's keys are not cpu_fast's: VGG alone
    "bench": [*_CPU, *_TINY_VGG, "data.eval_batch_size=16", "--large-batch", "16", "--precision-nets", "vgg"],
}


STEP_NAMES = ("headline", "reference", "syncs", "profile", "best", "bench")  # plan()'s, in its order


def plan(out: Path, data_root: Path, best_epochs: int, bench_steps: int, rehearse: bool = False) -> list[Step]:
    """The runs, most valuable first: the mission's command and the reference's epoch time, then the sync
    detector and the profile, then experiment=best, then the benchmark. A rehearsal runs the same commands
    on the CPU with :data:`REHEARSAL_OVERRIDES` added."""
    seconds, best = (REHEARSAL_SECONDS, REHEARSAL_BEST) if rehearse else (GPU_SECONDS, GPU_BEST)
    small = REHEARSAL_OVERRIDES if rehearse else {}
    quiet, root = ["trainer.enable_progress_bar=false"], f"data.root={data_root}"

    def train(name: str, *overrides: str) -> list[str]:
        return ["train.py", *overrides, root, *quiet, *small.get(name, []), f"hydra.run.dir={out / 'runs' / name}"]

    reserve = best["startup"] + best["evaluation"]  # what experiment=best needs beside its epochs
    return [
        Step("headline", train("headline", "model=vgg", "trainer.max_epochs=2"), *seconds["headline"],
             extra={"command": "python train.py model=vgg trainer.max_epochs=2 data.root=<cifake>"}),
        Step("reference", train("reference", "experiment=reference", "trainer.max_epochs=2", "evaluate=false"),
             *seconds["reference"]),
        # PyTorch's sync detector over 20 training steps (the CPU tests count host reads; this sees them all).
        Step("syncs", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device_transfers.py", "-k",
                       "cuda"], *seconds["syncs"], needs_data=False),
        # Where a step's time goes: 20 steps of the reference recipe under PyTorch's profiler.
        Step("profile", train("profile", "experiment=reference", "debug=gpu_profile"), *seconds["profile"]),
        Step("best", train("best", "experiment=best", f"trainer.max_epochs={best_epochs}", "data.validate_on=test",
                           "callbacks.model_checkpoint.monitor=null"),
             reserve + 2 * best["epoch"], reserve + best_epochs * best["epoch"],
             extra={"epochs": best_epochs, "reserve": reserve}),
        Step("bench", ["-m", "cifake.tools.bench", "--sections", "train,eval,precision", "--steps", str(bench_steps),
                       "--warmup", "1" if rehearse else "5", "--repeats", "1", "--out", str(out / "bench" / "bench.md"),
                       root, *small.get("bench", [])], *seconds["bench"]),
    ]


def max_time(seconds: float) -> str:
    """``trainer.max_time`` for ``seconds`` (whole, at least 1), as Lightning's Timer reads it: DD:HH:MM:SS."""
    minutes, secs = divmod(max(1, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{secs:02d}"


def allocate(left: float, step: Step, later: list[Step]) -> float | str:
    """The seconds ``step`` may run with ``left`` seconds of the budget to go: what it wants, less what
    the ``later`` steps need at least, but never less than its own minimum (earlier steps matter more);
    or, where even that minimum is not left, why it does not run."""
    if left < step.minimum:
        return (f"no time: it needs {step.minimum:.0f} s and {max(left, 0):.0f} s of the budget are left "
                "(--budget gives more)")
    return max(step.minimum, min(step.want, left - sum(s.minimum for s in later)))


def sigint_as_default() -> None:
    """In a step's process before it runs: SIGINT back to its default. A shell's background job (``make
    gpu-check &``, ``nohup ... &``) ignores SIGINT, its children inherit that, and Python then never turns
    SIGINT into a KeyboardInterrupt: a step past its time would not stop until it was killed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_step(name: str, args: list[str], out: Path, timeout: float, env: dict[str, str] | None = None,
             **extra: Any) -> dict[str, Any]:
    """Run ``python <args>`` from the checkout's root with its output in ``out/logs/<name>.log``; past
    ``timeout`` seconds it is interrupted (Lightning then stops and flushes its logs), then killed. Returns
    its record for ``steps.json``."""
    logfile = out / "logs" / f"{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    start, timed_out = time.time(), False
    with logfile.open("w") as fh:
        fh.write(f"$ python {' '.join(args)}\n")
        fh.flush()
        # Its own process group: the interrupt and the kill reach the decode workers too, and nothing else.
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=sigint_as_default)
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    end = time.time()
    return {"name": name, "args": args, "start": start, "end": end, "seconds": end - start, "timeout": timeout,
            "returncode": proc.returncode, "timed_out": timed_out, "log": str(logfile.relative_to(out)), **extra}


class GpuSampler(threading.Thread):
    """Samples the GPU's utilisation into a CSV file (``source,time,gpu_percent,memory_percent``): NVML's
    ``utilization.gpu`` every ``1/hz`` s (``rates``: the share of the driver's last sample period in which a
    kernel ran) and, where the driver gives them, its own timestamped samples (``driver``)."""

    def __init__(self, path: Path, hz: float = 10.0, index: int = 0) -> None:
        super().__init__(daemon=True)
        self.path, self.period, self.index = path, 1.0 / hz, index
        self.halt = threading.Event()
        self.problem: str | None = None

    def run(self) -> None:
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception as err:  # no NVML: the table says the busy share was not measured, and why
            self.problem = f"NVML unavailable: {err}"
            return
        last, raw = 0, True
        with self.path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["source", "time", "gpu_percent", "memory_percent"])
            next_drain = 0.0
            while not self.halt.wait(self.period):
                now = time.time()
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                out.writerow(["rates", f"{now:.3f}", rates.gpu, rates.memory])
                if raw and now >= next_drain:  # the driver's buffer holds its recent samples: drain it each second
                    next_drain = now + 1.0
                    try:
                        _kind, samples = pynvml.nvmlDeviceGetSamples(handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, last)
                    except pynvml.NVMLError as err:
                        # NOT_FOUND: no sample since the last one; anything else: not here (a VM, an old driver)
                        raw = err.value == pynvml.NVML_ERROR_NOT_FOUND
                        continue
                    for s in samples:
                        if s.timeStamp > last:
                            out.writerow(["driver", f"{s.timeStamp / 1e6:.6f}", s.sampleValue.uiVal, ""])
                            last = s.timeStamp
            fh.flush()
        pynvml.nvmlShutdown()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(bundle: Path, rehearse: bool) -> dict[str, Any]:
    """What ran the check: nvidia-smi's GPU and driver, torch and its CUDA and cuDNN, python; in a
    rehearsal, the CPU in place of the GPU."""
    import torch

    gpus, problem = _nvidia_smi("name,driver_version,memory.total")
    if rehearse:
        device, capability = f"CPU: {_cpu_name()} (a rehearsal: no GPU used)", "none (CPU)"
    else:
        device, capability = torch.cuda.get_device_name(), ".".join(map(str, torch.cuda.get_device_capability()))
    return {
        "nvidia_smi": gpus or [problem], "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "torch_device": device, "capability": capability,
        "python": sys.version.split()[0], "executable": sys.executable, "bundle": str(bundle),
        "cpus": os.cpu_count(), "rehearsal": rehearse,
    }


def device_problem(rehearse: bool) -> str | None:
    """After a step failed: does a CUDA kernel still run? Asked of a fresh process (this one's CUDA context
    can outlive a lost device); ``None`` in a rehearsal, whose CPU does not go away."""
    if rehearse:
        return None
    code = "import torch; torch.ones(1, device='cuda').add_(1).item()"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "a CUDA kernel in a fresh process did not finish in 60 s"
    if done.returncode == 0:
        return None
    said = (done.stderr or done.stdout).strip().splitlines()
    return f"a CUDA kernel fails in a fresh process: {said[-1] if said else f'exit {done.returncode}'}"


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def run_check(args: argparse.Namespace) -> int:
    """The ``run`` subcommand: everything in the module docstring, in that order. Returns 0 when every step
    was tried, 1 when the check stopped early (no data, no bundle, no GPU) or failed itself; each failure is
    one line on the console and one row of the table."""
    began = time.time()  # the budget counts from here: torch's first import and CUDA's start are part of it
    if not args.rehearse:
        problem = cuda_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 2
    out = fresh_folder(args.out_dir.resolve())
    out.mkdir(parents=True)
    # Our own lines only, on stdout and in check.log (TensorBoard's reader logs through the root logger).
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):  # a second run in one process (the tests) writes to its own folder
        log.removeHandler(handler)
        handler.close()
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(out / "check.log")):
        handler.setFormatter(logging.Formatter("[gpu_check %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
    log.info("writing into %s%s", out, " (a rehearsal on the CPU)" if args.rehearse else "")
    env_record = {**environment(args.bundle, args.rehearse), "sample_hz": args.sample_hz, "budget": args.budget}
    sampler = GpuSampler(out / "gpu_samples.csv", hz=args.sample_hz)
    sampler.start()
    steps: list[dict[str, Any]] = []
    status = 0
    try:
        if args.no_install:
            env_record["install"] = {"skipped": "--no-install"}
        else:
            env_record["install"] = install_bundle(args.bundle)
            if not env_record["install"]["error"]:  # an error is said once, where the check stops
                log.info("bundle: %s", ", ".join(env_record["install"]["installed"]) or "nothing to install")
        _write_json(out / "environment.json", env_record)
        run_steps(args, out, steps, began, env_record["install"].get("error"))
    except CheckStop as stop:
        log.error("stopped: %s", stop)
        env_record["stopped"] = str(stop)
        status = 1
    except Exception as err:  # the check's own fault: one line here, the traceback in check.log
        with (out / "check.log").open("a") as fh:
            traceback.print_exc(file=fh)
        log.error("the check itself failed: %s: %s (traceback in %s)", type(err).__name__, err, out / "check.log")
        env_record["stopped"] = f"the check itself failed: {type(err).__name__}: {err}"
        status = 1
    finally:  # whatever stopped the check, the table and the report say what was done
        sampler.stop()
        env_record.update(sampler_problem=sampler.problem, check_seconds=time.time() - began)
        _write_json(out / "environment.json", env_record)
        _write_json(out / "steps.json", steps)
        try:
            table = markdown(summarize(out))
        except Exception as err:  # a record the reader cannot read: say so, keep the folder for `table`
            with (out / "check.log").open("a") as fh:
                traceback.print_exc(file=fh)
            table = markdown([("the table", f"could not be read from {out}: {type(err).__name__}: {err} "
                                            "(traceback in check.log)")])
            status = 1
        (out / "gpu_check.md").write_text(table)
        print(table)
        if args.report_to:
            for path in report(out, args.report_to):
                log.info("copied %s", path)
    return status


def run_steps(args: argparse.Namespace, out: Path, steps: list[dict[str, Any]], began: float,
              install_error: str | None) -> None:
    """Extract the data, then run :func:`plan`'s steps, each for the seconds :func:`allocate` gives it of
    what is left of the budget; their records go into ``steps`` (and ``steps.json`` after each). Raises
    :class:`CheckStop` where going on is pointless: the bundle did not install, or the GPU went away."""
    if install_error:  # every step imports Hydra or the project: none could run
        why = "the bundle did not install (see its row)"
        steps.extend({"name": name, "skipped": why} for name in STEP_NAMES)
        raise CheckStop(f"the bundle did not install, so no step can run: {_one_line(install_error)}")
    data = args.data or (rehearsal_archive(args.scratch) if args.rehearse else args.bundle / ARCHIVE)
    try:
        data_root, extracted = prepare_data(data, args.scratch)
    except CheckStop as err:
        steps.append({"name": "extract", "error": str(err)})
        log.error("no data: %s", err)
        data_root = None
    else:
        steps.append(extracted)
        log.info("CIFAKE at %s (%s)", data_root, extracted.get("note") or f"{extracted['files']:,} files "
                 f"extracted from {extracted['archive']} in {extracted['seconds']:.1f} s with {extracted['how']}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAKE_CACHE_DIR": str(args.scratch / "cache")}
    todo = plan(out, data_root or Path("<none>"), args.best_epochs, args.bench_steps, args.rehearse)
    runnable = [s for s in todo if data_root is not None or not s.needs_data]
    for step in todo:
        if step not in runnable:
            steps.append({"name": step.name, "skipped": "no CIFAKE data (see the archive's row)"})
            continue
        later = runnable[runnable.index(step) + 1:]
        timeout = allocate(args.budget - (time.time() - began), step, later)
        if isinstance(timeout, str):
            steps.append({"name": step.name, "skipped": timeout})
            log.info("%s: not run: %s", step.name, timeout)
            continue
        step_args = list(step.args)
        if step.name == "best":  # training stops in time for the evaluation: sized before training starts
            step_args.append(f"++trainer.max_time='{max_time(timeout - step.extra['reserve'])}'")
        log.info("%s: python %s (timeout %.0f s)", step.name, " ".join(step_args), timeout)
        record = run_step(step.name, step_args, out, timeout, env, **step.extra)
        steps.append(record)
        log.info("%s: %s", step.name, _status(record, out))
        _write_json(out / "steps.json", steps)  # after each run: a crash of the check keeps what was done
        if record["returncode"] or record["timed_out"]:
            gone = device_problem(args.rehearse)
            if gone:
                rest = todo[todo.index(step) + 1:]
                steps.extend({"name": s.name, "skipped": f"CUDA stopped working during {step.name}"}
                             for s in rest)
                raise CheckStop(f"CUDA stopped working during {step.name}: {gone}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def report(out: Path, dest: Path) -> list[Path]:
    """Copy the table, the check's and each run's log and a record of the run (``out`` without
    checkpoints and predictions: what :func:`summarize` reads, and more) flat into ``dest``: seven files."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = [(out / "gpu_check.md", "gpu_check.md"), (out / "check.log", "gpu_check.log")]
    copies += [(out / "logs" / f"{name}.log", f"{name}.log") for name in STEP_LOGS]
    written = []
    for src, name in copies:
        if src.is_file():
            shutil.copyfile(src, dest / name)
            written.append(dest / name)
    with tarfile.open(dest / RECORD, "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=lambda info: None if info.name.endswith(LEFT_OUT) else info)
    return [*written, dest / RECORD]


# -- the table, from a recorded run folder ----------------------------------------------------------
def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def tensorboard(run_dir: Path) -> Any | None:
    """The run's TensorBoard events, every sample kept (None without any)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tensorboard"
    if not any(folder.glob("events.out.tfevents.*")):
        return None
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: Any, tag: str) -> list[tuple[float, int, float]]:
    """``(wall time, step, value)`` of each ``tag`` event, by step (none when it was not logged)."""
    if events is None or tag not in events.Tags()["scalars"]:
        return []
    return sorted(((e.wall_time, e.step, e.value) for e in events.Scalars(tag)), key=lambda e: (e[1], e[0]))


def _figure_epochs(run_dir: Path, epochs: int) -> int:
    """How many of the first ``epochs`` epochs drew figures: every ``figures_every_n_epochs``-th and the
    last (``FigureCallback.due``), as the run's own ``.hydra/config.yaml`` set it."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    every = int(cfg.get("figures_every_n_epochs") or 1)
    last = int((cfg.get("trainer") or {}).get("max_epochs") or epochs)
    return sum(1 for epoch in range(1, epochs + 1) if epoch % every == 0 or epoch >= last)


def dashboards(events: Any, run_dir: Path) -> str:
    """Which of :data:`DASHBOARDS` the run wrote, and whether each came as often as it should: the
    epoch scalars every epoch, the figures every epoch that draws them, the HPARAMS row once."""
    if events is None:
        return "no TensorBoard events"
    tags = events.Tags()
    expected = [(kind, tag) for kind, names in DASHBOARDS.items() for tag in names]
    missing = [tag for kind, tag in expected if tag not in tags[kind]]
    epochs = len(scalars(events, "train/loss"))
    figures = _figure_epochs(run_dir, epochs)
    short = []
    for kind, tag in expected:
        want = 1 if tag.startswith("hp/") else epochs if kind == "scalars" else figures
        got = 0 if tag in missing else len(getattr(events, kind.capitalize())(tag))
        if tag not in missing and got < want:
            short.append(f"{tag} ({got} of {want})")
    if missing or short:
        return "; ".join(filter(None, [f"missing: {', '.join(missing)}" if missing else "",
                                       f"too few: {', '.join(short)}" if short else ""]))
    return (f"all {len(expected)} written ({', '.join(t for _, t in expected)}): the scalars at each of {epochs} "
            f"epochs, the figures at {figures}")


def samples(path: Path) -> dict[str, list[tuple[float, float]]]:
    """The GPU samples of :class:`GpuSampler`, by source: ``(time, gpu_percent)``."""
    found: dict[str, list[tuple[float, float]]] = {}
    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                found.setdefault(row["source"], []).append((float(row["time"]), float(row["gpu_percent"])))
    except (OSError, ValueError, KeyError):
        pass
    return found


def busy_share(gpu: dict[str, list[tuple[float, float]]], start: float, end: float, why_not: str | None,
               hz: float = 10) -> str:
    """The GPU's mean utilisation between ``start`` and ``end`` (wall times), from each sample source."""
    parts = []
    for source, what in (("rates", f"NVML utilization.gpu sampled at {hz:g} Hz"),
                         ("driver", "the driver's own samples")):
        inside = [value for t, value in gpu.get(source, []) if start <= t <= end]
        if inside:
            parts.append(f"{statistics.fmean(inside):.0f}% ({what}, {len(inside)} in {end - start:.1f} s)")
    return "; ".join(parts) or f"not measured{f': {why_not}' if why_not else ''}"


def _last_error(log_file: Path) -> str:
    """The last ``error:`` line (our friendly errors) or exception line of a run's log, if any."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [line for line in lines if re.match(r"(error: |[\w.]*(Error|Exception)\b)", line)]
    return f": {found[-1][:300]}" if found else ""


def _status(step: dict[str, Any] | None, out: Path | None = None) -> str:
    """How a step ended, in words (with its error line when it failed and ``out`` holds its log)."""
    if step is None:
        return "not run"
    if "skipped" in step:
        return f"not run: {step['skipped']}"
    if step.get("timed_out"):
        return f"timed out after {step['timeout']:.0f} s (interrupted; what it logged is used below)"
    if step.get("returncode"):
        why = _last_error(out / step["log"]) if out is not None else ""
        return f"failed (exit {step['returncode']}) after {step['seconds']:.0f} s, log {step['log']}{why}"
    return f"exit 0 in {step['seconds']:.0f} s of the {step['timeout']:.0f} s it was given"


def _epoch_rows(label: str, events: Any, gpu: dict, why_not: str | None, hz: float) -> list[tuple[str, str]]:
    """The second epoch's time (from the end of the first to the end of the second, validation and
    dashboards included) and the GPU's busy share over it."""
    ends = [wall for wall, _step, _value in scalars(events, "train/loss")]  # logged as each epoch ends
    if len(ends) < 2:
        return [(f"{label}: second epoch, validation included", "not reached")]
    return [(f"{label}: second epoch, validation included", f"{ends[1] - ends[0]:.1f} s"),
            (f"{label}: GPU busy during the second epoch", busy_share(gpu, ends[0], ends[1], why_not, hz))]


def summarize(out: Path) -> list[tuple[str, str]]:
    """The check's measurements as ``(measurement, value)`` rows, read from a run folder written by
    ``run``: ``environment.json``, ``steps.json``, ``gpu_samples.csv``, each run's TensorBoard events and
    ``metrics.json``, and ``bench/bench.md``."""
    env = _read_json(out / "environment.json", {})
    steps = {s["name"]: s for s in _read_json(out / "steps.json", [])}
    gpu, why_not = samples(out / "gpu_samples.csv"), env.get("sampler_problem")
    hz, rehearse = env.get("sample_hz", 10), bool(env.get("rehearsal"))
    rows: list[tuple[str, str]] = [
        ("GPU (nvidia-smi: name, driver, memory)", "; ".join(env.get("nvidia_smi", [])) or "?"),
        ("torch / CUDA / cuDNN", f"{env.get('torch', '?')} / {env.get('cuda', '?')} / {env.get('cudnn', '?')}"),
        ("device as torch sees it", f"{env.get('torch_device', '?')}, compute capability {env.get('capability', '?')}"),
        ("python", f"{env.get('python', '?')} ({env.get('executable', '?')}), {env.get('cpus', '?')} CPUs"),
    ]
    install = env.get("install", {})
    rows.append(("bundle installed offline (pip --no-index --no-deps)", install.get("error") or install.get("skipped")
                 or (", ".join(install.get("installed", [])) or "nothing: all importable already")))
    extract = steps.get("extract", {})
    rows.append(("CIFAKE archive", extract.get("error") or extract.get("note")
                 or (f"{extract['files']:,} files extracted from {extract.get('archive', '?')} in "
                     f"{extract['seconds']:.1f} s with {extract.get('how', '?')}" if "files" in extract
                     else "not reached")))

    head = steps.get("headline")
    label = "`train.py model=vgg trainer.max_epochs=2` (the mission's command)"
    rows.append((label, _status(head, out)))
    events = tensorboard(out / "runs" / "headline")
    acc = scalars(events, "val/acc")
    rows.append(("headline: dashboards in TensorBoard", dashboards(events, out / "runs" / "headline")
                 if head else "not run"))
    rows += _epoch_rows("headline", events, gpu, why_not, hz) if head else []
    if acc:
        rows.append(("headline: val/acc (held-out 10% of train) after each epoch",
                     ", ".join(f"{v:.4f}" for *_, v in acc)))

    ref = steps.get("reference")
    rows.append(("`experiment=reference`, 2 epochs at batch 32 (validating on test)", _status(ref, out)))
    if ref:
        rows += _epoch_rows("reference", tensorboard(out / "runs" / "reference"), gpu, why_not, hz)

    syncs = steps.get("syncs")
    said = _pytest_summary(out / syncs["log"]) if syncs and "log" in syncs else None
    status = _status(syncs, out)
    if rehearse and said and re.search(r"\b1 skipped\b", said) and not syncs.get("returncode"):
        status = (f"needs CUDA: on a GPU, `python {' '.join(syncs['args'])}` raises at the first host sync inside a "
                  "training step; in this rehearsal the test skipped itself, as it does without CUDA")
    rows.append(("host syncs in 20 training steps (`torch.cuda.set_sync_debug_mode('error')`, "
                 "tests/test_device_transfers.py)", status))
    if said is not None:
        rows.append(("syncs: pytest says", said))
    profile = steps.get("profile")
    rows.append(("`experiment=reference debug=gpu_profile` (training steps under PyTorch's profiler)",
                 _status(profile, out)))
    rows += _profile_rows(out / "runs" / "profile" / PROFILE, rehearse) if profile and "log" in profile else []

    best = steps.get("best")
    rows.append((f"`experiment=best`, {best.get('epochs', '?') if best else '?'} epoch(s), validating on test, "
                 "wall time of train.py (evaluation included)", _status(best, out)))
    if best and "start" in best:
        rows += _best_rows(out / "runs" / "best", best, gpu, why_not, hz)

    bench = steps.get("bench")
    rows.append(("`python -m cifake.tools.bench --sections train,eval,precision`", _status(bench, out)))
    rows += _bench_rows(out / "bench" / "bench.md")
    if "stopped" in env:
        rows.append(("the check stopped early", env["stopped"]))
    if "check_seconds" in env:
        budget = f" of the {env['budget']:.0f} s budget" if "budget" in env else ""
        rows.append(("the whole check", f"{env['check_seconds']:.0f} s{budget}"))
    return rows


def _best_rows(run_dir: Path, step: dict[str, Any], gpu: dict, why_not: str | None,
               hz: float) -> list[tuple[str, str]]:
    events = tensorboard(run_dir)
    curve = scalars(events, "val/acc")  # the test split, after every epoch (data.validate_on=test)
    ends = [wall for wall, *_ in scalars(events, "train/loss")]
    by_max_time = not (step.get("timed_out") or step.get("returncode")) and len(ends) < step.get("epochs", 0)
    rows = [("best: epochs trained", f"{len(ends)} of {step.get('epochs', '?')}"
             + (" (trainer.max_time stopped it: the one-cycle schedule did not finish)" if by_max_time else ""))]
    if len(ends) >= 2:
        durations = [b - a for a, b in zip(ends, ends[1:], strict=False)]
        rows.append(("best: epoch time, median of epochs 2 on (validation on test included)",
                     f"{statistics.median(durations):.1f} s"))
        rows.append(("best: GPU busy from the end of epoch 1 to the last",
                     busy_share(gpu, ends[0], ends[-1], why_not, hz)))
    metrics = _read_json(run_dir / "metrics.json", None)
    if metrics:
        tta = metrics.get("tta", {}).get("mode", "none")
        rows.append((f"best: test accuracy (final weights, TTA {tta})", f"{metrics['accuracy']:.4f}"))
        if "leak_free" in metrics:
            rows.append(("best: leak-free test accuracy", f"{metrics['leak_free']['accuracy']:.4f}"))
    else:
        rows.append(("best: test accuracy", "no metrics.json (the run did not reach its evaluation)"))
    reached = next(((wall, i + 1) for i, (wall, _s, acc) in enumerate(curve) if acc >= TARGET), None)
    rows.append((f"best: time to {TARGET} test accuracy (per-epoch test curve, no TTA; from the launch of train.py)",
                 f"{reached[0] - step['start']:.0f} s (epoch {reached[1]})" if reached else "not reached"))
    if curve:
        rows.append(("best: test accuracy after each epoch", ", ".join(f"{v:.4f}" for *_, v in curve)))
    return rows


def _pytest_summary(log_file: Path) -> str:
    """pytest's last line (``1 passed in 12.3s``), or the first failure's error line."""
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("E ")]
    return "; ".join(filter(None, [lines[-1] if lines else "", errors[0][:300] if errors else ""]))


def _profile_rows(path: Path, rehearse: bool = False, top: int = 8) -> list[tuple[str, str]]:
    """From Lightning's PyTorchProfiler report: the time of a profiled step, the CPU and CUDA totals
    over the profiled steps (CUDA/step time is the GPU's busy share) and the kernels that took most. A
    rehearsal's report has no CUDA columns: those rows say that they need CUDA."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return [("profile", f"no {path.name}")]
    header = next((line for line in lines if "Name" in line and "Self CPU" in line), None)
    names = re.split(r"\s{2,}", header.strip()) if header else []
    totals: dict[str, str] = {}
    rows, kernels, steps = [], [], "?"
    for line in lines:
        if line.startswith(("Self CPU time total", "Self CUDA time total")):
            totals[line.split(":")[0].lower()] = line.split(":", 1)[1].strip()
            continue
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(names) or not names:
            continue
        if cells[0] == "ProfilerStep*":
            steps = cells[names.index("# of Calls")] if "# of Calls" in names else "?"
            if "CPU time avg" in names:
                rows.append(("profile: wall time of one step (ProfilerStep avg)", cells[names.index("CPU time avg")]))
        elif len(kernels) < top and "Self CUDA" in names and not cells[0].startswith(("aten::", "[pl]", "-", "Name",
                                                                                       "Profiler")):
            kernels.append(f"{cells[0][:60]} {cells[names.index('Self CUDA')]}")
    cuda = "needs CUDA (a rehearsal on the CPU profiles no kernels)" if rehearse else "not in the report"
    for name in ("self cpu time total", "self cuda time total"):
        rows.append((f"profile: {name} ({steps} steps)", totals.get(name, cuda if "cuda" in name else "not in the "
                                                                                                       "report")))
    rows.append((f"profile: top {len(kernels) or top} kernels by CUDA time (self)", "; ".join(kernels) or cuda))
    return rows


def _bench_rows(path: Path) -> list[tuple[str, str]]:
    """The benchmark's rows: ``bench (b) training, batch 32: <path>`` -> ``images/s (ratio)``, found by
    the names of its table's columns."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return [("bench", f"no {path.name}")]
    rows = [("bench: where and how", lines[0])] if lines else []
    columns: list[str] = []
    for line in lines:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if cells[:1] == ["measurement"]:
            columns = cells
        elif columns and len(cells) == len(columns) and cells[0].startswith("("):
            got = dict(zip(columns, cells, strict=True))
            rows.append((f"bench {got['measurement']}: {got['path']}",
                         f"{got['median images/s']} images/s (x{got['ratio']} the first path)"))
    if len(rows) < 2:
        rows.append(("bench", f"no measurement in {path.name}"))
    return rows


def markdown(rows: list[tuple[str, str]]) -> str:
    """One Markdown table, ``measurement | value``."""
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    return "\n".join(["| measurement | value |", "|---|---|", *(f"| {cell(m)} | {cell(v)} |" for m, v in rows)]) + "\n"


# -- the command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    bundle = sub.add_parser("bundle", help="here, with the network: the wheels and the archive for the device")
    bundle.add_argument("dest", type=Path, help="the bundle folder, e.g. .device-bundle")
    bundle.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE, help="the CIFAKE archive to carry")
    bundle.add_argument("--no-data", action="store_true", help="wheels only")

    install = sub.add_parser("install", help="install the bundle's wheels offline into this python")
    install.add_argument("--bundle", type=Path, default=ROOT / ".device-bundle", help="what make device-bundle wrote")

    run = sub.add_parser("run", help="on the CUDA machine: the check")
    run.add_argument("--bundle", type=Path, default=ROOT / ".device-bundle", help="what make device-bundle wrote")
    run.add_argument("--out-dir", type=Path, required=True, help="a fresh folder for the runs, logs and table")
    run.add_argument("--report-to", type=Path, help="also copy the table, the logs and a record here, flat")
    run.add_argument("--data", type=Path, help="CIFAKE: a folder or an archive (default: the bundle's archive)")
    run.add_argument("--scratch", type=Path,
                     help=f"where the archive is extracted and decoded (default {GPU_SCRATCH}, reused by a rerun; "
                          "a rehearsal's own temporary folder, removed at its end)")
    run.add_argument("--no-install", action="store_true", help="do not install the bundle")
    run.add_argument("--rehearse", action="store_true",
                     help="the same plan on the CPU: the demo generator's images (packed and unpacked as the "
                          "archive is), small networks, few steps; what needs CUDA says so (docs/gpu-check.md)")
    run.add_argument("--budget", type=float,
                     help=f"seconds for the whole check (default {GPU_BUDGET:.0f}; a rehearsal {REHEARSAL_BUDGET:.0f})")
    run.add_argument("--best-epochs", type=int,
                     help="epochs of experiment=best (default 12; a rehearsal 2); trainer.max_time stops its "
                          "training in time for its evaluation")
    run.add_argument("--bench-steps", type=int, help="timed batches per benchmark measurement (default 20; a "
                                                     "rehearsal 2)")
    run.add_argument("--sample-hz", type=float, default=10.0, help="GPU utilisation samples per second")

    table = sub.add_parser("table", help="the table again, from a recorded run folder")
    table.add_argument("out_dir", type=Path)

    args = parser.parse_args(argv)
    if args.command == "bundle":
        files = build_bundle(args.dest, None if args.no_data else args.data)
        for path in files:
            print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path}")
        print(f"{sum(p.stat().st_size for p in files) / 2**20:8.2f} MiB  in all")
        return 0
    if args.command == "install":
        done = install_bundle(args.bundle)
        print(json.dumps(done))
        return 1 if done["error"] else 0
    if args.command == "table":
        print(markdown(summarize(args.out_dir)), end="")
        return 0
    gpu = not args.rehearse
    args.budget = args.budget or (GPU_BUDGET if gpu else REHEARSAL_BUDGET)
    args.best_epochs = args.best_epochs or (12 if gpu else 2)
    args.bench_steps = args.bench_steps or (20 if gpu else 2)
    if args.scratch is None and args.rehearse:  # rehearsals side by side never share one
        with tempfile.TemporaryDirectory(prefix="cifake-rehearsal-") as scratch:
            args.scratch = Path(scratch)
            return run_check(args)
    args.scratch = (args.scratch or GPU_SCRATCH).resolve()
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
