"""The package's layering, read from the source: jobs stand alone, and predicting from ONNX stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from cifake.scoring.contract import CONTRACT_FORMAT
from tests.conftest import write_image

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifake"
JOBS = "cifake.jobs"
HEAVY = ("torch", "lightning", "sklearn", "matplotlib", "pytorch_grad_cam")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every cifake module ``path`` imports, at its top or inside a function (a lazy import is
    still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from cifake.jobs import train
    return {name for name in found if name == "cifake" or name.startswith("cifake.")}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def is_job(name: str) -> bool:
    return name.startswith(JOBS + ".")


def test_the_walk_sees_the_jobs_and_their_imports() -> None:
    graph = import_graph()
    assert {m for m in graph if is_job(m)} == {f"{JOBS}.{j}" for j in ("train", "evaluate", "predict", "export",
                                                                        "audit", "serve")}
    assert "cifake.scoring" in graph[f"{JOBS}.predict"] and "cifake.evaluation" in graph[f"{JOBS}.train"]


def test_no_job_imports_another_job() -> None:
    graph = import_graph()
    offences = {job: sorted(n for n in deps if is_job(n) and n != job)
                for job, deps in graph.items() if is_job(job)}
    assert {job: deps for job, deps in offences.items() if deps} == {}


def test_only_the_entry_layer_imports_jobs() -> None:
    # cifake.cli is the console scripts' entry layer, above the jobs; everything else is below them.
    graph = import_graph()
    below = {m: sorted(n for n in deps if is_job(n) or n == JOBS)
             for m, deps in graph.items() if not is_job(m) and m not in (JOBS, "cifake.cli")}
    assert {m: deps for m, deps in below.items() if deps} == {}


def test_an_offending_import_would_be_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cifake.jobs.evaluate import run\n    from cifake.jobs import export\n")
    assert {"cifake.jobs.evaluate", "cifake.jobs.export"} <= imports_of(bad)


def tiny_onnx(folder: Path) -> Path:
    """A model.onnx (p_real = sigmoid of the mean pixel, scaled) and the model.json export.py would
    write beside it, built with onnx's helpers so the test needs no training."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])
    p_real = helper.make_tensor_value_info("p_real", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [8.0])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
             helper.make_node("Sub", ["mean", "half"], ["centred"]),
             helper.make_node("Mul", ["centred", "scale"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["p_real"])]
    graph = helper.make_graph(nodes, "brightness", [images], [p_real], initializer=[axes, scale, half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    contract = {"format": CONTRACT_FORMAT, "model_file": "model.onnx", "classes": ["FAKE", "REAL"], "threshold": 0.5,
                "input": {"name": "images", "image_size": 32, "divide_by": 255.0, "resample": "bicubic"},
                "output": {"name": "p_real"}}
    (folder / "model.json").write_text(json.dumps(contract))
    return folder / "model.onnx"


def test_predicting_from_onnx_imports_no_training_stack(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "export")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(tmp_path / "images" / f"{i}.png", rng, fmt="PNG")
    out = tmp_path / "out"
    # predict.py as the README runs it, in a fresh interpreter; at exit, the heavy modules it loaded.
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: print('LOADED=' + json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules])))\n"
        f"sys.argv = ['predict.py', 'ckpt_path={model}', 'inputs={tmp_path / 'images'}', 'hydra.run.dir={out}',"
        " 'progress_bar=false']\n"
        f"runpy.run_path({str(ROOT / 'predict.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 5 and all(r.split(",")[1] in ("FAKE", "REAL") for r in rows[1:])
    loaded = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("LOADED="))[7:])
    assert loaded == []
