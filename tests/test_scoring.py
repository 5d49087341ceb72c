"""One scoring layer for every kind of model file: a checkpoint and its ONNX export give the same
evaluation, and a forest predicts through the same interface and columns as a network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifake.core.errors import ConfigError
from cifake.evaluation.file_predictions import FIELDS
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import predict as predict_job
from cifake.jobs import train as train_job
from cifake.models.forest import ForestClassifier
from cifake.models.forest.features import extract_features
from cifake.models.precision import cpu_has_fast_bf16
from cifake.scoring import open_scorer
from tests.helpers import ROOT
from tests.helpers.config import NO_FIGURES, RESNET, compose_job, tiny_demo_data_overrides
from tests.helpers.images import generated_images
from tests.helpers.models import export_tiny, fit_tiny_forest
from tests.helpers.outputs import read_csv
from tests.helpers.runner import check, run_python

DATA = tiny_demo_data_overrides()
FLOAT32_HERE = {"precision": "32-true", "device": "cpu"}  # what scoring computes in by default, on this CPU


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, its ONNX export and a forest fitted on the demo data."""
    tmp = tmp_path_factory.mktemp("scoring")
    ckpt, onnx_path, _ = export_tiny(tmp)
    return {"ckpt": ckpt, "onnx": onnx_path, "forest": fit_tiny_forest(tmp),
            "cache": tmp / "cache", "tmp": tmp}


def evaluate(models: dict[str, Path], model: Path, out: Path) -> dict:
    cfg = compose_job("evaluate", out, [*DATA, f"ckpt_path={model}", f"paths.cache_dir={models['cache']}",
                                        "report.figures=false"])
    return evaluate_job.run(cfg)


def test_checkpoint_and_its_onnx_export_evaluate_alike(models, tmp_path: Path) -> None:
    # float32 on both sides by default (scoring.precision), as onnxruntime computes, whatever this CPU's bf16.
    by_ckpt = evaluate(models, models["ckpt"], tmp_path / "ckpt")
    by_onnx = evaluate(models, models["onnx"], tmp_path / "onnx")
    assert by_ckpt["n"] == by_onnx["n"] == 48
    assert by_ckpt["confusion_matrix"] == by_onnx["confusion_matrix"]
    assert by_ckpt["accuracy"] == by_onnx["accuracy"] and by_ckpt["tta"] == by_onnx["tta"]
    assert by_ckpt["tta"]["mode"] == "none"
    assert by_ckpt["auroc"] == pytest.approx(by_onnx["auroc"], abs=1e-4)
    a, b = read_csv(tmp_path / "ckpt" / "predictions.csv"), read_csv(tmp_path / "onnx" / "predictions.csv")
    assert [r["path"] for r in a] == [r["path"] for r in b] and [r["label"] for r in a] == [r["label"] for r in b]
    p_ckpt = np.array([float(r["p_real"]) for r in a])
    p_onnx = np.array([float(r["p_real"]) for r in b])
    assert np.abs(p_ckpt - p_onnx).max() < 1e-4
    assert p_ckpt.std() > 0.01  # the model tells images apart: a real comparison
    on_disk = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert on_disk["confusion_matrix"] == by_onnx["confusion_matrix"]


def test_forest_scores_through_the_same_interface(models) -> None:
    scorer = open_scorer(models["forest"], precision="32-true")
    forest = ForestClassifier.load(models["forest"])
    assert scorer.kind == "forest" and not scorer.explainable and scorer.classes == ("FAKE", "REAL")
    assert scorer.image_size == 32 and scorer.resample == "bicubic"  # recorded with the forest
    images = generated_images(models["tmp"] / "gen", 10)
    expected = forest.predict_proba_real(extract_features(images, forest.feature_set, **forest.feature_params))
    np.testing.assert_allclose(scorer.p_real(images, batch_size=3), expected, rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="leave tta.mode=none"):
        open_scorer(models["forest"], precision="32-true", tta={"mode": "flip"})


