"""evaluate.py scored_split=validation: the validation split scored with the test split's report, TTA
included, so that recipe choices have a command for each validation figure (docs/recipe-log.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifake.core.errors import ConfigError
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import train as train_job
from tests.helpers.config import compose_config, compose_job, tiny_demo_data_overrides, tiny_demo_overrides
from tests.helpers.models import make_checkpoint
from tests.helpers.outputs import read_csv

DATA = tiny_demo_data_overrides()
# tiny_demo_overrides: 48 training images per class, a quarter of them held out for validation; 24 test per class.
VALIDATION_IMAGES, TEST_IMAGES = 24, 48


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("workflow") / "tiny.ckpt")


def evaluate(ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_job("evaluate", out, [*DATA, f"ckpt_path={ckpt}", f"paths.cache_dir={ckpt.parent / 'cache'}",
                                        "report.figures=false", *overrides])
    return evaluate_job.run(cfg)


def test_validation_is_scored_with_its_own_images_and_named_in_the_report(ckpt: Path, tmp_path: Path) -> None:
    test = evaluate(ckpt, tmp_path / "test", "tta.mode=flip")
    val = evaluate(ckpt, tmp_path / "val", "scored_split=validation", "tta.mode=flip")
    assert (test["split"], test["n"]) == ("test", TEST_IMAGES)
    assert (val["split"], val["n"]) == ("validation", VALIDATION_IMAGES)
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["split"] == "validation"
    assert val["tta"]["mode"] == "flip"
    # The validation images are held out of the training folder, never the test folder's.
    files = [Path(row["path"]) for row in read_csv(tmp_path / "val" / "predictions.csv")]
    assert len(files) == VALIDATION_IMAGES and all(f.parent.parent.name == "train" for f in files), files[:3]
    tested = {Path(row["path"]).parent.parent.name for row in read_csv(tmp_path / "test" / "predictions.csv")}
    assert tested == {"test"}


def test_a_validation_score_without_test_images_refuses_to_leave_out_leaks(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exclude_leaks=true"):
        evaluate(ckpt, tmp_path / "val", "scored_split=validation", "exclude_leaks=true")
    with pytest.raises(ConfigError, match=r"scored_split='train'; choose one of \['test', 'validation'\]"):
        evaluate(ckpt, tmp_path / "val", "scored_split=train")


def test_train_refuses_to_report_validation_as_its_test_before_training(tmp_path: Path) -> None:
    cfg = compose_config("train", [*tiny_demo_overrides(), "scored_split=validation",
                                   f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="scored_split=validation is for evaluate.py"):
        train_job.run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
