"""predict.py on folders of mixed, odd and broken files, from a checkpoint and from its ONNX export."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.core.errors import ConfigError, DataError
from cifake.data.inputs import find_files
from cifake.jobs import predict as predict_job
from tests.helpers import ROOT
from tests.helpers.config import compose_job
from tests.helpers.images import write_image
from tests.helpers.models import export_tiny

QUIET = ["progress_bar=false"]


def make_mixed_folder(root: Path) -> dict[str, str | None]:
    """Images of every kind predict.py should read, and files it cannot; returns
    ``{relative path: None (readable) or a fragment of the reason it is not}``."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(root / "good" / f"{i}.jpg", rng)
    # A photo-sized image: smooth gradients with noise, in a nested folder.
    yy, xx = np.mgrid[0:1080, 0:1920]
    photo = np.stack([xx * 255 // 1919, yy * 255 // 1079, (xx + yy) % 256], axis=-1)
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(photo).save(root / "nested" / "deeper" / "photo.jpg", quality=90)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(root / "rgba.png")
    write_image(root / "tiny.webp", rng, size=8, fmt="WEBP")
    write_image(root / "grey.png", rng, size=48, mode="L", fmt="PNG")
    frames = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("P") for _ in range(2)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    write_image(root / "whole.jpg", rng, size=256)
    data = (root / "whole.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 2])
    (root / "whole.jpg").unlink()
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0\1")  # hidden: not listed at all
    return {"good/0.jpg": None, "good/1.jpg": None, "good/2.jpg": None, "nested/deeper/photo.jpg": None,
            "rgba.png": None, "tiny.webp": None, "grey.png": None, "anim.gif": None,
            "broken.jpg": "truncated", "notes.txt": "not an image", "empty.png": "empty file"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path | dict]:
    tmp = tmp_path_factory.mktemp("predict")
    ckpt, onnx_path, _ = export_tiny(tmp)
    expected = make_mixed_folder(tmp / "mixed")
    return {"ckpt": ckpt, "onnx": onnx_path, "folder": tmp / "mixed", "expected": expected}


def read_outputs(out: Path) -> tuple[list[dict], list[dict]]:
    with (out / "predictions.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return table, lines


def predict(tmp_path: Path, name: str, model: Path, inputs: str, *overrides: str) -> tuple[dict, list[dict]]:
    cfg = compose_job("predict", tmp_path / name, [f"ckpt_path={model}", f"inputs={inputs}", *QUIET, *overrides])
    summary = predict_job.run(cfg)
    return summary, read_outputs(tmp_path / name)[1]


def test_every_file_gets_a_prediction_or_a_reason(setup, tmp_path) -> None:
    summary, _ = predict(tmp_path, "ckpt", setup["ckpt"], str(setup["folder"]))
    table, lines = read_outputs(tmp_path / "ckpt")
    folder, expected = setup["folder"], setup["expected"]
    assert sorted(Path(r["path"]).relative_to(folder).as_posix() for r in table) == sorted(expected)
    assert [r["path"] for r in table] == [r["path"] for r in lines]
    assert list(table[0]) == ["path", "predicted", "p_fake", "p_real", "threshold", "error", "gradcam", "precision",
                              "device", "out_of_scope"]
    for row, line in zip(table, lines, strict=True):
        reason = expected[Path(row["path"]).relative_to(folder).as_posix()]
        if reason is None:
            assert row["error"] == "" and line["error"] == ""
            assert 0.0 <= line["p_real"] <= 1.0 and line["p_fake"] == pytest.approx(1.0 - line["p_real"], abs=1e-12)
            assert float(row["p_real"]) == pytest.approx(line["p_real"], abs=1e-6)
            assert float(row["p_fake"]) + float(row["p_real"]) == pytest.approx(1.0, abs=2e-6)
            assert line["predicted"] == row["predicted"] == ("REAL" if line["p_real"] > 0.5 else "FAKE")
            assert line["threshold"] == 0.5 and row["threshold"] == "0.5"
            # What computed it: float32 by default, whatever this CPU's bf16.
            assert (line["precision"], line["device"]) == (row["precision"], row["device"]) == ("32-true", "cpu")
        else:
            assert reason in row["error"] and row["error"] == line["error"]
            assert row["predicted"] == row["p_fake"] == row["p_real"] == row["precision"] == row["device"] == ""
            assert line["p_real"] is None and line["precision"] is None
    readable = sum(v is None for v in expected.values())
    assert summary["files"] == len(expected) and summary["unreadable"] == len(expected) - readable
    assert sum(summary["predicted"].values()) == readable
    assert 0 < summary["predicted"]["REAL"] < readable  # the tiny net's outputs are spread out


def test_onnx_model_gives_the_checkpoints_predictions(setup, tmp_path, caplog) -> None:
    # The export computes in float32, and so does the checkpoint by default, on any CPU.
    _, by_ckpt = predict(tmp_path, "ckpt", setup["ckpt"], str(setup["folder"]), "batch_size=3")
    with caplog.at_level(logging.WARNING):
        _, by_onnx = predict(tmp_path, "onnx", setup["onnx"], str(setup["folder"]), "gradcam=true")
    assert "Grad-CAM skipped" in caplog.text and not (tmp_path / "onnx" / "gradcam").exists()
    assert [(r["path"], r["predicted"], r["error"]) for r in by_onnx] == \
           [(r["path"], r["predicted"], r["error"]) for r in by_ckpt]
    ok = [i for i, r in enumerate(by_ckpt) if not r["error"]]
    np.testing.assert_allclose([by_onnx[i]["p_real"] for i in ok], [by_ckpt[i]["p_real"] for i in ok], atol=1e-4)


def test_tta_averages_the_same_views_for_checkpoints_and_onnx(setup, tmp_path) -> None:
    folder = str(setup["folder"])
    _, plain = predict(tmp_path, "plain", setup["ckpt"], folder)
    _, ckpt = predict(tmp_path, "ckpt_tta", setup["ckpt"], folder, "tta.mode=flip")
    _, onnx = predict(tmp_path, "onnx_tta", setup["onnx"], folder, "tta.mode=flip")
    ok = [i for i, r in enumerate(plain) if not r["error"]]
    np.testing.assert_allclose([onnx[i]["p_real"] for i in ok], [ckpt[i]["p_real"] for i in ok], atol=1e-4)
    assert max(abs(ckpt[i]["p_real"] - plain[i]["p_real"]) for i in ok) > 1e-4  # the mirror was scored too


def test_bf16_prediction_when_asked_stays_close_to_float32_and_says_so(setup, tmp_path) -> None:
    folder = str(setup["folder"])
    _, full = predict(tmp_path, "fp32", setup["ckpt"], folder)
    _, half = predict(tmp_path, "bf16", setup["ckpt"], folder, "scoring.precision=bf16-mixed")
    ok = [i for i, r in enumerate(full) if not r["error"]]
    np.testing.assert_allclose([half[i]["p_real"] for i in ok], [full[i]["p_real"] for i in ok], atol=0.05)
    assert {half[i]["precision"] for i in ok} == {"bf16-mixed"} and {full[i]["precision"] for i in ok} == {"32-true"}
    _, by_onnx = predict(tmp_path, "onnx", setup["onnx"], folder, "scoring.precision=bf16-mixed")
    assert {by_onnx[i]["precision"] for i in ok} == {"32-true"}  # onnxruntime computes in float32 regardless


def test_threshold_and_resample_settings_apply(setup, tmp_path) -> None:
    photo = setup["folder"] / "nested" / "deeper" / "photo.jpg"
    _, (default,) = predict(tmp_path, "a", setup["ckpt"], str(photo))  # one path, not a list
    _, (same,) = predict(tmp_path, "b", setup["ckpt"], f"[{photo}]", "resample=bicubic", "threshold=0.0")
    _, (nearest,) = predict(tmp_path, "c", setup["ckpt"], str(photo), "resample=nearest")
    assert same["p_real"] == default["p_real"] and same["predicted"] == "REAL" and same["threshold"] == 0.0
    assert nearest["p_real"] != default["p_real"]  # the checkpoint's bicubic was the default


def test_gradcam_overlays_for_the_first_images(setup, tmp_path) -> None:
    predict(tmp_path, "cam", setup["ckpt"], str(setup["folder"]), "gradcam=true", "gradcam_limit=3", "batch_size=2")
    table, _ = read_outputs(tmp_path / "cam")
    written = [r["gradcam"] for r in table if r["gradcam"]]
    assert len(written) == 3 and sorted(map(Path, written)) == sorted((tmp_path / "cam" / "gradcam").iterdir())
    for row in table:
        if row["gradcam"]:
            assert f"_{row['predicted']}_{Path(row['path']).stem}.png" in row["gradcam"]
            with Image.open(row["gradcam"]) as im:
                assert im.size == (2 * 32 * 8, 32 * 8) and im.mode == "RGB"


def test_bad_inputs_are_clear_errors(setup, tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        predict(tmp_path, "a", setup["ckpt"], str(tmp_path / "nowhere"))
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(DataError, match="no file found"):
        predict(tmp_path, "b", setup["ckpt"], str(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hello")
    with pytest.raises(DataError, match="none of the 1 files could be read as an image"):
        predict(tmp_path, "c", setup["ckpt"], str(tmp_path / "junk"))
    assert read_outputs(tmp_path / "c")[1][0]["error"].startswith("not an image")  # still listed
    with pytest.raises(ConfigError, match="inputs is empty"):
        predict(tmp_path, "g", setup["ckpt"], "[]")
    with pytest.raises(ConfigError, match="inputs is required"):
        predict_job.run(compose_job("predict", tmp_path / "d", [f"ckpt_path={setup['ckpt']}"]))
    with pytest.raises(ConfigError, match="needs the model.json"):
        predict(tmp_path, "e", setup["onnx"], str(setup["folder"]), f"contract={tmp_path / 'none.json'}")
    with pytest.raises(ConfigError, match="is not a file"):
        predict(tmp_path, "f", tmp_path / "none.ckpt", str(setup["folder"]))


def test_predict_script_end_to_end(setup, tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"ckpt_path={setup['onnx']}",
                           f"inputs=[{setup['folder'] / 'good'},{setup['folder'] / 'notes.txt'}]",
                           f"paths.log_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "predict" / "runs").iterdir()
    table, _ = read_outputs(run)
    assert len(table) == 4 and table[-1]["error"].startswith("not an image")
    assert "4 files: " in proc.stderr + proc.stdout and "1 unreadable" in proc.stderr + proc.stdout


def test_links_loops_sockets_and_fifos_are_rows_with_a_reason_and_the_rest_is_predicted(setup, tmp_path) -> None:
    """As a user's folder can hold them: one bad entry never stops predict.py (exit 0, one row each)."""
    import os
    import socket

    folder = tmp_path / "awkward"
    rng = np.random.default_rng(3)
    write_image(folder / "a.jpg", rng)
    write_image(folder / "b.jpg", rng)
    (folder / "loopdir").mkdir()
    os.symlink("x2", folder / "loopdir" / "x1")  # x1 -> x2 -> x1, as the issue met it
    os.symlink("x1", folder / "loopdir" / "x2")
    os.symlink("self", folder / "self")
    os.symlink("nowhere.jpg", folder / "gone.jpg")
    os.symlink("a.jpg", folder / "same.jpg")  # the same file as a.jpg: listed once
    os.mkfifo(folder / "pipe.jpg")  # opening it would wait for a writer forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock"))
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"ckpt_path={setup['onnx']}",
                               f"inputs={folder}", f"hydra.run.dir={tmp_path / 'run'}", *QUIET],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    table, _ = read_outputs(tmp_path / "run")
    errors = {Path(r["path"]).relative_to(folder).as_posix(): r["error"] for r in table}
    assert sorted(errors) == ["a.jpg", "b.jpg", "gone.jpg", "loopdir/x1", "loopdir/x2", "pipe.jpg", "self", "sock"]
    assert errors["a.jpg"] == errors["b.jpg"] == "" and all(r["p_real"] for r in table if not r["error"])
    for name, reason in [("loopdir/x1", "symbolic link loop"), ("loopdir/x2", "symbolic link loop"),
                         ("self", "symbolic link loop"), ("gone.jpg", "broken symbolic link"),
                         ("pipe.jpg", "FIFO"), ("sock", "socket")]:
        assert reason in errors[name], (name, errors[name])
        assert f"unreadable: {folder / name}: {errors[name]}" in output
    assert "8 files: " in output and "6 unreadable" in output


def test_a_folder_that_cannot_be_listed_is_a_row_with_its_reason(tmp_path, monkeypatch) -> None:
    """(Root lists any folder, so the refusal is made here: os.walk lists through os.scandir.)"""
    import errno
    import os

    rng = np.random.default_rng(4)
    write_image(tmp_path / "photos" / "a.jpg", rng)
    write_image(tmp_path / "photos" / "locked" / "b.jpg", rng)
    scandir = os.scandir

    def refusing(path="."):
        if Path(path) == tmp_path / "photos" / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    files, problems = find_files(str(tmp_path / "photos"))
    assert files == [tmp_path / "photos" / "a.jpg", tmp_path / "photos" / "locked"]
    assert problems == {tmp_path / "photos" / "locked":
                        "folder cannot be listed (PermissionError: Permission denied): nothing under it was read"}
