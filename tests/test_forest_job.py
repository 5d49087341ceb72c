"""``python train.py model=rf`` and ``python evaluate.py ckpt_path=<forest.skops>`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifake.core.errors import ConfigError
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import train as train_job
from tests.helpers.config import compose_config, tiny_demo_overrides
from tests.helpers.outputs import PER_CLASS, check_metrics_file, read_events

DATA = [o for o in tiny_demo_overrides() if not o.startswith("model.")]
FOREST = ["model=rf", "model.n_estimators=20", "model.n_jobs=1"]


@pytest.fixture(scope="module")
def forest_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("forest")
    cfg = compose_config("train", [f"paths.output_dir={tmp / 'out'}", f"paths.cache_dir={tmp / 'cache'}",
                                   *DATA, *FOREST, "model.features.name=rich", "evaluate=true"])
    return tmp / "out", train_job.run(cfg)


def test_forest_run_has_the_networks_dashboard_and_files(forest_run) -> None:
    out, metrics = forest_run
    assert (out / "checkpoints" / "forest.skops").is_file()
    for stage in ("train", "val"):
        assert 0.0 <= metrics[f"{stage}/acc"] <= 1.0 and f"{stage}/auroc" in metrics
    assert metrics["train/acc"] == 1.0  # a forest grown to purity memorises its training set
    check_metrics_file(out / "metrics.json", n=48)
    for name in ("roc.png", "pr.png", "confusion_matrix.png", "predictions.png", "predictions.csv",
                 "train_feature_correlation.png", "train_feature_distributions.png", "train_class_balance.png",
                 "train_feature_importances.png", "test_feature_correlation.png"):
        assert (out / name).is_file(), name
    assert not (out / "gradcam.png").exists()  # no layer to explain

    events = read_events(out / "tensorboard")
    names = ("loss", "acc", "auroc", *PER_CLASS)
    assert {f"{stage}/{m}" for stage in ("train", "val") for m in names} <= events["scalars"]
    assert {"test/acc", "test/auroc", "test/f1_fake"} <= events["scalars"]
    assert {"val/roc", "val/pr", "val/confusion_matrix", "val/predictions", "test/roc",
            "eda/train_feature_importances", "eda/train_class_balance"} <= events["images"]
    assert "test/pr_curve" in events["tensors"] and "_hparams_/experiment" in events["hparams"]


def test_evaluate_loads_the_saved_forest(forest_run, compose_cfg, tmp_path: Path) -> None:
    out, metrics = forest_run
    data = [o for o in DATA if o.startswith("data")]
    # The numbers are the point (the run's figures are checked above): no report figures.
    cfg = compose_cfg("evaluate", [*data, f"paths.cache_dir={out.parent / 'cache'}", "report.figures=false",
                                   f"ckpt_path={out / 'checkpoints' / 'forest.skops'}"])
    report = evaluate_job.run(cfg)
    assert report == check_metrics_file(Path(cfg.paths.output_dir) / "metrics.json", n=48)
    assert report == json.loads((out / "metrics.json").read_text()) == metrics["test"]


def test_invalid_forest_parameter_fails_before_any_feature_is_computed(tmp_path: Path, cli) -> None:
    cache = tmp_path / "cache"
    proc = cli("train.py", tmp_path, *DATA, *FOREST, "model.n_estimators=-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "n_estimators" in proc.stderr.split("error:")[-1]
    assert not list(cache.rglob("features-*.npy")) and not (cache / "decoded").exists()


@pytest.mark.parametrize(("override", "named"), [("+model.n_trees=5", "n_trees"),
                                                 ("model.features.name=fancy", "fancy"),
                                                 ("model.grid={max_depth:[0]}", "max_depth")])
def test_other_bad_forest_settings_are_config_errors(compose_cfg, tmp_path: Path, override, named) -> None:
    from cifake.core.errors import _cifake_cause

    cfg = compose_cfg("train", [*DATA, *FOREST, override])
    with pytest.raises(Exception) as raised:
        train_job.run(cfg)
    err = _cifake_cause(raised.value)
    assert isinstance(err, ConfigError) and named in str(err)
    assert not (tmp_path / "cache" / "decoded").exists()


def test_the_forest_names_the_augmentation_it_never_sees(tmp_path: Path) -> None:
    from cifake.data.datamodule import CIFAKEDataModule
    from cifake.models.forest.fit import unused_augmentation
    from tests.helpers.config import conf_args

    def unused(**data: object) -> list[str]:
        return unused_augmentation(CIFAKEDataModule(**conf_args("data", root=str(tmp_path), cache_dir=str(tmp_path),
                                                                **data)))

    assert unused() == ["data.shear=0.2"]  # the report's shear, on by default
    assert unused(shear=0, translate=4, hflip=0.5, crop=24) == ["data.translate=4", "data.hflip=0.5", "data.crop=24"]
    assert unused(shear=0, degrade={"blur": {"p": 0.2, "range": [0.2, 1.2]}}) == ["data.degrade"]
