"""The out-of-scope score (cifake/models/scope.py) and the fourth answer: fitted on generated features it
flags a shifted distribution and not the training one; stored in a checkpoint it gives the same scores
in every export (ONNX, safetensors) and through every scorer; the answers come in their order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifake.analysis.calibration import answers_report
from cifake.core.errors import ConfigError
from cifake.jobs import export as export_job
from cifake.models.scope import Mahalanobis, fit_mahalanobis, scope_from_record, scope_record, threshold_for
from cifake.scoring import open_scorer
from cifake.scoring.network import SCOPE_KEY, network_features, read_checkpoint, record_in_checkpoint
from cifake.scoring.scorer import OUT_OF_SCOPE, UNSURE, resolve_scope, verdicts
from tests.helpers.config import compose_job
from tests.helpers.models import make_checkpoint


def gaussian_features(n: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of correlated 16-d features around means 2 apart, everything moved by ``shift`` sds."""
    mix = np.random.default_rng(99).normal(size=(16, 16)) / 4 + np.eye(16)  # one covariance for every sample
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    means = np.stack([np.zeros(16), np.full(16, 0.5)])
    return rng.normal(size=(n, 16)) @ mix + means[labels] + shift, labels


def test_a_score_fitted_on_generated_features_flags_a_shifted_distribution_and_not_the_training_one() -> None:
    train, labels = gaussian_features(4000)
    head = fit_mahalanobis(train, labels)
    held_out, _ = gaussian_features(2000, seed=1)
    shifted, _ = gaussian_features(2000, shift=1.5, seed=2)
    score = lambda f: head(torch.from_numpy(f).float()).numpy()  # noqa: E731
    threshold = threshold_for(score(held_out), 0.04)
    assert 0.9 < float(np.median(score(held_out))) < 1.1  # about 1 for a typical training-like point
    new_in, _ = gaussian_features(2000, seed=3)
    assert 0.02 < float(np.mean(score(new_in) > threshold)) < 0.07  # the chosen share, on images it never saw
    assert float(np.mean(score(shifted) > threshold)) > 0.95
    # The mean of the other class is not out of scope: the distance is to the nearest class.
    assert float(score(np.full((1, 16), 0.5))[0]) < threshold


def test_the_record_round_trips_and_refuses_what_it_cannot_read() -> None:
    head = Mahalanobis(torch.zeros(2, 4), torch.eye(4))
    record = scope_record(head, 2.5, 0.04, 100)
    again, settings = scope_from_record(record)
    assert torch.equal(again.precision, head.precision) and settings["threshold"] == 2.5
    with pytest.raises(ValueError, match="method"):
        scope_from_record({**record, "method": "energy"})
    with pytest.raises(ValueError, match="lacks"):
        scope_from_record({k: v for k, v in record.items() if k != "precision"})
    with pytest.raises(ValueError, match="too few"):
        fit_mahalanobis(np.zeros((3, 64)), np.zeros(3))


