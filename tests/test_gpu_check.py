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
from tests.helpers.config import tiny_demo_overrides

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
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
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

    modules = [module for _version, module in gpu_check.BUNDLE.values()]
    where = run("-c", f"import json, {', '.join(modules)}, torch, cifake; "
                      f"print(json.dumps([m.__file__ for m in ({', '.join(modules)}, torch, cifake)]))")
    assert where.returncode == 0, where.stderr
    *bundled, torch_file, cifake_file = json.loads(where.stdout)
    assert all(Path(f).is_relative_to(site) for f in bundled), bundled  # from the fresh venv, not from .venv
    assert Path(torch_file).parent.parent == image  # the image's torch, untouched
    assert Path(cifake_file).is_relative_to(ROOT / "cifake")  # the checkout itself
    imports = run("-c", "import cifake.jobs.train, cifake.tools.bench, cifake.analysis.explain, "
                        "cifake.evaluation.workflow, cifake.models.forest")
    assert imports.returncode == 0, imports.stderr
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
        {"name": "extract", "files": 120000, "seconds": 27.46},
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
        "| measurement | path | median images/s | ratio |\n|---|---|---:|---:|\n"
        "| (b) training, batch 32 | bare PyTorch loop (bf16-mixed, NHWC) | 21,000.5 | 1.00 |\n"
        "| (b) training, batch 32 | Lightning (train.py's module; bf16-mixed, NHWC) | 18,900.0 | 0.90 |\n")

    rows = gpu_check.summarize(out)
    table = dict(rows)
    assert table["GPU (nvidia-smi: name, driver, memory)"] == "NVIDIA H200, 580.159.03, 143771 MiB"
    assert table["torch / CUDA / cuDNN"] == "2.11.0+cu130 / 13.0 / 91002"
    assert table["bundle installed offline (pip --no-index --no-deps)"] == "hydra-core 1.3.8, omegaconf 2.3.1"
    assert table["CIFAKE archive"] == "120,000 files extracted in 27.5 s"
    head = "`train.py model=vgg trainer.max_epochs=2` (the mission's command)"
    assert table[head] == "exit 0 in 81 s"
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


def test_a_cpu_run_records_every_dashboard_and_a_timeout_is_reported(tmp_path: Path) -> None:
    """The step runner and the parser on real train.py runs (tiny, on the CPU): the dashboards the check
    looks for are the ones the callbacks write; a step past its timeout is stopped and reported."""
    out = tmp_path / "rec"
    tiny = [*tiny_demo_overrides(), f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=2"]
    head = gpu_check.run_step("headline", ["train.py", *tiny, f"hydra.run.dir={out / 'runs' / 'headline'}"], out,
                              timeout=300)
    cut = gpu_check.run_step("reference", ["train.py", *tiny, f"hydra.run.dir={out / 'runs' / 'reference'}"], out,
                             timeout=1)
    (out / "steps.json").write_text(json.dumps([head, cut]))
    (out / "environment.json").write_text(json.dumps({"sample_hz": 10}))
    _write_samples(out / "gpu_samples.csv", [(head["start"], head["end"], 40)])
    assert head["returncode"] == 0, (out / head["log"]).read_text()[-3000:]
    assert cut["timed_out"] and cut["returncode"] != 0

    table = dict(gpu_check.summarize(out))
    assert table["`train.py model=vgg trainer.max_epochs=2` (the mission's command)"].startswith("exit 0 in ")
    assert table["headline: dashboards in TensorBoard"].startswith("all 13 written"), table
    ends = [wall for wall, *_ in gpu_check.scalars(gpu_check.tensorboard(out / "runs" / "headline"), "train/loss")]
    assert table["headline: second epoch, validation included"] == f"{ends[1] - ends[0]:.1f} s"
    assert table["headline: GPU busy during the second epoch"].startswith("40% ")
    assert table["`experiment=reference`, 2 epochs at batch 32 (validating on test)"].startswith("timed out after 1 s")
    assert table["reference: second epoch, validation included"] == "not reached"

    (out / "check.log").write_text("log\n")
    (out / "gpu_check.md").write_text(gpu_check.markdown(list(table.items())))
    copied = gpu_check.report(out, tmp_path / "report")
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert sorted(p.name for p in copied) == names and len(names) <= 8  # the device tool brings back 8 files
    assert {"gpu_check.md", "gpu_check.log", "headline.log", "reference.log", gpu_check.RECORD} <= set(names)
    with tarfile.open(tmp_path / "report" / gpu_check.RECORD) as tar:
        members = tar.getnames()
    assert not [m for m in members if m.endswith(".ckpt")]  # checkpoints stay behind
    assert "rec/runs/headline/.hydra/config.yaml" in members and "rec/steps.json" in members
