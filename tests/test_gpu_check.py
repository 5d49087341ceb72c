"""scripts/gpu_check.py where no GPU is: the bundle installs offline beside an image's torch, the check stops
in one line without CUDA, and the table is read right from recorded runs (written here, or by a CPU run)."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
_spec.loader.exec_module(gpu_check)

# The Python packages of the H200 machines' image ('cuda'), as .library/device/KINDS.md lists them: the fresh
# environment below sees these (those .venv has) and nothing else of .venv, as the device's python3 would.
DEVICE_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_image(dest: Path) -> Path:
    """A folder of links to what this interpreter has of :data:`DEVICE_IMAGE` (and the NVIDIA libraries
    torch loads): the device's site-packages, as far as this machine can show it."""
    dest.mkdir()
    wanted = {_norm(n) for n in DEVICE_IMAGE.split()}
    for dist in importlib.metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name not in wanted and not name.startswith("nvidia-"):
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or (dest / top).exists():
                continue
            source = Path(dist.locate_file(top))
            if source.exists():
                (dest / top).symlink_to(source)
    return dest


def _bundle(tmp_path: Path) -> Path:
    """The checkout's .device-bundle when it holds every wheel, else one built now (network), else skip."""
    here = ROOT / ".device-bundle"
    if all(any((here / "wheels").glob(f"{gpu_check._wheel_prefix(name, version)}*.whl"))
           for name, (version, _module) in gpu_check.BUNDLE.items()):
        return here
    try:
        gpu_check.build_bundle(tmp_path / "bundle", None)
    except (subprocess.CalledProcessError, SystemExit) as err:
        pytest.skip(f"no .device-bundle and it cannot be built here (no network?): {err}")
    return tmp_path / "bundle"


