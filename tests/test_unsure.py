"""The unsure band: chosen on hand-made validation scores, stored with the model by train.py,
reported by evaluate.py, exported in the contract, and answered as UNSURE by predict.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from cifake.analysis.calibration import choose_unsure_band, unsure_report
from cifake.core.errors import ConfigError
from cifake.evaluation.workflow import score_split
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import export as export_job
from cifake.jobs import predict as predict_job
from cifake.jobs import train as train_job
from cifake.scoring import open_scorer
from tests.helpers.config import NO_FIGURES, compose_job, tiny_demo_data_overrides, tiny_demo_overrides
from tests.helpers.models import tiny_onnx
from tests.helpers.outputs import read_csv

P = np.array([0.05, 0.10, 0.20, 0.30, 0.40, 0.60, 0.70, 0.80, 0.90, 0.95])
Y = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1])


def test_band_is_the_narrowest_reaching_the_target_on_both_sides() -> None:
    # REAL answers above 0.5 are 4/5 right, above 0.65 all right; FAKE answers at or below 0.5 are
    # 4/5 right, at or below 0.35 3/4, at or below 0.25 all right.
    assert choose_unsure_band(P, Y, 0.5, 1.0) == pytest.approx((0.25, 0.65))
    assert choose_unsure_band(P, Y, 0.5, 0.8) == pytest.approx((0.5, 0.5))  # the threshold alone suffices
    report = unsure_report(P, Y, (0.25, 0.65))
    assert report["coverage"] == pytest.approx(0.7) and report["confident_accuracy"] == 1.0
    assert report["n_unsure"] == 3 and report["n_confident"] == 7
    # A side that never reaches the target has no confident answers.
    assert choose_unsure_band(P, 1 - Y, 0.5, 0.99) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="target_precision"):
        choose_unsure_band(P, Y, 0.5, 1.5)


def constant_images(folder: Path, levels: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, level in enumerate(levels):
        path = folder / f"{i}_{level}.png"
        Image.fromarray(np.full((32, 32, 3), level, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_answers_unsure_inside_the_band(tmp_path: Path) -> None:
    # The stand-in model's p(REAL) is sigmoid(8 * (brightness - 0.5)): dark FAKE, bright REAL.
    model = tiny_onnx(tmp_path / "export")
    contract = json.loads((tmp_path / "export" / "model.json").read_text())
    contract["unsure_band"] = [0.3, 0.7]
    (tmp_path / "export" / "model.json").write_text(json.dumps(contract))
    constant_images(tmp_path / "images", [20, 110, 128, 145, 235])  # p = 0.04, 0.37, 0.52, 0.63, 0.96
    expected = ["FAKE", "UNSURE", "UNSURE", "UNSURE", "REAL"]
    for name, overrides, want in [("auto", [], expected),  # the band from model.json
                                  ("given", ["unsure_band=[0.4,0.6]"], ["FAKE", "FAKE", "UNSURE", "REAL", "REAL"]),
                                  ("off", ["unsure_band=null"], ["FAKE", "FAKE", "REAL", "REAL", "REAL"])]:
        out = tmp_path / name
        summary = predict_job.run(compose_job("predict", out, [f"ckpt_path={model}", f"inputs={tmp_path / 'images'}",
                                                               "progress_bar=false", *overrides]))
        with (out / "predictions.csv").open(newline="") as fh:
            rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
        assert [r["predicted"] for r in rows] == want, name
        assert sum(summary["predicted"].values()) == 5
    with pytest.raises(ConfigError, match="must satisfy"):
        predict_job.run(compose_job("predict", tmp_path / "bad", [f"ckpt_path={model}", f"inputs={tmp_path / 'images'}",
                                                                  "unsure_band=[0.6,0.9]"]))


def test_train_stores_the_band_and_evaluate_and_export_use_it(compose_cfg, tmp_path: Path) -> None:
    # NO_FIGURES: the band lives in the numbers; the figures cost ~11 s of this fit and evaluation.
    cfg = compose_cfg("train", [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=2", "unsure_precision=0.75",
                                "evaluate=true", "robustness=true"])
    metrics = train_job.run(cfg)
    best = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    band = torch.load(best, weights_only=True)["unsure_band"]
    # The stored band is the one the validation scores of the best weights give.
    scorer = open_scorer(best, device="cpu", precision=cfg.scoring.precision)
    val = score_split(scorer, instantiate(cfg.data, _convert_="all"), "validate")
    assert band == pytest.approx(choose_unsure_band(val.p_real, val.labels, 0.5, 0.75))
    assert 0.0 <= band[0] <= 0.5 <= band[1] <= 1.0
    report = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert report["unsure"]["band"] == pytest.approx(band) and metrics["test"]["unsure"] == report["unsure"]
    test_rows = read_csv(Path(cfg.paths.output_dir) / "predictions.csv")
    p_test = np.array([float(r["p_real"]) for r in test_rows])
    y_test = np.array([r["label"] == "REAL" for r in test_rows], dtype=np.int64)
    assert report["unsure"]["coverage"] == pytest.approx(unsure_report(p_test, y_test, band)["coverage"], abs=1e-6)
    rows = read_csv(Path(cfg.paths.output_dir) / "robustness.csv")
    assert rows[0]["perturbation"] == "none" and rows[0]["coverage"] == f"{report['unsure']['coverage']:.6f}"
    trained = {r["perturbation"]: r["trained"] for r in rows[1:]}
    assert trained["jpeg"] == trained["blur"] == "no"  # this recipe trains without degradations

    data = tiny_demo_data_overrides()
    again = evaluate_job.run(compose_cfg("evaluate", [*data, f"ckpt_path={best}", "report.figures=false",
                                                      f"paths.output_dir={tmp_path / 'ev'}"]))
    assert again["unsure"]["band"] == pytest.approx(band)
    off = evaluate_job.run(compose_cfg("evaluate", [*data, f"ckpt_path={best}", "unsure_band=null",
                                                    "report.figures=false",
                                                    f"paths.output_dir={tmp_path / 'ev_off'}"]))
    assert "unsure" not in off
    terms = export_job.run(compose_job("export", tmp_path / "export", [f"ckpt_path={best}"]))
    assert terms["unsure_band"] == pytest.approx(band) and "UNSURE" in terms["decision"]


def test_confident_accuracy_reads_as_four_digits_or_says_there_is_none() -> None:
    from cifake.analysis.calibration import confident_accuracy_text

    p, y = np.array([0.1, 0.2, 0.6, 0.9]), np.array([0, 1, 1, 0])
    assert confident_accuracy_text(unsure_report(p, y, (0.15, 0.7))) == "0.5000"  # 0.1 right, 0.9 wrong
    assert confident_accuracy_text(unsure_report(p, y, (0.0, 1.0))) == "none (every answer UNSURE)"
