"""A model with an out-of-scope score, end to end: train.py fits and stores the score, metrics.json counts the
four answers, predict.py prints them for a folder, evaluate.py folder=... scores a folder of one class
(cifake/evaluation/folder.py), and init_from starts a new fit from the model's weights. The jobs run in process
where the point is what they write or log (a fresh interpreter costs ~10 s of imports); predict.py as the README
runs it (a subprocess), for what the command prints; its errors through the entry scripts' apps, in process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.core.digest import file_sha256
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import export as export_job
from cifake.jobs import predict as predict_job
from cifake.jobs import train as train_job
from cifake.scoring.network import SCOPE_KEY, read_checkpoint
from tests.helpers.config import NO_FIGURES, compose_job, tiny_train_overrides
from tests.helpers.runner import check, one_error_line, run_script


@pytest.fixture(scope="module")
def scoped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo run (train.py's job, in ``run/``) with its out-of-scope score fitted and stored, evaluated on its
    test split (its numbers: no figures, which cost ~8 s here)."""
    tmp = tmp_path_factory.mktemp("scoped")
    train_job.run(compose_job("train", tmp / "run", tiny_train_overrides(
        tmp, "evaluate=true", "out_of_scope_fit.method=mahalanobis", "out_of_scope_fit.flagged=0.1", *NO_FIGURES)))
    return tmp


def outside_images(folder: Path) -> Path:
    """Images of another kind than the demo data's: flat colours, stripes and noise, some of them large."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(12):
        size = 32 if i % 2 else 300
        if i % 3 == 0:
            pixels = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        elif i % 3 == 1:
            pixels = np.zeros((size, size, 3), dtype=np.uint8)
            pixels[:, ::2] = 255
        else:
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"outside_{i}.png")
    (folder / ".DS_Store").write_bytes(b"\0\1junk")  # left out, as everywhere
    return folder


def test_train_stores_the_score_and_metrics_count_the_four_answers(scoped_run: Path) -> None:
    record = read_checkpoint(scoped_run / "run" / "checkpoints" / "best.ckpt")[SCOPE_KEY]
    assert record["method"] == "mahalanobis" and record["validation_flagged"] == 0.1 and record["threshold"] > 0
    answers = json.loads((scoped_run / "run" / "metrics.json").read_text())["answers"]
    assert set(answers["shares"]) == {"FAKE", "REAL", "UNSURE", "OUT_OF_SCOPE"}
    assert sum(answers["shares"].values()) == pytest.approx(1.0)
    assert 0.0 < answers["shares"]["OUT_OF_SCOPE"] < 0.35  # about the share chosen on validation
    assert answers["out_of_scope_threshold"] == pytest.approx(record["threshold"])


def test_predict_prints_the_four_way_counts_and_says_why(scoped_run: Path, tmp_path: Path) -> None:
    folder = outside_images(tmp_path / "outside")
    ckpt = scoped_run / "run" / "checkpoints" / "best.ckpt"
    proc = check(run_script("predict.py", tmp_path, f"ckpt_path={ckpt}", f"inputs={folder}"))
    output = proc.stdout + proc.stderr
    counts = next(line for line in output.splitlines() if "12 files:" in line)
    assert "FAKE" in counts and "REAL" in counts and "OUT_OF_SCOPE" in counts, counts
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    flagged = [r for r in rows if r["predicted"] == "OUT_OF_SCOPE"]
    # Pixel noise at the input size is far from anything the demo data holds (a one-epoch network's features
    # tell little else apart).
    assert len(rows) == 12 and {"outside_5.png", "outside_11.png"} <= {Path(r["path"]).name for r in flagged}
    threshold = read_checkpoint(ckpt)[SCOPE_KEY]["threshold"]
    assert all(r["out_of_scope"] > threshold and "not trained on images like this one" in r["reason"] for r in flagged)
    # out_of_scope=null: the same files, only classes (what the job writes: in process).
    predict_job.run(compose_job("predict", tmp_path / "plain", [f"ckpt_path={ckpt}", f"inputs={folder}",
                                                                "out_of_scope=null", "progress_bar=false",
                                                                f"paths.cache_dir={tmp_path / 'cache'}"]))
    plain = [json.loads(line) for line in (tmp_path / "plain" / "predictions.jsonl").read_text().splitlines()]
    assert {r["predicted"] for r in plain} <= {"FAKE", "REAL"} and all(r["out_of_scope"] is None for r in plain)


def test_evaluate_scores_a_folder_of_one_class_with_the_cifake_figures_beside(scoped_run: Path, tmp_path: Path,
                                                                              caplog: pytest.LogCaptureFixture,
                                                                              cli) -> None:
    folder = outside_images(tmp_path / "outside")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")  # listed with its reason, not fatal
    ckpt = scoped_run / "run" / "checkpoints" / "best.ckpt"
    with caplog.at_level("INFO"):
        evaluate_job.run(compose_job("evaluate", tmp_path / "run", [f"ckpt_path={ckpt}", f"folder={folder}",
                                                                    "folder_class=REAL",
                                                                    f"paths.cache_dir={tmp_path / 'cache'}"]))
    report = json.loads((tmp_path / "run" / "folder.json").read_text())
    assert report["n"] == 12 and report["class"] == "REAL" and sum(report["shares"].values()) == pytest.approx(1.0)
    assert list(report["unreadable"]) == [str(folder / "broken.jpg")]
    said = [f["answer"] for f in report["files"]]
    assert report["shares"]["OUT_OF_SCOPE"] == pytest.approx(said.count("OUT_OF_SCOPE") / 12)
    metrics = json.loads((scoped_run / "run" / "metrics.json").read_text())
    assert report["cifake_test"]["accuracy"] == metrics["accuracy"]
    assert "12 images of" in caplog.text  # the summary the console and the run's log show
    # Without folder_class: one line saying so, from the command as typed.
    one_error_line(cli("evaluate.py", tmp_path, f"ckpt_path={ckpt}", f"folder={folder}"), "folder_class")


def test_init_from_starts_a_fit_from_the_weights_and_refuses_another_network(scoped_run: Path, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture,
                                                                            cli) -> None:
    ckpt = scoped_run / "run" / "checkpoints" / "best.ckpt"
    with caplog.at_level("INFO"):
        train_job.run(compose_job("train", tmp_path / "run", tiny_train_overrides(
            tmp_path, f"init_from={ckpt}", "trainer.limit_train_batches=1", *NO_FIGURES)))
    assert "Network weights loaded from" in caplog.text
    # The run records which file it started from: `bundled` or a path may name other weights later.
    started = json.loads((tmp_path / "run" / "results.json").read_text())["run"]["init_from"]
    assert started == {"init_from": str(ckpt), "file": str(ckpt.resolve()), "sha256": file_sha256(ckpt)}
    # and the card of its export says so.
    export_job.run(compose_job("export", tmp_path / "export", [
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", "format=safetensors"]))
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"Started from (a fine-tune): `init_from={ckpt}`: {ckpt.resolve()}, sha256 `{file_sha256(ckpt)}`" in card
    other = tiny_train_overrides(tmp_path, f"init_from={ckpt}", "model.net.dense=[24]")
    one_error_line(cli("train.py", tmp_path, *other, run_dir=tmp_path / "other"), "init_from", "does not fit model.net")