def scoped_checkpoint(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A tiny checkpoint with a score fitted on its own features of random images (threshold: the median
    of those images, so about half of them are out of scope), and the images."""
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    images = np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    scorer = open_scorer(ckpt, device="cpu", precision="32-true")
    features = network_features(scorer.model, scorer.device)(images)
    head = fit_mahalanobis(features, np.arange(64) % 2)
    median = float(np.median(head(torch.from_numpy(features)).numpy()))
    record_in_checkpoint(ckpt, scope=scope_record(head, median, 0.5, 64))
    return ckpt, images


def test_the_score_survives_every_export_within_1e_5(tmp_path: Path) -> None:
    ckpt, images = scoped_checkpoint(tmp_path)
    assert SCOPE_KEY in read_checkpoint(ckpt)
    export_job.run(compose_job("export", tmp_path / "onnx", [f"ckpt_path={ckpt}"]))
    # A folder scored with it beside the checkpoint (evaluate.py folder=... hydra.run.dir=<run>/folders/<name>):
    # its shares go into the model card.
    (tmp_path / "folders" / "photos").mkdir(parents=True)
    (tmp_path / "folders" / "photos" / "folder.json").write_text(json.dumps({
        "folder": "/photos/REAL", "class": "REAL", "n": 40,
        "shares": {"FAKE": 0.025, "REAL": 0.6, "UNSURE": 0.275, "OUT_OF_SCOPE": 0.1}}))
    export_job.run(compose_job("export", tmp_path / "st", [f"ckpt_path={ckpt}", "format=safetensors"]))
    card = (tmp_path / "st" / "README.md").read_text()
    assert "| `/photos/REAL` | REAL | 40 | 60.0% | 2.5% | 27.5% | 10.0% |" in card
    assert "Out of scope: a mahalanobis score" in card
    contract = json.loads((tmp_path / "onnx" / "model.json").read_text())
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert contract["out_of_scope"]["output"] == "out_of_scope" and config["out_of_scope"]["method"] == "mahalanobis"
    scorers = [open_scorer(p, device="cpu", precision="32-true", tta={"mode": "flip"})
               for p in (ckpt, tmp_path / "onnx" / "model.onnx", tmp_path / "st")]
    want = scorers[0].out_of_scope(images)
    assert want is not None and 0.3 < float(np.mean(want > scorers[0].scope_threshold)) < 0.7
    for scorer in scorers[1:]:
        np.testing.assert_allclose(scorer.out_of_scope(images), want, atol=1e-5, rtol=0)
        assert scorer.scope_threshold == scorers[0].scope_threshold
        assert verdicts(scorer.p_real(images), scorer.classes, 0.5, None, scorer.out_of_scope(images),
                        scorer.scope_threshold).count(OUT_OF_SCOPE) == int(np.sum(want > scorer.scope_threshold))
    # out_of_scope=null switches it off; a number replaces the threshold; a file without one refuses a number.
    assert resolve_scope(None, scorers[0]).out_of_scope(images) is None
    assert resolve_scope(99.0, scorers[0]).scope_threshold == 99.0
    with pytest.raises(ConfigError, match="stores no out-of-scope score"):
        resolve_scope(1.0, open_scorer(make_checkpoint(tmp_path / "plain.ckpt"), device="cpu", precision="32-true"))


def test_the_answers_come_out_of_scope_first_then_unsure_then_the_class() -> None:
    p = np.array([0.9, 0.9, 0.5, 0.1, 0.55])
    scope = np.array([5.0, 1.0, 1.0, 1.0, 1.0])
    said = verdicts(p, ("FAKE", "REAL"), 0.5, (0.4, 0.6), scope, 2.0)
    assert said == [OUT_OF_SCOPE, "REAL", UNSURE, "FAKE", UNSURE]
    assert verdicts(p, ("FAKE", "REAL"), 0.5) == ["REAL", "REAL", "FAKE", "FAKE", "REAL"]
    report = answers_report(p, np.array([1, 1, 1, 0, 0]), ("FAKE", "REAL"), 0.5, (0.4, 0.6), scope, 2.0)
    assert report["shares"] == {"FAKE": 0.2, "REAL": 0.2, "UNSURE": 0.4, "OUT_OF_SCOPE": 0.2}
    assert report["answered"] == pytest.approx(0.4) and report["accuracy_answered"] == 1.0
    assert report["by_class"]["REAL"]["OUT_OF_SCOPE"] == pytest.approx(1 / 3)


def test_evaluate_stores_a_fitted_score_in_a_safetensors_export(tmp_path: Path) -> None:
    """store=true on a safetensors folder: the score's tensors go into model.safetensors (its hash in config.json
    anew) and its settings into config.json, and the folder then answers out of scope as a checkpoint does."""
    from cifake.jobs import evaluate as evaluate_job
    from tests.helpers.config import tiny_demo_overrides

    data = [o for o in tiny_demo_overrides() if not o.startswith("model.")]  # evaluate.py has no model group
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    export_job.run(compose_job("export", tmp_path / "st", [f"ckpt_path={ckpt}", "format=safetensors"]))
    before = open_scorer(tmp_path / "st", device="cpu", precision="32-true")
    assert before.scope is None
    evaluate_job.run(compose_job("evaluate", tmp_path / "eval", [
        f"ckpt_path={tmp_path / 'st'}", *data, f"paths.cache_dir={tmp_path / 'cache'}",
        "out_of_scope_fit.method=mahalanobis", "out_of_scope_fit.flagged=0.2", "store=true",
        "report.figures=false"]))
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["out_of_scope"]["validation_flagged"] == 0.2
    after = open_scorer(tmp_path / "st", device="cpu", precision="32-true")  # the hash checked: it matches
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(after.p_real(images), before.p_real(images), atol=1e-7)
    assert after.scope_threshold == config["out_of_scope"]["threshold"] and after.out_of_scope(images).shape == (8,)
    with pytest.raises(ConfigError, match="nothing was chosen"):
        evaluate_job.run(compose_job("evaluate", tmp_path / "eval2", [
            f"ckpt_path={tmp_path / 'st'}", *data, f"paths.cache_dir={tmp_path / 'cache'}",
            "store=true", "report.figures=false"]))


@pytest.mark.parametrize(("setting", "named"), [("out_of_scope_fit.flagged=1.5", "share of validation images"),
                                                ("out_of_scope_fit.method=energy", "choose one of"),
                                                ("out_of_scope_fit.images=1", "at least a few hundred")])
def test_bad_fit_settings_are_config_errors_before_any_feature(tmp_path: Path, setting: str, named: str) -> None:
    from cifake.evaluation.settings import EvaluationSettings
    from tests.helpers.config import compose_config

    cfg = compose_config("evaluate", ["out_of_scope_fit.method=mahalanobis", setting])
    with pytest.raises(ConfigError, match=named):
        EvaluationSettings.from_config(cfg)  # refused where the settings are read, before a model or data is touched
