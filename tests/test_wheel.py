"""The wheel, installed for real: built from the checkout's files, installed (not editable, no
dependencies) in a fresh virtual environment outside the checkout, and run from a folder outside it.
It ships every config, its console scripts train, predict, answer ``--help`` and ``--cfg`` on the
configs inside the package, and a user's own config folder adds to the shipped config groups.

The new environment reuses the test interpreter's installed dependencies (no network): a ``.pth``
file points at a folder of links to them, leaving out the checkout's own (editable) cifake."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.helpers.config import tiny_demo_overrides
from tests.helpers.images import write_image

JOBS = ("train", "evaluate", "predict", "export", "audit", "serve")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))  # what --help should list
# The files a build reads when git cannot list the checkout's files (an unpacked sdist, say).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "cifake", "conf")
# Tiny demo data and net; experiment=demo picks the demo data itself.
TINY = [o for o in tiny_demo_overrides(train_per_class=16, test_per_class=8) if o != "data=demo"]
HEAVY = ("torch", "lightning", "sklearn", "matplotlib", "pytorch_grad_cam", "onnxruntime")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    work: Path  # where the scripts run: outside the checkout, with nothing of it in reach
    env: dict[str, str]

    def run(self, command: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        """``command`` (a console script, or ``python``) of the new environment, run in ``work``."""
        exe = self.venv / "bin" / command
        return subprocess.run([str(exe), *args], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def copy_checkout(dest: Path) -> Path:
    """The checkout's files as a fresh clone would have them, plus files not committed yet that git
    does not ignore: no build/, egg-info, caches or run folders leak into the build."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True) if shutil.which("git") else None
    if listed is not None and listed.returncode == 0:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        for rel in BUILD_INPUTS:
            if (ROOT / rel).is_dir():
                shutil.copytree(ROOT / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
    return dest


def link_dependencies(dest: Path) -> Path:
    """A folder of links to everything installed beside the test interpreter except cifake itself
    (its editable install: dist-info, the finder and its .pth, which would map it to the checkout)."""
    dest.mkdir()
    for site in {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}:
        for entry in site.iterdir():
            name = entry.name
            if (name.lower().startswith(("cifake", "__editable__")) or name.endswith((".pth", ".egg-link"))
                    or name == "__pycache__" or (dest / name).exists()):
                continue
            (dest / name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.resolve().parents, "the test environment must lie outside the checkout"
    src = copy_checkout(base / "src")
    dist = base / "dist"
    ok(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                       "--quiet", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300))
    (wheel,) = dist.glob("cifake-*.whl")

    venv = base / "venv"
    ok(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                      timeout=120))
    python = venv / "bin" / "python"
    site_packages = Path(ok(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True)).stdout.strip())
    (site_packages / "cifake_test_dependencies.pth").write_text(f"{link_dependencies(base / 'deps')}\n")

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HYDRA_FULL_ERROR", "CIFAKE_ROOT")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", CIFAKE_CACHE_DIR=str(base / "cache"),
               MPLCONFIGDIR=str(base / "mpl"), PYTHONDONTWRITEBYTECODE="1")
    # pip is the test interpreter's, reached through the links; it installs into the new environment.
    ok(subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                       "--disable-pip-version-check", str(wheel)], env=env, capture_output=True, text=True,
                      timeout=300))
    work = base / "work"
    work.mkdir()
    return Installed(wheel, venv, site_packages, work, env)


def run_folders(root: Path) -> set[Path]:
    return set(root.glob("*/runs/*"))


