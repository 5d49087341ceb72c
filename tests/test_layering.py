"""The package's layering, read from the source: each folder of cifake/ imports only the folders its row of
``ALLOWED`` names (the rules in CONTRIBUTING.md, "Where things live"), the folders form no cycle, jobs stand
alone, and predicting from ONNX stays light."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import ROOT
from tests.helpers.images import write_image
from tests.helpers.models import tiny_onnx

PACKAGE = ROOT / "cifake"
JOBS = "cifake.jobs"
HEAVY = ("torch", "lightning", "sklearn", "matplotlib", "pytorch_grad_cam")
ENTRY = "entry"  # cifake/__init__.py and cifake/cli.py, the console scripts' entry layer: the only top-level modules
TOP_LEVEL_MODULES = 6  # at most, beside the folders

# Each folder of cifake/ and the other folders it may import (its own modules it always may). From the bottom:
ALLOWED: dict[str, set[str]] = {
    "core": set(),                                    # errors, whole-file writes, configs, schemas, checkpoints
    "data": {"core"},                                 # files -> checked listing -> decoded cache -> DataModule
    "audit": {"core", "data"},                        # duplicates and leaks between the splits
    "analysis": {"core", "data"},                     # numbers, figures, reports from arrays
    "models": {"core", "data", "analysis"},           # networks, the LightningModule, the forest (all of it)
    "scoring": {"core", "data", "analysis", "models"},  # model file -> Scorer (no Lightning for a safetensors file)
    "callbacks": {"core", "data", "analysis", "models", "scoring"},  # what runs inside fit and test
    "training": {"core", "analysis", "models", "scoring", "callbacks"},  # the Trainer, the fit, provenance, sweeps
    "evaluation": {"core", "data", "audit", "analysis", "models", "scoring"},  # a Scorer over a split or files
    "serving": {"core", "data", "models", "scoring"},  # serve.py's API and server
    "export": {"core", "data", "analysis", "models", "scoring", "evaluation"},  # ONNX and safetensors exports
    "jobs": {"core", "data", "audit", "analysis", "models", "training", "scoring", "evaluation", "serving",
             "export"},                                         # one module per entry script; never one another
    "tools": {"core", "data", "models", "training", "scoring", "export"},  # python -m tools
    ENTRY: {"core", "jobs"},                          # cli.py: the Hydra apps the entry and console scripts run
}


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


def folder_of(module: str) -> str:
    """The folder of cifake/ a module lives in (``cifake.scoring.onnx`` -> ``scoring``), or ``entry`` for
    the package itself and its top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ENTRY


def violations(graph: dict[str, set[str]], allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """Every import of ``graph`` that crosses into a folder its own folder's row does not name."""
    return sorted(f"{module} imports {dep} ({folder_of(module)} -> {folder_of(dep)})"
                  for module, deps in graph.items() for dep in deps
                  if folder_of(dep) != folder_of(module) and folder_of(dep) not in allowed[folder_of(module)])


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """A cycle of a directed graph (its nodes in order, the first repeated at the end), or [] if it has none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:  # path: from the start to node
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = "done"
        return []

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which folders import which others, read from the modules' imports."""
    edges: dict[str, set[str]] = {}
    for module, deps in graph.items():
        here = folder_of(module)
        edges.setdefault(here, set()).update(folder_of(d) for d in deps if folder_of(d) != here)
    return edges


def test_every_folder_has_a_row_and_the_top_level_is_the_entry_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED) - {ENTRY}
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= TOP_LEVEL_MODULES and {"__init__.py", "cli.py"} <= set(modules), modules
    assert all(set(row) <= set(ALLOWED) for row in ALLOWED.values())


def test_every_import_stays_within_its_folders_row() -> None:
    assert violations(import_graph()) == []


def test_a_forbidden_import_would_be_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from cifake.core.errors import ConfigError\n\n\n"
                   "def f():\n    from cifake.scoring import open_scorer\n")
    assert violations({"cifake.core.bad": imports_of(bad)}) == [
        "cifake.core.bad imports cifake.scoring (core -> scoring)",
        "cifake.core.bad imports cifake.scoring.open_scorer (core -> scoring)"]
    assert violations({"cifake.scoring.bad": imports_of(bad)}) == []  # scoring may import core and itself


def test_the_folders_form_no_cycle() -> None:
    assert cycle(ALLOWED) == []  # the rules
    assert cycle(folder_graph(import_graph())) == []  # the source (implied by the two tests above; said outright)
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself finds one


def test_the_package_uses_no_relative_imports() -> None:
    # The walk reads absolute imports only; a relative one would slip past the rules.
    relative = [module_name(p) for p in sorted(PACKAGE.rglob("*.py"))
                for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom) and node.level]
    assert relative == []


def test_no_test_file_imports_another() -> None:
    # What two test files share lives in tests/helpers/ (fixtures in tests/conftest.py).
    offences = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        names = {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ImportFrom) and node.module}
        bad = sorted(n for n in names if n.startswith(("tests.test_", "tests.conftest")))
        if bad:
            offences[str(path.relative_to(ROOT))] = bad
    assert offences == {}


def test_contributing_states_each_folders_rule() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text[text.index("## Where things live"):]
    section = section[:section.index("\n## ", 1)]
    assert [f for f in ALLOWED if f != ENTRY and f"cifake/{f}/" not in section] == []


def test_every_test_file_is_named_after_a_module_a_job_or_a_listed_behaviour() -> None:
    # CONTRIBUTING.md's rule: test_<module>.py (a file or folder of cifake/, or a script; test_<folder>_<module>.py
    # where the name alone is taken), test_<job>.py, or one of the behaviour files it lists.
    text = (ROOT / "CONTRIBUTING.md").read_text()
    rule = text[text.index("Test files are named after what they test"):]
    listed = rule[rule.index("behaviour files:"):rule.index("A new behaviour")]
    behaviours = set(re.findall(r"`(test_\w+)\.py`", listed))
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    modules = {p.stem for p in sources} | {p.name for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    modules |= {f"{p.parent.name}_{p.stem}" for p in PACKAGE.rglob("*.py")}
    files = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    assert sorted(f for f in files if f.removeprefix("test_") not in modules and f not in behaviours) == []
    assert sorted(behaviours - files) == []  # the list names no file that is gone
    assert sorted(b for b in behaviours if b.removeprefix("test_") in modules) == []  # nor one a module names


def is_job(name: str) -> bool:
    return name.startswith(JOBS + ".")


def test_the_walk_sees_the_jobs_and_their_imports() -> None:
    graph = import_graph()
    assert {m for m in graph if is_job(m)} == {f"{JOBS}.{j}" for j in ("train", "evaluate", "predict", "export",
                                                                        "audit", "serve")}
    assert "cifake.scoring" in graph[f"{JOBS}.predict"] and "cifake.evaluation.workflow" in graph[f"{JOBS}.train"]


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
