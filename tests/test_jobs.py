"""train.py and evaluate.py end to end on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifake.core.errors import ConfigError
from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import train as train_job
from cifake.models.classifier import Classifier
from cifake.models.precision import cpu_has_fast_bf16
from tests.helpers import ROOT
from tests.helpers.config import NO_FIGURES, compose_job, tiny_demo_data_overrides, tiny_demo_overrides
from tests.helpers.outputs import check_metrics_file
from tests.helpers.runner import run_python


def test_default_command_line_is_valid_as_written(compose_cfg) -> None:
    cfg = compose_cfg("train", ["model=vgg", "trainer.max_epochs=350"])
    assert cfg.trainer.max_epochs == 350 and cfg.trainer.accelerator == "auto"
    assert cfg.data.batch_size == 32 and cfg.data.shear == 0.2 and cfg.model.optimizer.lr == 5e-4
    assert cfg.data._target_.endswith("CIFAKEDataModule")


# The tiny run of :func:`tiny_run`: one epoch, evaluated, seeded; no figures (~3.5 s an epoch and ~4.5 s an evaluation
# here), which test_dashboards.py and test_plots.py check.
TINY_RUN = [*tiny_demo_overrides(), "trainer.max_epochs=1", "seed=0", "evaluate=true", *NO_FIGURES]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny run of train.py's job (:data:`TINY_RUN`), shared by the tests that read it, resume it, evaluate its
    checkpoint or train it again: its folder, cache and what the job returned."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    out, cache = tmp / "out", tmp / "cache"
    result = train_job.run(compose_job("train", out, [*TINY_RUN, f"paths.cache_dir={cache}"]))
    return {"out": out, "cache": cache, "result": result}


def test_fit_writes_checkpoints_logs_and_metrics_then_resumes(tiny_run, compose_cfg, tmp_path, monkeypatch) -> None:
    out, result = tiny_run["out"], tiny_run["result"]
    ckpts = out / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    check_metrics_file(out / "metrics.json", n=48)
    assert result["test"]["n"] == 48 and "val/acc" in result
    results = json.loads((out / "results.json").read_text())
    assert results["computed"]["test"] == {"precision": "32-true", "device": "cpu"}
    trained_in = "bf16-mixed" if cpu_has_fast_bf16() else "32-true"  # trainer.precision=auto
    training = results["computed"]["training"]
    assert {k: training[k] for k in ("precision", "device", "devices", "float32_matmul_precision")} == {
        "precision": trained_in, "device": "cpu", "devices": 1, "float32_matmul_precision": "highest"}
    assert training["images_seen"] == 72 and training["seconds"] > 0  # 72 training images, one epoch
    assert set(results["run"]) == {"commit", "machine", "train_time"} and "cores" in results["run"]["machine"]

    raw = torch.load(ckpts / "last.ckpt", weights_only=True)  # loads without running code
    assert type(raw["hyper_parameters"]["net"]) is dict and raw["epoch"] == 0
    steps_per_epoch = raw["global_step"]
    assert steps_per_epoch == 5  # 72 training images (96 minus a quarter held out) / 16

    calls = []
    original = Classifier.training_step
    monkeypatch.setattr(Classifier, "training_step",
                        lambda self, *a: (calls.append(1), original(self, *a))[1])
    resumed = compose_cfg("train", [*TINY_RUN, "trainer.max_epochs=2", f"ckpt_path={ckpts / 'last.ckpt'}",
                                    f"paths.output_dir={tmp_path / 'resumed'}", "evaluate=false"])
    train_job.run(resumed)
    assert len(calls) == steps_per_epoch  # only the second epoch ran
    again = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["epoch"] == 1 and again["global_step"] == 2 * steps_per_epoch


def test_evaluate_job_writes_metrics_json(tiny_run, compose_cfg, tmp_path) -> None:
    ckpt = tiny_run["out"] / "checkpoints" / "best.ckpt"
    # metrics.json is the point: no report figures; the demo data the run decoded
    data = [*tiny_demo_data_overrides(),
            f"paths.cache_dir={tiny_run['cache']}", "report.figures=false"]
    ev = compose_cfg("evaluate", [*data, f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'ev'}"])
    report = evaluate_job.run(ev)
    assert report == check_metrics_file(tmp_path / "ev" / "metrics.json", n=48)

    # trainer.limit_predict_batches caps what is scored, as Lightning reads it: 3 batches of 16 here.
    for limit, n in (("2", 32), ("0.5", 16)):
        out = tmp_path / f"limit-{limit}"
        quick = compose_cfg("evaluate", [*data, f"ckpt_path={ckpt}", f"paths.output_dir={out}",
                                         "data.eval_batch_size=16", f"trainer.limit_predict_batches={limit}"])
        limited = evaluate_job.run(quick)
        assert limited == check_metrics_file(out / "metrics.json", n=n)
        assert min(map(sum, limited["confusion_matrix"])) > 0  # the shuffled order keeps both classes
    with pytest.raises(ConfigError, match="limit_predict_batches"):
        evaluate_job.run(compose_cfg("evaluate", [*data, f"ckpt_path={ckpt}", "trainer.limit_predict_batches=0"]))


def test_same_seed_gives_the_same_run(tiny_run, tmp_path) -> None:
    # The shared run (seed=0) and a second one of the same config, later in the same process.
    again = train_job.run(compose_job("train", tmp_path / "again", [*TINY_RUN, f"paths.cache_dir={tiny_run['cache']}"]))
    assert again["val/loss"] == tiny_run["result"]["val/loss"]


def test_missing_data_root_tells_how_to_get_cifake(tmp_path, cli) -> None:
    proc = cli("train.py", tmp_path, f"data.root={tmp_path / 'nowhere'}")
    assert proc.returncode == 2
    assert "birdy654/cifake-real-and-ai-generated-synthetic-images" in proc.stderr
    assert "experiment=demo" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path, cli) -> None:
    proc = cli("evaluate.py", tmp_path, f"ckpt_path={tmp_path / 'none.ckpt'}")
    assert proc.returncode == 2 and "is not a file" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_without_a_checkpoint_takes_the_bundled_model_and_says_so(tmp_path, cli) -> None:
    proc = cli("evaluate.py", tmp_path, f"data.root={tmp_path / 'none'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "No ckpt_path: using the bundled model" in proc.stdout + proc.stderr
    assert f"error: data.root '{tmp_path / 'none'}' does not exist" in proc.stderr  # the model is there; no data


def test_errors_raised_while_building_from_config_are_reported_plainly(tmp_path, cli) -> None:
    proc = cli("train.py", tmp_path, "data=demo", "data.validate_on=everything")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: data.validate_on='everything'; choose one of ['holdout', 'test']" in proc.stderr


def test_config_typos_are_rejected_by_name(tmp_path) -> None:
    proc = run_python(str(ROOT / "train.py"), "model.net.dropuots=[0.1]", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0 and "dropuots" in proc.stderr


@pytest.mark.parametrize(("override", "named"), [
    ("data.batch_size=abc", "data.batch_size"),
    ("data.shear=steep", "data.shear"),
    ("model.net.filters=[a,b]", "filters"),
    ("data.demo.sed=1", "sed"),
])
def test_wrong_types_and_keys_are_refused_when_composing(compose_cfg, override, named) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("train", ["data=demo", override])
    assert named in str(err.value) + str(err.value.__cause__)


def test_a_time_budget_that_cuts_the_epochs_says_so(compose_cfg, caplog, tmp_path) -> None:
    cfg = compose_cfg("train", [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=50",
                                "+trainer.max_time='00:00:00:01'"])
    with caplog.at_level("WARNING"):
        train_job.run(cfg)
    warned = [r.getMessage() for r in caplog.records if "trainer.max_time stopped training" in r.getMessage()]
    assert len(warned) == 1 and "of 50 epochs" in warned[0] and "trainer.max_time=null" in warned[0]

    caplog.clear()
    with caplog.at_level("WARNING"):
        train_job.run(compose_cfg("train", [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=1",
                                            "+trainer.max_time='00:01:00:00'",
                                            f"paths.output_dir={tmp_path / 'uncut'}"]))
    assert not [r for r in caplog.records if "trainer.max_time" in r.getMessage()]


def test_each_epoch_logs_one_line_with_its_time_and_metrics(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = run_python(str(ROOT / "train.py"), *tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=2",
                      f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log_lines = (run_dir / "train.log").read_text().splitlines()
    lines = [line for line in log_lines if "[cifake.callbacks.epoch_log]" in line]
    assert [line.split(" - ", 1)[1].split(" in ", 1)[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "to go" in lines[0] and "to go" not in lines[1]
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    for name in ("train/loss", "val/loss", "val/acc"):
        assert f"{name} {results[name]:.4f}" in lines[1]


def test_epoch_line_says_time_to_go_and_skips_what_was_not_logged() -> None:
    from cifake.callbacks import EpochSummary

    summary = EpochSummary(metrics=["train/loss", "val/acc", "val/auroc"])
    line = summary.line(2, 10, 61.0, 120.0, 2, {"train/loss": torch.tensor(0.25), "val/acc": 0.9})
    assert line == "epoch 2/10 in 1 min 01 s (2 min 00 s so far, ~8 min 00 s to go): train/loss 0.2500, val/acc 0.9000"
    assert summary.line(3, -1, 5.0, 4000.0, 3, {}) == "epoch 3/? in 5 s (1 h 06 min so far)"


def test_results_name_the_commit_the_run_started_with(compose_cfg, monkeypatch) -> None:
    # A run spans hours; the checkout may move on meanwhile. The commit is read before training starts.
    events, fit = [], train_job.fit_network
    monkeypatch.setattr(train_job, "source_commit", lambda: (events.append("commit"), "abc123 (as started)")[1])
    monkeypatch.setattr(train_job, "fit_network", lambda *a, **k: (events.append("fit"), fit(*a, **k))[1])
    cfg = compose_cfg("train", [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=1", "evaluate=false"])
    train_job.run(cfg)
    assert events == ["commit", "fit"]
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["run"]["commit"] == "abc123 (as started)"


def test_the_commit_of_this_checkout_is_its_head() -> None:
    import subprocess

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout: source_commit gives the package version there")
    assert train_job.source_commit() in (head, f"{head} + changes")