@pytest.mark.slow
def test_the_bundle_installs_offline_beside_the_image_torch(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    # Every wheel is pure python or abi3 for x86-64 Linux: the ones built for the device's 3.12 install here too.
    for wheel in (bundle / "wheels").glob("*.whl"):
        assert wheel.name.endswith(("-none-any.whl", "-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")), wheel
    image = device_image(tmp_path / "image")
    venv = tmp_path / "venv"
    # No pip of its own: the image's (linked below) installs into this interpreter, as the device's image's pip
    # does into its python3; ensurepip would spend seconds installing one that nothing needs.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "device_image.pth").write_text(f"{image}\n")  # after the venv's own site-packages on sys.path

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert run("-c", "import torch, lightning, tensorboard").returncode == 0
    assert run("-c", "import hydra").returncode != 0  # the image lacks it, as the device's does

    installed = run(str(SCRIPT), "install", "--bundle", str(bundle))
    assert installed.returncode == 0, installed.stderr
    assert {n.split()[0] for n in json.loads(installed.stdout)["installed"]} == set(gpu_check.BUNDLE)

    # One interpreter, not two (torch alone takes ~4 s to import on a 2-core CI machine): the project's heavy
    # modules import, and where each module came from.
    modules = [module for _version, module in gpu_check.BUNDLE.values()]
    where = run("-c", f"import json, {', '.join(modules)}, torch, cifake; "
                      "import cifake.jobs.train, cifake.tools.bench, cifake.models.gradcam, "
                      "cifake.evaluation.workflow, cifake.models.forest; "
                      f"print(json.dumps([m.__file__ for m in ({', '.join(modules)}, torch, cifake)]))")
    assert where.returncode == 0, where.stderr
    *bundled, torch_file, cifake_file = json.loads(where.stdout)
    assert all(Path(f).is_relative_to(site) for f in bundled), bundled  # from the fresh venv, not from .venv
    assert Path(torch_file).parent.parent == image  # the image's torch, untouched
    assert Path(cifake_file).is_relative_to(ROOT / "cifake")  # the checkout itself
    helped = run("train.py", "--help")
    assert helped.returncode == 0 and "experiment" in helped.stdout, helped.stderr
    again = run(str(SCRIPT), "install", "--bundle", str(bundle))  # a rerun finds everything there
    assert json.loads(again.stdout)["installed"] == [] and set(json.loads(again.stdout)["already_there"]) == set(
        gpu_check.BUNDLE)


def test_without_cuda_the_check_stops_at_once_in_one_line(tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--bundle", str(tmp_path / "no-bundle"), "--out-dir",
                           str(out), "--scratch", str(scratch)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, lines
    assert f"torch {torch.__version__}" in lines[0] and f"CUDA {torch.version.cuda}" in lines[0]
    assert "driver" in lines[0] and "CUDA is not usable" in lines[0]
    assert not out.exists() and not scratch.exists()  # nothing started: no run folder, no data


def test_a_non_empty_out_dir_gets_a_fresh_sibling(tmp_path: Path) -> None:
    assert gpu_check.fresh_folder(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "used").mkdir()
    assert gpu_check.fresh_folder(tmp_path / "used") == tmp_path / "used"  # empty: fine
    (tmp_path / "used" / "old.txt").write_text("old")
    fresh = gpu_check.fresh_folder(tmp_path / "used")
    assert fresh.parent == tmp_path and fresh.name.startswith("used-") and not fresh.exists()


def _write_samples(path: Path, spans: list[tuple[float, float, float]], hz: float = 10) -> None:
    """GPU samples as GpuSampler writes them: ``rates`` at ``hz`` with ``value`` from ``start`` to ``end``."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["source", "time", "gpu_percent", "memory_percent"])
        for start, end, value in spans:
            for i in range(int((end - start) * hz) + 1):
                out.writerow(["rates", f"{start + i / hz:.3f}", value, 10])


def _events(run_dir: Path, epoch_ends: list[float], val_acc: list[float], figures: bool = True,
            skip: tuple[str, ...] = ()) -> None:
    """TensorBoard events like a train.py run's: epoch scalars at ``epoch_ends`` (wall times), the
    dashboards' figures and PR curve each epoch, the HPARAMS row once."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    image = np.zeros((3, 4, 4), dtype=np.uint8)
    for epoch, (wall, acc) in enumerate(zip(epoch_ends, val_acc, strict=True)):
        step = 10 * (epoch + 1)
        for tag, value in (("val/loss", 0.3), ("val/acc", acc), ("val/auroc", 0.99), ("train/loss", 0.2)):
            if tag not in skip:
                writer.add_scalar(tag, value, step, walltime=wall)
        if figures:
            for tag in gpu_check.DASHBOARDS["images"]:
                if tag not in skip:
                    writer.add_image(tag, image, step, walltime=wall)
            counts = np.array([5, 3, 1]), np.array([1, 2, 4])
            writer.add_pr_curve_raw("val/pr_curve", counts[0], counts[1], counts[1], counts[0], np.ones(3),
                                    np.ones(3), step, num_thresholds=3, walltime=wall)
    writer.add_scalar("hp/val/acc", val_acc[-1], 0, walltime=epoch_ends[-1] + 1)
    writer.close()
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"figures_every_n_epochs: 1\ntrainer:\n  max_epochs: "
                                                    f"{len(epoch_ends)}\n")


def test_the_table_is_read_from_a_recorded_run(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    (out / "bench").mkdir(parents=True)
    env = {"nvidia_smi": ["NVIDIA H200, 580.159.03, 143771 MiB"], "torch": "2.11.0+cu130", "cuda": "13.0",
           "cudnn": 91002, "torch_device": "NVIDIA H200", "capability": "9.0", "python": "3.12.3",
           "executable": "/opt/torch/.venv/bin/python3", "cpus": 16, "sample_hz": 10, "check_seconds": 351.4,
           "install": {"installed": ["hydra-core 1.3.8", "omegaconf 2.3.1"], "already_there": [], "error": None}}
    steps = [
        {"name": "extract", "files": 120000, "seconds": 27.46, "how": "GNU tar", "archive": "cifake.tar.xz"},
        {"name": "headline", "start": 1000.0, "end": 1081.0, "seconds": 81.0, "timeout": 90.0, "returncode": 0,
         "timed_out": False, "log": "logs/headline.log"},
        {"name": "reference", "start": 2990.0, "end": 3060.0, "seconds": 70.0, "timeout": 70.0, "returncode": -2,
         "timed_out": True, "log": "logs/reference.log"},
        {"name": "syncs", "start": 3100.0, "end": 3130.0, "seconds": 30.0, "timeout": 40.0, "returncode": 1,
         "timed_out": False, "log": "logs/syncs.log"},
        {"name": "profile", "start": 3130.0, "end": 3170.0, "seconds": 40.0, "timeout": 50.0, "returncode": 0,
         "timed_out": False, "log": "logs/profile.log"},
        {"name": "best", "start": 2000.0, "end": 2100.0, "seconds": 100.0, "timeout": 110.0, "returncode": 0,
         "timed_out": False, "log": "logs/best.log", "epochs": 5},
        {"name": "bench", "start": 4000.0, "end": 4050.0, "seconds": 50.0, "timeout": 60.0, "returncode": 1,
         "timed_out": False, "log": "logs/bench.log"},
    ]
    (out / "environment.json").write_text(json.dumps(env))
    (out / "steps.json").write_text(json.dumps(steps))
    _events(out / "runs" / "headline", [1030.0, 1052.5], [0.91, 0.93], skip=("val/gradcam/wrong",))
    _events(out / "runs" / "reference", [3000.0, 3012.5], [0.88, 0.90])  # cut short after 2 epochs
    _events(out / "runs" / "best", [2030.0, 2040.0, 2050.0, 2060.0], [0.90, 0.94, 0.951, 0.96])
    (out / "logs").mkdir()
    (out / "logs" / "syncs.log").write_text(
        "E   RuntimeError: called a synchronizing CUDA operation\n1 failed, 4 deselected in 21.3s\n")
    (out / "runs" / "profile").mkdir(parents=True)
    columns = ["Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg", "Self CUDA",
               "Self CUDA %", "CUDA total", "CUDA time avg", "# of Calls"]
    profile = [["ProfilerStep*", "12.31%", "98.4ms", "51.49%", "393.0ms", "3.100ms", "0.000us", "0.00%", "70.0ms",
                "3.5ms", "20"],
               ["aten::convolution", "3.66%", "2.8ms", "3.66%", "2.8ms", "3.9us", "0.000us", "0.00%", "30.0ms",
                "3.9us", "720"],
               ["void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_...", "0.00%", "0.000us", "0.00%", "0.000us",
                "0.000us", "20.000ms", "28.57%", "20.000ms", "50.000us", "400"]]
    (out / "runs" / "profile" / "fit-profile.txt").write_text("\n".join(
        ["FIT Profiler Report", "  ".join(f"{c:>14}" for c in columns), "-" * 40,
         *("  ".join(f"{c:>14}" for c in row) for row in profile), "-" * 40,
         "Self CPU time total: 76.319ms", "Self CUDA time total: 70.000ms"]) + "\n")
    (out / "runs" / "best" / "metrics.json").write_text(json.dumps(
        {"accuracy": 0.97123, "tta": {"mode": "flip"}, "leak_free": {"accuracy": 0.97051}}))
    # busy 80% through the reference's second epoch, idle around it; 50% through best's epochs 2-4
    _write_samples(out / "gpu_samples.csv", [(2995.0, 2999.9, 0), (3000.0, 3012.5, 80), (3012.6, 3020.0, 0),
                                             (2030.0, 2060.0, 50)])
    (out / "bench" / "bench.md").write_text(
        "Throughput on NVIDIA H200 (torch 2.11.0+cu130): 20 timed batches\n\n"
        "| measurement | path | median images/s | ratio | GFLOP/s |\n|---|---|---:|---:|---:|\n"
        "| (b) training, batch 32 | bare PyTorch loop (bf16-mixed, NHWC) | 21,000.5 | 1.00 | 37,689.1 |\n"
        "| (b) training, batch 32 | Lightning (train.py's module; bf16-mixed, NHWC) | 18,900.0 | 0.90 | 33,920.2 |\n")

    rows = gpu_check.summarize(out)
    table = dict(rows)
    assert table["GPU (nvidia-smi: name, driver, memory)"] == "NVIDIA H200, 580.159.03, 143771 MiB"
    assert table["torch / CUDA / cuDNN"] == "2.11.0+cu130 / 13.0 / 91002"
    assert table["bundle installed offline (pip --no-index --no-deps)"] == "hydra-core 1.3.8, omegaconf 2.3.1"
    assert table["CIFAKE archive"] == "120,000 files extracted from cifake.tar.xz in 27.5 s with GNU tar"
    head = "`train.py model=vgg trainer.max_epochs=2` (the mission's command)"
    assert table[head] == "exit 0 in 81 s of the 90 s it was given"
    assert table["headline: dashboards in TensorBoard"] == "missing: val/gradcam/wrong"
    assert table["headline: second epoch, validation included"] == "22.5 s"
    assert table["headline: GPU busy during the second epoch"].startswith("not measured")  # no samples then
    assert table["headline: val/acc (held-out 10% of train) after each epoch"] == "0.9100, 0.9300"
    assert table["`experiment=reference`, 2 epochs at batch 32 (validating on test)"].startswith("timed out after 70 s")
    assert table["reference: second epoch, validation included"] == "12.5 s"
    busy = table["reference: GPU busy during the second epoch"]
    assert busy.startswith("80% (NVML utilization.gpu sampled at 10 Hz, 126 in 12.5 s)"), busy
    syncs = ("host syncs in 20 training steps (`torch.cuda.set_sync_debug_mode('error')`, "
             "tests/test_device_transfers.py)")
    assert table[syncs].startswith("failed (exit 1)")
    assert table["syncs: pytest says"] == ("1 failed, 4 deselected in 21.3s; "
                                           "E   RuntimeError: called a synchronizing CUDA operation")
    assert table["profile: wall time of one step (ProfilerStep avg)"] == "3.100ms"
    assert table["profile: self cuda time total (20 steps)"] == "70.000ms"
    assert table["profile: top 1 kernels by CUDA time (self)"] == ("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm"
                                                                  "_... 20.000ms")
    assert table["best: epochs trained"].startswith("4 of 5 (trainer.max_time stopped it")
    assert table["best: epoch time, median of epochs 2 on (validation on test included)"] == "10.0 s"
    assert table["best: GPU busy from the end of epoch 1 to the last"].startswith("50% ")
    assert table["best: test accuracy (final weights, TTA flip)"] == "0.9712"
    assert table["best: leak-free test accuracy"] == "0.9705"
    key = "best: time to 0.95 test accuracy (per-epoch test curve, no TTA; from the launch of train.py)"
    assert table[key] == "50 s (epoch 3)"
    assert table["best: test accuracy after each epoch"] == "0.9000, 0.9400, 0.9510, 0.9600"
    bench = "`python -m cifake.tools.bench --sections train,eval,precision`"
    assert table[bench].startswith("failed (exit 1) after 50 s")
    assert table["bench (b) training, batch 32: bare PyTorch loop (bf16-mixed, NHWC)"] == "21,000.5 images/s (x1.00 " \
                                                                                          "the first path)"
    assert table["the whole check"] == "351 s"
    md = gpu_check.markdown(rows).splitlines()
    assert md[:2] == ["| measurement | value |", "|---|---|"] and len(md) == len(rows) + 2
    assert all(line.count(" | ") == 1 for line in md[2:])  # a '|' inside a value is escaped

    (out / "runs" / "headline").rename(out / "runs" / "old")  # complete this time
    _events(out / "runs" / "headline", [1030.0, 1052.5], [0.91, 0.93])
    assert dict(gpu_check.summarize(out))["headline: dashboards in TensorBoard"].startswith("all 13 written")


# -- the rehearsal: the whole check on the CPU ------------------------------------------------------------
def _table(md: str) -> dict[str, str]:
    """gpu_check.md's rows, ``measurement -> value``."""
    rows = [line.split(" | ", 1) for line in md.splitlines()[2:]]
    return {m.removeprefix("| "): v.removesuffix(" |") for m, v in rows}


def _check_lines(output: str) -> list[str]:
    """The check's own console lines (the table aside)."""
    return [line for line in output.splitlines() if line.startswith("[gpu_check ")]


def test_the_rehearsal_runs_every_step_on_the_cpu_and_fills_every_row(tmp_path: Path) -> None:
    """As docs/gpu-check.md says to run it: every step of the GPU plan, on the demo generator's images, each
    row a figure or the reason there is none (only what needs CUDA says so)."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--rehearse", "--out-dir", str(out), "--report-to",
                           str(tmp_path / "report")], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)})
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-5000:]
    assert "Traceback" not in console
    table = _table((out / "gpu_check.md").read_text())
    assert all(value.strip() and value != "?" for value in table.values()), table
    steps = {s["name"]: s for s in json.loads((out / "steps.json").read_text())}
    assert [s for s in steps if s != "extract"] == list(gpu_check.STEP_NAMES)
    for name in gpu_check.STEP_NAMES:  # each ran to its end, inside what the budget gave it
        log = (out / steps[name]["log"]).read_text()
        assert steps[name]["returncode"] == 0 and not steps[name]["timed_out"], log[-3000:]
    assert re.fullmatch(r"192 files extracted from rehearsal-demo.tar.xz in [\d.]+ s with GNU tar",
                        table["CIFAKE archive"])
    assert table["headline: dashboards in TensorBoard"].startswith("all 13 written")
    for epoch_row in ("headline: second epoch, validation included", "reference: second epoch, validation included"):
        assert re.fullmatch(r"[\d.]+ s", table[epoch_row]), table[epoch_row]
    assert table["reference: GPU busy during the second epoch"].startswith("not measured: NVML")  # its reason
    syncs = ("host syncs in 20 training steps (`torch.cuda.set_sync_debug_mode('error')`, "
             "tests/test_device_transfers.py)")
    assert table[syncs].startswith("needs CUDA: on a GPU, `python -m pytest")
    assert "1 skipped" in table["syncs: pytest says"]
    assert re.fullmatch(r"[\d.]+(ms|us|s)", table["profile: self cpu time total (2 steps)"])
    assert table["profile: self cuda time total (2 steps)"].startswith("needs CUDA")
    assert re.fullmatch(r"[\d.]+ s", table["best: epoch time, median of epochs 2 on (validation on test included)"])
    assert re.fullmatch(r"0\.\d{4}", table["best: test accuracy (final weights, TTA flip)"])
    assert re.fullmatch(r"0\.\d{4}", table["best: leak-free test accuracy"])
    bench = [m for m in table if m.startswith("bench (")]
    assert {m.split(":")[0] for m in bench} >= {"bench (b) training, batch 32", "bench (c) evaluation, batch 32",
                                                "bench (d) report VGG, batch 32, training"}
    assert all(re.match(r"[\d,.]+ images/s", table[m]) for m in bench)
    assert re.fullmatch(r"\d+ s of the 720 s budget", table["the whole check"])
    report = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert len(report) <= 8 and {"gpu_check.md", "gpu_check.log", "headline.log", gpu_check.RECORD} <= set(report)
    assert (tmp_path / "report" / "gpu_check.md").read_text() == (out / "gpu_check.md").read_text()
    assert not list(tmp.glob("cifake-rehearsal-*"))  # its own scratch folder, gone with it
    with tarfile.open(tmp_path / "report" / gpu_check.RECORD) as tar:
        members = tar.getnames()
    assert not [m for m in members if m.endswith(".ckpt")]  # checkpoints stay behind
    assert "out/runs/headline/.hydra/config.yaml" in members and "out/steps.json" in members


def test_the_rehearsal_runs_the_gpu_commands_with_small_settings_added(tmp_path: Path) -> None:
    gpu = gpu_check.plan(tmp_path, Path("/data"), 12, 20)
    cpu = gpu_check.plan(tmp_path, Path("/data"), 2, 2, rehearse=True)
    assert [s.name for s in gpu] == [s.name for s in cpu] == list(gpu_check.STEP_NAMES)
    for big, small in zip(gpu, cpu, strict=True):
        changed = {"trainer.max_epochs=12": "trainer.max_epochs=2", "20": "2", "5": "1"}  # best's epochs, bench's
        expected = [changed.get(a, a) if small.name in ("best", "bench") else a for a in big.args]
        it = iter(small.args)
        assert all(arg in it for arg in expected), (big.args, small.args)  # the same command, in order, with more
        assert [a for a in small.args if a not in expected] == gpu_check.REHEARSAL_OVERRIDES.get(small.name, [])


# -- the budget ----------------------------------------------------------------------------------------
def _step(name: str, minimum: float, want: float) -> object:
    return gpu_check.Step(name, [], minimum, want)


def test_the_budget_gives_each_step_what_it_wants_keeping_the_later_steps_minimums() -> None:
    first, second, third = _step("a", 60, 110), _step("b", 45, 80), _step("c", 30, 50)
    assert gpu_check.allocate(1000, first, [second, third]) == 110  # room for all
    assert gpu_check.allocate(160, first, [second, third]) == 85  # 160 - 45 - 30
    assert gpu_check.allocate(100, first, [second, third]) == 60  # the earlier step keeps its minimum
    reason = gpu_check.allocate(50, first, [])
    assert isinstance(reason, str) and "needs 60 s" in reason and "50 s" in reason


def test_the_gpu_plan_fits_its_budget_and_puts_the_rows_that_matter_first(tmp_path: Path) -> None:
    steps = gpu_check.plan(tmp_path, Path("/data"), 12, 20)
    assert [s.name for s in steps[:2]] == ["headline", "reference"] and steps[-1].name == "bench"
    before = 15 + 10 + 15  # CUDA's start, the install, unpacking CIFAKE (11 s on a 2-core EPYC)
    assert before + sum(s.minimum for s in steps) <= gpu_check.GPU_BUDGET <= 8 * 60 - 30  # the report: under 30 s
    best = steps[gpu_check.STEP_NAMES.index("best")]
    assert best.minimum >= best.extra["reserve"] + 2 * gpu_check.GPU_BEST["epoch"]  # never cut in its evaluation


def test_max_time_is_what_lightnings_timer_reads() -> None:
    from lightning.pytorch.callbacks import Timer

    assert gpu_check.max_time(130.7) == "00:00:02:10" and gpu_check.max_time(90061) == "01:01:01:01"
    assert gpu_check.max_time(-5) == "00:00:00:01"
    assert Timer(duration=gpu_check.max_time(130)).time_remaining() == 130


# -- planted faults: each one row and one console line, no traceback ------------------------------------
def _folder_data(root: Path) -> Path:
    for split in ("train", "test"):
        for label in ("FAKE", "REAL"):
            (root / split / label).mkdir(parents=True)
    return root


def _run_planted(tmp_path: Path, capsys, steps: list, *extra: str) -> tuple[int, dict[str, str], str]:
    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_check, "plan", lambda *_a, **_k: steps)
        mp.setattr(gpu_check, "STEP_NAMES", tuple(s.name for s in steps))
        code = gpu_check.main(["run", "--rehearse", "--out-dir", str(tmp_path / "out"), "--scratch",
                               str(tmp_path / "scratch"), *extra])
    captured = capsys.readouterr()
    return code, _table((tmp_path / "out" / "gpu_check.md").read_text()), captured.out + captured.err


def test_a_step_that_crashes_and_one_that_hangs_are_one_row_and_one_line_each(tmp_path: Path, capsys) -> None:
    steps = [gpu_check.Step("headline", ["-c", "raise RuntimeError('planted ' + 'crash')"], 1, 60),
             gpu_check.Step("reference", ["-c", "import time; time.sleep(300)"], 1, 3),
             gpu_check.Step("bench", ["-c", "print('fine')"], 1, 60)]
    code, table, console = _run_planted(tmp_path, capsys, steps, "--no-install", "--data",
                                        str(_folder_data(tmp_path / "data")))
    assert code == 0 and "Traceback" not in console
    head = table["`train.py model=vgg trainer.max_epochs=2` (the mission's command)"]
    assert head.startswith("failed (exit 1)") and head.endswith("RuntimeError: planted crash")
    assert len([line for line in _check_lines(console) if "planted crash" in line]) == 1
    assert table["`experiment=reference`, 2 epochs at batch 32 (validating on test)"].startswith("timed out after 3 s")
    assert len([line for line in _check_lines(console) if "reference: timed out" in line]) == 1
    assert table["`python -m cifake.tools.bench --sections train,eval,precision`"].startswith("exit 0")  # went on


def test_a_gpu_that_goes_away_stops_the_check_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    lost = "CUDA error: unspecified launch failure (stand-in)"
    monkeypatch.setattr(gpu_check, "device_problem", lambda rehearse: lost)
    steps = [gpu_check.Step("headline", ["-c", "raise SystemExit('CUDA error: unspecified launch failure')"], 1, 60),
             gpu_check.Step("reference", ["-c", "print('never')"], 1, 60)]
    code, table, console = _run_planted(tmp_path, capsys, steps, "--no-install", "--data",
                                        str(_folder_data(tmp_path / "data")))
    assert code == 1 and "Traceback" not in console
    assert table["`experiment=reference`, 2 epochs at batch 32 (validating on test)"] == (
        "not run: CUDA stopped working during headline")
    assert table["the check stopped early"] == f"CUDA stopped working during headline: {lost}"
    assert len([line for line in _check_lines(console) if lost in line]) == 1
    assert not (tmp_path / "out" / "logs" / "reference.log").exists()


def test_without_xz_the_archive_is_unpacked_by_python_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import shutil

    source = _folder_data(tmp_path / "src")
    (source / "train" / "REAL" / "0.jpg").write_bytes(b"not really a jpeg")
    archive = tmp_path / "cifake.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(source / "train", arcname="train")
        tar.add(source / "test", arcname="test")
    bin_dir = tmp_path / "bin"  # a machine with GNU tar and without xz
    bin_dir.mkdir()
    (bin_dir / "tar").symlink_to(shutil.which("tar"))
    monkeypatch.setenv("PATH", str(bin_dir))
    steps = [gpu_check.Step("headline", ["-c", "print('ran')"], 1, 60)]
    code, table, console = _run_planted(tmp_path, capsys, steps, "--no-install", "--data", str(archive))
    assert code == 0 and "Traceback" not in console
    assert table["CIFAKE archive"].startswith("1 files extracted from cifake.tar.xz in ")
    assert table["CIFAKE archive"].endswith(" s with Python's tarfile: xz not installed")
    assert len([line for line in _check_lines(console) if "xz not installed" in line]) == 1
    assert (tmp_path / "scratch" / "cifake" / "train" / "REAL" / "0.jpg").read_bytes() == b"not really a jpeg"


def test_an_archive_tar_cannot_read_is_one_row_and_the_data_steps_do_not_run(tmp_path: Path, capsys) -> None:
    archive = tmp_path / "cifake.tar.xz"
    archive.write_bytes(b"\xfd7zXZ\x00 truncated")
    steps = [gpu_check.Step("headline", ["-c", "print('never')"], 1, 60),
             gpu_check.Step("syncs", ["-c", "print('ran without data')"], 1, 60, needs_data=False)]
    code, table, console = _run_planted(tmp_path, capsys, steps, "--no-install", "--data", str(archive))
    assert "Traceback" not in console
    row = table["CIFAKE archive"]
    assert row.startswith(("tar could not unpack", "Python's tarfile could not unpack")) and str(archive) in row
    assert table["`train.py model=vgg trainer.max_epochs=2` (the mission's command)"] == (
        "not run: no CIFAKE data (see the archive's row)")
    assert len([line for line in _check_lines(console) if "could not unpack" in line]) == 1
    assert (tmp_path / "out" / "logs" / "syncs.log").read_text().endswith("ran without data\n")


def test_a_bundle_pip_refuses_stops_the_check_before_any_step(tmp_path: Path, capsys, monkeypatch) -> None:
    wheels = tmp_path / "bundle" / "wheels"
    wheels.mkdir(parents=True)
    version = gpu_check.BUNDLE["hydra-core"][0]
    (wheels / f"hydra_core-{version}-py3-none-any.whl").write_bytes(b"not a zip file")  # what pip refuses
    monkeypatch.setattr(gpu_check, "missing_modules", lambda modules: ["hydra"])  # as on the device's image
    steps = [gpu_check.Step("headline", ["-c", "print('never')"], 1, 60)]
    code, table, console = _run_planted(tmp_path, capsys, steps, "--bundle", str(tmp_path / "bundle"))
    assert code == 1 and "Traceback" not in console
    assert table["bundle installed offline (pip --no-index --no-deps)"].startswith("pip install failed")
    assert table["`train.py model=vgg trainer.max_epochs=2` (the mission's command)"] == (
        "not run: the bundle did not install (see its row)")
    assert table["the check stopped early"].startswith("the bundle did not install, so no step can run: pip install")
    stops = [line for line in _check_lines(console) if "pip install failed" in line]
    assert len(stops) == 1 and "stopped:" in stops[0]
    assert not (tmp_path / "out" / "logs").exists()  # nothing ran
