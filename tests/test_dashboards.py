"""What a run leaves for people to look at: TensorBoard tags, figures, predictions.csv."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.plugins.hparams import plugin_data_pb2

from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import train as train_job
from tests.helpers.config import compose_config, tiny_demo_data_overrides, tiny_demo_overrides
from tests.helpers.images import make_cifake_tree
from tests.helpers.outputs import PER_CLASS, read_events

FIGURES = ("roc.png", "pr.png", "confusion_matrix.png", "predictions.png", "gradcam.png")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """``train.py experiment=demo`` on a small generated set: two epochs, then evaluation."""
    tmp = tmp_path_factory.mktemp("demo")
    cfg = compose_config("train", [f"paths.output_dir={tmp / 'out'}", f"paths.cache_dir={tmp / 'cache'}",
                                   "experiment=demo", *tiny_demo_overrides(), "trainer.max_epochs=2"])
    train_job.run(cfg)
    return tmp / "out"


def test_demo_run_logs_every_dashboard_to_tensorboard(demo_run: Path) -> None:
    events = read_events(demo_run / "tensorboard")
    for stage in ("train", "val"):
        expected = {f"{stage}/{m}" for m in ("loss", "acc", "auroc", *PER_CLASS)}
        assert expected <= events["scalars"], expected - events["scalars"]
    assert "train_step/loss" in events["scalars"]  # per-step metrics would read the GPU every step
    assert not {t for t in events["scalars"] if t.startswith("train_step/") and t != "train_step/loss"}
    assert {"test/acc", "test/auroc", "test/precision_fake", "test/recall_real"} <= events["scalars"]
    for stage in ("val", "test"):
        assert {f"{stage}/{f}" for f in ("roc", "pr", "confusion_matrix", "predictions")} <= events["images"]
    assert {"val/gradcam/fixed", "val/gradcam/correct", "val/gradcam/wrong", "test/gradcam"} <= events["images"]
    assert {"val/pr_curve", "test/pr_curve"} <= events["tensors"]
    assert {"perf/curves_seconds", "perf/gradcam_seconds", "perf/prediction_grid_seconds"} <= events["scalars"]

    experiment = plugin_data_pb2.HParamsPluginData.FromString(events["hparams"]["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hp/val/acc", "hp/test/acc", "hp/test/auroc", "hp/best/val/acc"} <= metric_tags
    assert "hp_metric" not in metric_tags and "hp_metric" not in events["scalars"]
    params = {h.display_name or h.name for h in experiment.hparam_infos}
    assert {"model/optimizer/lr", "model/net/dropouts", "data/batch_size", "data/shear", "seed"} <= params


def test_evaluation_files_agree_with_each_other(demo_run: Path) -> None:
    for name in FIGURES:
        with Image.open(demo_run / name) as image:
            assert image.size[0] > 200 and image.size[1] > 200
    metrics = json.loads((demo_run / "metrics.json").read_text())
    with (demo_run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics["n"] == 48
    assert len({r["path"] for r in rows}) == len(rows) and all(Path(r["path"]).is_file() for r in rows)
    # The truth in the CSV is the folder each file lies in: rows cannot be misaligned.
    assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
    for r in rows:
        assert r["predicted"] == ("REAL" if float(r["p_real"]) > metrics["threshold"] else "FAKE")
    counts = Counter((r["label"], r["predicted"]) for r in rows)
    cm = [[counts[(t, p)] for p in ("FAKE", "REAL")] for t in ("FAKE", "REAL")]
    assert cm == metrics["confusion_matrix"]
    assert metrics["accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in rows) / len(rows))
    with Image.open(demo_run / "confusion_matrix.png") as image:
        assert json.loads(image.text["confusion_matrix"]) == cm


def test_evaluate_job_writes_the_report_and_its_own_dashboard(demo_run: Path, compose_cfg, tmp_path: Path) -> None:
    data = tiny_demo_data_overrides()
    cache = f"paths.cache_dir={demo_run.parent / 'cache'}"
    cfg = compose_cfg("evaluate", [*data, cache, f"ckpt_path={demo_run / 'checkpoints' / 'best.ckpt'}"])
    report = evaluate_job.run(cfg)
    out = Path(cfg.paths.output_dir)
    assert all((out / name).is_file() for name in (*FIGURES, "predictions.csv", "metrics.json"))
    assert report == json.loads((demo_run / "metrics.json").read_text())  # same checkpoint, same numbers
    events = read_events(out / "tensorboard")
    assert {f"test/{f}" for f in ("roc", "pr", "confusion_matrix", "predictions", "gradcam")} <= events["images"]
    assert "test/pr_curve" in events["tensors"] and "test/acc" in events["scalars"]
    assert "_hparams_/experiment" in events["hparams"]


def test_report_can_leave_figures_out(demo_run: Path, compose_cfg) -> None:
    data = tiny_demo_data_overrides()
    cfg = compose_cfg("evaluate", [*data, f"paths.cache_dir={demo_run.parent / 'cache'}", "report.figures=false",
                                   f"ckpt_path={demo_run / 'checkpoints' / 'best.ckpt'}"])
    evaluate_job.run(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "predictions.csv").is_file() and not list(out.glob("*.png"))


def test_evaluate_adds_calibration_robustness_and_a_validation_threshold(demo_run: Path, compose_cfg) -> None:
    data = tiny_demo_data_overrides()
    cfg = compose_cfg("evaluate", [*data, f"paths.cache_dir={demo_run.parent / 'cache'}", "robustness=true",
                                   "threshold_choice.method=f1",
                                   f"ckpt_path={demo_run / 'checkpoints' / 'best.ckpt'}"])
    report = evaluate_job.run(cfg)
    out = Path(cfg.paths.output_dir)
    assert 0.0 <= report["ece"] <= 1.0 and (out / "reliability.png").is_file()
    with (out / "robustness.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    strengths = cfg.report.robustness.perturbations
    assert rows[0]["perturbation"] == "none" and len(rows) == 1 + sum(len(v) for v in strengths.values())
    assert [r["perturbation"] for r in rows[1:]] == [k for k, v in strengths.items() for _ in v]
    assert float(rows[0]["accuracy"]) == pytest.approx(report["accuracy"])  # the baseline is the report
    assert (out / "robustness.md").is_file() and (out / "robustness.png").is_file()
    assert 0.0 <= report["threshold"] <= 1.0


def test_evaluate_can_leave_out_test_images_that_leak_from_train(demo_run: Path, compose_cfg, tmp_path: Path) -> None:
    import shutil

    root = make_cifake_tree(tmp_path / "leaky", n_per_class=6)
    shutil.copy(root / "train" / "FAKE" / "0 (FAKE).jpg", root / "test" / "FAKE" / "copied.jpg")
    cfg = compose_cfg("evaluate", [f"data.root={root}", "trainer.accelerator=cpu", "exclude_leaks=true",
                                   "report.figures=false", f"ckpt_path={demo_run / 'checkpoints' / 'best.ckpt'}"])
    report = evaluate_job.run(cfg)
    assert report["n"] == 13 and report["leak_free"]["n"] == 12 and report["leak_free"]["excluded"] == 1
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["leak_free"]["n"] == 12