@pytest.mark.slow
def test_the_wheel_ships_every_config_and_module(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    configs = {f"cifake/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert {"cifake/conf/train.yaml", "cifake/conf/hydra/launcher/slurm.yaml",
            "cifake/conf/experiment/demo.yaml"} <= configs
    assert configs <= names, f"not in the wheel: {sorted(configs - names)}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cifake").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, f"not in the wheel: {sorted(modules - names)}"
    assert "cifake/serving/page.html" in names  # serve.py's page, package data
    scripts = zipfile.ZipFile(installed.wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    for job in JOBS:
        assert f"cifake-{job} = cifake.cli:{job}" in scripts.decode()


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_and_cli_is_light(installed: Installed) -> None:
    probe = ("import json, sys, cifake, cifake.cli, cifake.core.configs\n"
             f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
             "print(json.dumps({'file': cifake.__file__, 'conf': str(cifake.core.configs.config_dir()),"
             " 'heavy': heavy}))")
    found = json.loads(ok(installed.run("python", "-c", probe)).stdout)
    assert Path(found["file"]).parent == installed.site_packages / "cifake", "cifake came from elsewhere"
    assert ROOT not in Path(found["file"]).resolve().parents
    assert Path(found["conf"]) == installed.site_packages / "cifake" / "conf"
    assert found["heavy"] == [], "importing cifake.cli must stay light (--help, --cfg, predicting from ONNX)"


@pytest.mark.slow
def test_every_console_script_answers_help_and_cfg(installed: Installed) -> None:
    shipped = installed.site_packages / "cifake" / "conf"
    for job in JOBS:
        help_text = ok(installed.run(f"cifake-{job}", "--help")).stdout
        assert f"{job} is powered by Hydra" in help_text and "== Config ==" in help_text
        composed = ok(installed.run(f"cifake-{job}", "--cfg", "all")).stdout  # Hydra's settings, then the job's
        assert f"\ntask_name: {job}\n" in composed
        # hydra.job.name: the run's <job>.log, as from python <job>.py
        assert f"\n  job:\n    name: {job}\n" in composed
        assert f"path: {shipped}\n" in composed
    train_help = ok(installed.run("cifake-train", "--help")).stdout
    assert f"experiment: {', '.join(EXPERIMENTS)}" in train_help
    overridden = ok(installed.run("cifake-train", "experiment=demo", "trainer.max_epochs=7", "--cfg", "job")).stdout
    assert "task_name: demo" in overridden and "max_epochs: 7" in overridden


@pytest.mark.slow
def test_the_console_scripts_train_and_predict(installed: Installed) -> None:
    outputs = installed.work / "outputs"
    # A tiny epoch through everything (the dashboards, the evaluation): the run folder, its log and a checkpoint to
    # predict with, as python train.py writes them.
    ok(installed.run("cifake-train", "experiment=demo", "trainer.max_epochs=1", *TINY))
    (trained,) = run_folders(outputs)
    assert trained.parent == outputs / "demo" / "runs"
    assert (trained / ".hydra" / "config.yaml").is_file() and (trained / "train.log").is_file()
    assert (trained / "results.json").is_file() and (trained / "metrics.json").is_file()
    best = trained / "checkpoints" / "best.ckpt"
    assert best.is_file()

    rng = np.random.default_rng(0)
    images = installed.work / "images"
    for i in range(3):
        write_image(images / f"{i}.jpg", rng)
    write_image(images / "nested" / "big.png", rng, size=64, fmt="PNG")
    ok(installed.run("cifake-predict", f"ckpt_path={best}", f"inputs=[{images}]", "progress_bar=false",
                     "device=cpu"))
    (predicted,) = set((outputs / "predict" / "runs").iterdir())
    with (predicted / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    # The run fitted its out-of-scope score (experiment=demo does): every row has one, and pixel noise may be
    # answered OUT_OF_SCOPE; no band was chosen, so never UNSURE.
    assert len(rows) == 4 and {r["predicted"] for r in rows} <= {"REAL", "FAKE", "OUT_OF_SCOPE"}
    assert all(float(r["out_of_scope"]) > 0 for r in rows)
    assert all(not r["error"] for r in rows)
    assert (predicted / "predict.log").is_file()

    # A mistake is one line and exit status 2, as from python predict.py.
    missing = installed.run("cifake-predict", f"ckpt_path={installed.work / 'none.ckpt'}", f"inputs=[{images}]")
    assert missing.returncode == 2 and "error: " in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_a_users_config_folder_adds_to_the_shipped_groups(installed: Installed) -> None:
    mine = installed.work / "my_conf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: demo\n  - override /model: resnet\n\n"
        "task_name: mine\ntrainer:\n  max_epochs: 3\n")
    (mine / "experiment" / "demo.yaml").write_text("# @package _global_\ntask_name: not_the_shipped_demo\n")
    (mine / "my_train.yaml").write_text("defaults:\n  - train\n  - _self_\n\nseed: 7\n")

    def job_config(*args: str) -> str:
        return ok(installed.run("cifake-train", *args, "--cfg", "job")).stdout

    for where in (["--config-dir", str(mine)], ["--config-dir", "my_conf"], [f"hydra.searchpath=[file://{mine}]"]):
        cfg = job_config(*where, "experiment=mine")
        assert "task_name: mine" in cfg and "max_epochs: 3" in cfg and "ResNet" in cfg, where
        # The shipped configs come first: a file of the same name as a shipped one is not used.
        assert "task_name: demo" in job_config(*where, "experiment=demo"), where
    assert f"experiment: {', '.join(sorted([*EXPERIMENTS, 'mine']))}" in ok(
        installed.run("cifake-train", "--config-dir", str(mine), "--help")).stdout
    # A primary config of one's own: --config-dir only (hydra.searchpath is read after the primary config).
    assert "seed: 7" in job_config("--config-dir", str(mine), "--config-name", "my_train")
    assert "Cannot find primary config" in installed.run(
        "cifake-train", f"hydra.searchpath=[file://{mine}]", "--config-name", "my_train", "--cfg", "job").stderr


@pytest.mark.slow
def test_the_wheel_answers_out_of_the_box_with_the_bundled_model(installed: Installed) -> None:
    assert installed.wheel.stat().st_size < 10 * 2**20  # the bundled weights included
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {"cifake/bundled/model.safetensors", "cifake/bundled/config.json"} <= names
    empty = installed.work / "empty"
    empty.mkdir()
    write_image(empty / "some.png", np.random.default_rng(3), size=64, fmt="PNG")
    proc = ok(subprocess.run([str(installed.venv / "bin" / "cifake-predict"), "some.png", "progress_bar=false"],
                             cwd=empty, env=installed.env, capture_output=True, text=True, timeout=300))
    output = proc.stdout + proc.stderr
    assert "No ckpt_path: using the bundled model" in output and str(installed.site_packages) in output
    assert any(line.strip().startswith("some.png: ") for line in output.splitlines()), output[-2000:]
