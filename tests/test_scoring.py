"""One scoring layer for every kind of model file: a checkpoint and its ONNX export give the same
evaluation, and a forest predicts through the same interface and columns as a network."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from cifake.data.features import extract_features
from cifake.errors import ConfigError
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import predict as predict_job
from cifake.jobs import train as train_job
from cifake.models.forest import ForestClassifier
from cifake.scoring import open_scorer
from tests.conftest import CONF_DIR, tiny_demo_overrides
from tests.test_export import compose_job, export_tiny, generated_images

DATA = [o for o in tiny_demo_overrides() if o.startswith(("data", "trainer.accelerator"))]


def fit_tiny_forest(tmp: Path) -> Path:
    """A small forest fitted on the tiny demo data by train.py's job (cache under ``tmp/cache``);
    returns its ``.skops``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"paths.output_dir={tmp / 'forest'}", f"paths.cache_dir={tmp / 'cache'}",
                                *[o for o in tiny_demo_overrides() if not o.startswith("model.")],
                                "model=rf", "model.n_estimators=20", "model.n_jobs=1"])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    train_job.run(cfg)
    return tmp / "forest" / "checkpoints" / "forest.skops"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, its ONNX export and a forest fitted on the demo data."""
    tmp = tmp_path_factory.mktemp("scoring")
    ckpt, onnx_path, _ = export_tiny(tmp)
    return {"ckpt": ckpt, "onnx": onnx_path, "forest": fit_tiny_forest(tmp),
            "cache": tmp / "cache", "tmp": tmp}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def evaluate(models: dict[str, Path], model: Path, out: Path) -> dict:
    cfg = compose_job("evaluate", out, [*DATA, f"ckpt_path={model}", f"paths.cache_dir={models['cache']}",
                                        "trainer.precision=32-true", "report.figures=false"])
    return evaluate_job.run(cfg)


def test_checkpoint_and_its_onnx_export_evaluate_alike(models, tmp_path: Path) -> None:
    # float32 on both sides: onnxruntime computes in float32, and auto would pick bf16 for the checkpoint here.
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
    scorer = open_scorer(models["forest"])
    forest = ForestClassifier.load(models["forest"])
    assert scorer.kind == "forest" and not scorer.explainable and scorer.classes == ("FAKE", "REAL")
    assert scorer.image_size == 32 and scorer.resample == "bicubic"  # recorded with the forest
    images = generated_images(models["tmp"] / "gen", 10)
    expected = forest.predict_proba_real(extract_features(images, forest.feature_set, **forest.feature_params))
    np.testing.assert_allclose(scorer.p_real(images, batch_size=3), expected, rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="leave tta.mode=none"):
        open_scorer(models["forest"], tta={"mode": "flip"})


def test_predict_writes_the_same_columns_for_every_kind_of_model(models, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(generated_images(tmp_path / "gen", 4)):
        Image.fromarray(np.transpose(image, (1, 2, 0))).save(folder / f"{i}.png")
    tables = {}
    for kind in ("ckpt", "onnx", "forest"):
        out = tmp_path / kind
        cfg = compose_job("predict", out, [f"ckpt_path={models[kind]}", f"inputs={folder}", "progress_bar=false",
                                           "precision=32-true"])
        summary = predict_job.run(cfg)
        assert summary["files"] == 4 and summary["unreadable"] == 0
        tables[kind] = read_csv(out / "predictions.csv")
    columns = {kind: list(rows[0]) for kind, rows in tables.items()}
    assert columns["ckpt"] == columns["onnx"] == columns["forest"] == list(predict_job.FIELDS)
    p = {kind: np.array([float(r["p_real"]) for r in rows]) for kind, rows in tables.items()}
    assert np.abs(p["ckpt"] - p["onnx"]).max() < 1e-4
    assert all(r["predicted"] in ("FAKE", "REAL") for r in tables["forest"])
