"""Temperature scaling: fitted on validation, order-preserving, stored with the model by train.py
and applied alike by every scorer (checkpoint, ONNX, safetensors), with the ECE before and after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifake.analysis.calibration import apply_temperature, expected_calibration_error, fit_temperature
from cifake.analysis.metrics import binary_report
from cifake.core.errors import ConfigError
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import export as export_job
from cifake.jobs import train as train_job
from cifake.scoring import open_scorer
from cifake.scoring.scorer import with_temperature
from tests.helpers.config import NO_FIGURES, compose_job, tiny_demo_data_overrides, tiny_demo_overrides


def synthetic(temperature: float, n: int = 40_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) and scores sigmoid(z / temperature): a model whose p(REAL) is
    off by exactly ``temperature`` (> 1: underconfident scores, as label smoothing leaves them)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    return (1.0 / (1.0 + np.exp(-z / temperature))).astype(np.float32), y


@pytest.mark.parametrize("true_scale", [0.5, 2.5])
def test_the_fitted_temperature_undoes_a_known_miscalibration(true_scale: float) -> None:
    p, y = synthetic(true_scale)
    temperature = fit_temperature(p, y)
    assert temperature == pytest.approx(1.0 / true_scale, rel=0.05)
    before, after = expected_calibration_error(p, y), expected_calibration_error(apply_temperature(p, temperature), y)
    assert before > 0.05 and after < 0.015


def test_a_temperature_keeps_the_order_the_accuracy_and_the_auroc() -> None:
    p, y = synthetic(2.5, n=5000)
    p = np.concatenate([p, np.float32([0.0, 1.0, 0.5, 1 - 6e-8])])
    y = np.concatenate([y, [0, 1, 1, 1]])
    scaled = apply_temperature(p, 0.4)
    assert scaled.dtype == np.float32 and scaled[-4:-1].tolist() == [0.0, 1.0, 0.5]
    # Never reversed (float32 may tie scores next to 0 and 1 when a temperature below 1 sharpens them).
    assert np.all(np.diff(scaled[np.argsort(p, kind="stable")].astype(np.float64)) >= 0)
    a = binary_report(torch.from_numpy(p), torch.from_numpy(y), 0.5, ("FAKE", "REAL"))
    b = binary_report(torch.from_numpy(scaled), torch.from_numpy(y), 0.5, ("FAKE", "REAL"))
    assert a["accuracy"] == b["accuracy"] and a["auroc"] == pytest.approx(b["auroc"], abs=1e-7)
    with pytest.raises(ConfigError, match="temperature"):
        apply_temperature(p, 0.0)
    scores = np.random.default_rng(0).random(100_000).astype(np.float32)
    assert np.array_equal(apply_temperature(scores, 1.0), scores)  # evaluation relies on it (choose_on_validation)


def test_temperatures_combine_on_a_scorer(tmp_path: Path) -> None:
    from tests.helpers.models import make_checkpoint

    scorer = open_scorer(make_checkpoint(tmp_path / "m.ckpt"), device="cpu", precision="32-true")
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    raw = scorer.score(images)
    twice = with_temperature(with_temperature(scorer, 2.0), 1.5)
    assert twice.temperature == pytest.approx(3.0)
    np.testing.assert_allclose(twice.score(images), apply_temperature(raw, 3.0), atol=1e-6)
    assert with_temperature(scorer, None) is scorer and with_temperature(scorer, 1.0) is scorer


def test_train_fits_stores_and_every_scorer_applies_the_temperature(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    from cifake.evaluation import workflow

    scored, original = [], workflow.score_split
    monkeypatch.setattr(workflow, "score_split", lambda *a, **k: (scored.append(a[2]), original(*a, **k))[1])
    # NO_FIGURES: the temperature lives in the numbers; the figures cost ~11 s of this fit and evaluation.
    cfg = compose_cfg("train", [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=2",
                                "model.label_smoothing=0.2",
                                "calibration.temperature=auto", "unsure_precision=0.75", "evaluate=true"])
    metrics = train_job.run(cfg)
    assert scored == ["validate", "test"]  # one validation pass serves the temperature and the band
    monkeypatch.undo()
    out = Path(cfg.paths.output_dir)
    best = out / "checkpoints" / "best.ckpt"
    stored = torch.load(best, weights_only=True)
    temperature = stored["temperature"]
    assert metrics["temperature"] == pytest.approx(temperature) and 0.05 < temperature < 20
    # The stored temperature is the one the validation scores of the best weights give.
    from hydra.utils import instantiate

    from cifake.evaluation.workflow import score_split

    raw = open_scorer(best, device="cpu", precision="32-true")  # now applies the stored temperature
    assert raw.temperature == pytest.approx(temperature)
    val = score_split(with_temperature(raw, 1.0 / temperature), instantiate(cfg.data, _convert_="all"), "validate")
    assert fit_temperature(val.p_real, val.labels) == pytest.approx(temperature, rel=1e-4)
    report = json.loads((out / "metrics.json").read_text())
    block = report["temperature"]
    assert block["value"] == pytest.approx(temperature) and block["ece_after"] == report["ece"]
    rows = [line.split(",") for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    header = (out / "predictions.csv").read_text().splitlines()[0].split(",")
    p_after = np.array([float(r[header.index("p_real")]) for r in rows])
    labels = np.array([r[header.index("label")] == "REAL" for r in rows], dtype=np.int64)
    p_before = apply_temperature(p_after, 1.0 / temperature)
    # predictions.csv rounds p_real to 6 decimals: the ECE from it agrees to about that.
    assert block["ece_before"] == pytest.approx(expected_calibration_error(p_before, labels), abs=1e-5)
    # The band was chosen after the temperature: it lies in the calibrated scores' space.
    assert report["unsure"]["band"] == pytest.approx(stored["unsure_band"])
    from cifake.analysis.calibration import choose_unsure_band

    calibrated = score_split(raw, instantiate(cfg.data, _convert_="all"), "validate")
    assert stored["unsure_band"] == pytest.approx(choose_unsure_band(calibrated.p_real, calibrated.labels, 0.5, 0.75))

    # evaluate.py finds the temperature with the weights and reports the same figures.
    data = tiny_demo_data_overrides()
    again = evaluate_job.run(compose_cfg("evaluate", [*data, f"ckpt_path={best}", "report.figures=false",
                                                      f"paths.output_dir={tmp_path / 'ev'}"]))
    assert again["temperature"]["value"] == pytest.approx(temperature)
    assert again["accuracy"] == report["accuracy"] and again["ece"] == pytest.approx(report["ece"], abs=1e-6)

    # The ONNX and safetensors exports carry it, and score as the checkpoint does.
    terms = export_job.run(compose_job("export", tmp_path / "onnx", [f"ckpt_path={best}"]))
    assert terms["temperature"] == pytest.approx(temperature) and "temperature" in terms["output"]["meaning"]
    config = export_job.run(compose_job("export", tmp_path / "st", [f"ckpt_path={best}", "format=safetensors"]))
    assert config["temperature"] == pytest.approx(temperature)
    images = np.random.default_rng(1).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    expected = raw.score(images)
    for path in (tmp_path / "onnx" / "model.onnx", tmp_path / "st"):
        other = open_scorer(path, device="cpu", precision="32-true")
        assert other.temperature == pytest.approx(temperature)
        np.testing.assert_allclose(other.score(images), expected, atol=2e-5)


def test_a_forest_refuses_to_store_a_temperature(compose_cfg) -> None:
    overrides = [o for o in tiny_demo_overrides() if not o.startswith("model.")]
    cfg = compose_cfg("train", [*overrides, "model=rf", "calibration.temperature=auto"])
    with pytest.raises(ConfigError, match="forest has none"):
        train_job.run(cfg)


def test_a_temperature_that_is_not_a_number_is_refused(compose_cfg, tmp_path: Path) -> None:
    from tests.helpers.models import make_checkpoint

    best = make_checkpoint(tmp_path / "m.ckpt")
    data = tiny_demo_data_overrides()
    with pytest.raises(ConfigError, match="calibration.temperature"):
        evaluate_job.run(compose_cfg("evaluate", [*data, f"ckpt_path={best}", "calibration.temperature=hot",
                                                  f"paths.output_dir={tmp_path / 'ev'}"]))
