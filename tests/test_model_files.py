"""Model files that are empty, truncated, not a model, of the wrong kind, or a pickle that would run
code: every job says so in one ``error:`` line naming the file, exits with status 2, runs nothing. predict.py
runs as a process (it imports no Lightning: a second or two); evaluate.py and export.py through their apps in
this process (tests/helpers/runner.py: run_in_process)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.images import write_image
from tests.helpers.models import tiny_onnx


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run_job(script: str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)


def assert_one_plain_error(proc: subprocess.CompletedProcess, path: Path, *fragments: str) -> str:
    """Exit 2, one ``error:`` line that names ``path`` (and each fragment), no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert str(path) in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(folder / f"{i}.png", rng, fmt="PNG")
    return folder


def _checkpoint_bytes(tmp_path: Path) -> bytes:
    """A complete zip-format PyTorch file shaped like a checkpoint (its contents do not matter here)."""
    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "hyper_parameters": {}}, path)
    return path.read_bytes()


def bad_file(kind: str, tmp_path: Path, marker: Path) -> tuple[Path, tuple[str, ...]]:
    """A damaged or hostile model file of ``kind`` and what its error line must say."""
    if kind == "empty":
        path = tmp_path / "empty.ckpt"
        path.write_bytes(b"")
        return path, ("empty",)
    if kind == "truncated":
        path = tmp_path / "truncated.ckpt"
        data = _checkpoint_bytes(tmp_path)
        path.write_bytes(data[: len(data) // 2])
        return path, ("truncated",)
    if kind == "random":
        path = tmp_path / "random.onnx"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        tiny_onnx(tmp_path / "contract")  # a valid model.json beside it, so the model itself is judged
        (tmp_path / "random.json").write_bytes((tmp_path / "contract" / "model.json").read_bytes())
        return path, ("not a readable ONNX model",)
    if kind == "not_a_model":
        path = tmp_path / "notes.ckpt"
        torch.save({"weights": torch.ones(3)}, path)
        return path, ("not a train.py checkpoint",)
    if kind == "wrong_suffix":
        path = tmp_path / "model.json"
        path.write_text("{}")
        return path, ("not a model file",)
    if kind == "pickle":
        path = tmp_path / "evil.ckpt"
        path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
        return path, ("not a readable checkpoint",)
    if kind == "pickle_in_zip":
        path = tmp_path / "evil_zip.ckpt"
        torch.save({"state_dict": Payload(marker), "hyper_parameters": {}}, path)
        return path, ("refused unread",)
    raise AssertionError(kind)


KINDS = ["empty", "truncated", "random", "not_a_model", "wrong_suffix", "pickle", "pickle_in_zip"]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_refuses_a_bad_model_file_plainly(kind: str, tmp_path: Path, images: Path) -> None:
    marker = tmp_path / "payload-ran"
    path, fragments = bad_file(kind, tmp_path, marker)
    proc = run_job("predict.py", tmp_path, f"ckpt_path={path}", f"inputs={images}", "progress_bar=false")
    assert_one_plain_error(proc, path, *fragments)
    assert not marker.exists(), "the pickle's payload ran"


@pytest.mark.parametrize("kind", ["pickle_in_zip", "truncated"])
def test_evaluate_refuses_a_bad_model_file_before_reading_data(kind: str, tmp_path: Path, cli) -> None:
    marker = tmp_path / "payload-ran"
    path, fragments = bad_file(kind, tmp_path, marker)
    # data.root points nowhere: the model file is judged first, so that is the error reported.
    proc = cli("evaluate.py", tmp_path, f"ckpt_path={path}", f"data.root={tmp_path / 'no-data'}")
    assert_one_plain_error(proc, path, *fragments)
    assert not marker.exists(), "the pickle's payload ran"


def test_export_refuses_a_model_of_the_wrong_kind(tmp_path: Path, cli) -> None:
    forest = tmp_path / "forest.skops"
    forest.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: export must refuse by kind, unread
    proc = cli("export.py", tmp_path, f"ckpt_path={forest}")
    assert_one_plain_error(proc, forest, "this job needs a .ckpt checkpoint")
    onnx_path = tiny_onnx(tmp_path / "exported")
    proc = cli("export.py", tmp_path, f"ckpt_path={onnx_path}")
    assert_one_plain_error(proc, onnx_path, "this job needs a .ckpt checkpoint")