def test_predict_writes_the_same_columns_for_every_kind_of_model(models, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(generated_images(tmp_path / "gen", 4)):
        Image.fromarray(np.transpose(image, (1, 2, 0))).save(folder / f"{i}.png")
    tables = {}
    for kind in ("ckpt", "onnx", "forest"):
        out = tmp_path / kind
        cfg = compose_job("predict", out, [f"ckpt_path={models[kind]}", f"inputs={folder}", "progress_bar=false"])
        summary = predict_job.run(cfg)
        assert summary["files"] == 4 and summary["unreadable"] == 0
        tables[kind] = read_csv(out / "predictions.csv")
    columns = {kind: list(rows[0]) for kind, rows in tables.items()}
    assert columns["ckpt"] == columns["onnx"] == columns["forest"] == list(FIELDS)
    p = {kind: np.array([float(r["p_real"]) for r in rows]) for kind, rows in tables.items()}
    assert np.abs(p["ckpt"] - p["onnx"]).max() < 1e-4
    assert all(r["predicted"] in ("FAKE", "REAL") for r in tables["forest"])


# --- a trained network: train.py's, export.py's and evaluate.py's jobs ------------------------------------------------
# The export and one evaluation run as a user runs them (python export.py, python evaluate.py); the training and
# the other evaluations in this process: the point is the numbers they write, and a fresh interpreter for each
# would cost ~10 s of imports (train.py's command line: test_jobs.py, test_wheel.py).

# Demo data large enough for a tiny residual net to separate the classes in a few epochs (500 test images).
DEMO = [*[o for o in DATA if not o.startswith("data.demo.")], "data.demo.train_per_class=150",
        "data.demo.test_per_class=250"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """A tiny network trained on demo data by train.py's job (with evaluate=true), and its export by export.py's.
    No figures (~3.5 s an epoch and ~4.5 s an evaluation here): the tests compare numbers."""
    tmp = tmp_path_factory.mktemp("demo_run")
    run, cache = tmp / "train", tmp / "cache"
    train_job.run(compose_job("train", run, [*DEMO, f"paths.cache_dir={cache}", *RESNET, "trainer.max_epochs=4",
                                             "trainer.enable_progress_bar=false", *NO_FIGURES, "evaluate=true"]))
    ckpt = run / "checkpoints" / "best.ckpt"
    check(run_python(str(ROOT / "export.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp / 'export'}", cwd=tmp))
    return {"tmp": tmp, "cache": cache, "run": run, "ckpt": ckpt, "onnx": tmp / "export" / "model.onnx",
            "evaluated": {}}


def evaluate_demo(demo_run: dict, model: Path, name: str, *overrides: str,
                  script: bool = False) -> tuple[dict, np.ndarray]:
    """evaluate.py's job with ``ckpt_path=<model>`` on the demo's test split (``script``: ``python evaluate.py``):
    metrics.json and p(REAL) per image. Run once per model and overrides in the module: a second test asking the
    same reads the first one's files."""
    key = (str(model), overrides)
    if key not in demo_run["evaluated"]:
        out = demo_run["tmp"] / name
        args = [f"ckpt_path={model}", *DEMO, f"paths.cache_dir={demo_run['cache']}", "report.figures=false",
                *overrides]
        if script:
            check(run_python(str(ROOT / "evaluate.py"), *args, f"hydra.run.dir={out}", cwd=demo_run["tmp"]))
        else:
            evaluate_job.run(compose_job("evaluate", out, args))
        demo_run["evaluated"][key] = out
    out = demo_run["evaluated"][key]
    rows = read_csv(out / "predictions.csv")
    return json.loads((out / "metrics.json").read_text()), np.array([float(r["p_real"]) for r in rows])


@pytest.mark.slow
def test_a_demo_checkpoint_and_its_onnx_export_give_the_same_confusion_matrix(demo_run) -> None:
    # Training took bf16 where this CPU computes it natively; scoring is float32 whatever the CPU, so the
    # checkpoint is scored as its ONNX export is, and every file says what computed it.
    computed = json.loads((demo_run["run"] / "results.json").read_text())["computed"]
    assert computed["training"]["precision"] == ("bf16-mixed" if cpu_has_fast_bf16() else "32-true")
    assert computed["training"]["device"] == "cpu" and computed["test"] == FLOAT32_HERE
    by_ckpt, p_ckpt = evaluate_demo(demo_run, demo_run["ckpt"], "ev_ckpt")
    by_onnx, p_onnx = evaluate_demo(demo_run, demo_run["onnx"], "ev_onnx", script=True)
    assert by_ckpt["n"] == by_onnx["n"] == 500
    assert by_ckpt["confusion_matrix"] == by_onnx["confusion_matrix"]
    assert by_ckpt["scoring"] == by_onnx["scoring"] == FLOAT32_HERE
    assert np.abs(p_ckpt - p_onnx).max() < 1e-4
    # A real comparison: the trained model tells the classes apart, with answers on both sides of the threshold.
    (tn, fp), (fn, tp) = by_ckpt["confusion_matrix"]
    assert tn + tp > 0.7 * by_ckpt["n"] and min(tn + fn, fp + tp) > 0
    # train.py evaluate=true scored the best checkpoint the same way.
    after_training = json.loads((demo_run["run"] / "metrics.json").read_text())
    assert after_training["confusion_matrix"] == by_ckpt["confusion_matrix"]
    assert after_training["scoring"] == FLOAT32_HERE


@pytest.mark.slow
def test_bf16_scoring_is_there_when_asked_and_recorded(demo_run) -> None:
    full, p_full = evaluate_demo(demo_run, demo_run["ckpt"], "ev_fp32")
    half, p_half = evaluate_demo(demo_run, demo_run["ckpt"], "ev_bf16", "scoring.precision=bf16-mixed")
    assert half["scoring"] == {"precision": "bf16-mixed", "device": "cpu"} and full["scoring"] == FLOAT32_HERE
    difference = np.abs(p_half - p_full)
    assert 0 < difference.max() < 0.05  # bf16 keeps 8 bits of mantissa: close to float32, not equal to it
    # The ONNX export computes in float32 whatever is asked, and says so.
    by_onnx, _ = evaluate_demo(demo_run, demo_run["onnx"], "ev_onnx_bf16", "scoring.precision=bf16-mixed")
    assert by_onnx["scoring"] == FLOAT32_HERE
