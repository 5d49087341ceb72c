"""Sweeps, search, DDP, launchers and crash recovery, through train.py as users run it (a killed run's resumption
in process: its point is where training goes on from)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT
from tests.helpers.config import CONF_DIR, NO_FIGURES, compose_config, tiny_demo_overrides, tiny_train_overrides
from tests.helpers.runner import check, one_error_line, run_python

pytestmark = pytest.mark.slow

# Sweeps, search, launchers, resuming and DDP's numbers run without figures (NO_FIGURES: about 3.5 s an epoch
# and 4.5 s an evaluation each); the run as the README types it keeps them, as shipped.


def test_dropout_multirun_leaves_one_folder_per_job_and_a_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    check(run_python(str(ROOT / "train.py"), "-m", "experiment=demo", "model.net.dropouts=0.1,0.3,0.5",
                     *tiny_train_overrides(tmp_path), *NO_FIGURES, f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2"]
    for job in jobs:
        assert list((sweep / job / "tensorboard").glob("events.out.tfevents.*"))
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()
    with (sweep / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model.net.dropouts"] for r in rows] == ["0.1", "0.3", "0.5"]
    for row in rows:
        results = json.loads((sweep / row["job"] / "results.json").read_text())["metrics"]
        assert float(row["val/acc"]) == pytest.approx(results["val/acc"])
        assert float(row["test/acc"]) == pytest.approx(results["test/acc"])
        ckpt = torch.load(sweep / row["job"] / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["net"]["dropouts"] == float(row["model.net.dropouts"])
    summary = (sweep / "summary.md").read_text()
    assert summary.count("\n| ") == 4 and "model.net.dropouts" in summary  # header + 3 jobs


def epoch_curves(run: Path, *tags: str) -> dict[str, list[float]]:
    """Each tag's values in the order they were logged, from the run's first TensorBoard file (fit)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(sorted((run / "tensorboard").glob("events.out.tfevents.*"))[0]),
                          size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [e.value for e in ea.Scalars(tag)] for tag in tags}


# What the DDP comparison switches off, because it is not what is compared (batch-norm, its
# synchronisation and learning stay on):
SAME_STEPS = [
    "data.shear=0",               # a random angle per image, drawn on each rank: other images than one process sees
    "model.net.dropouts=0",       # random masks, drawn on each rank
    "trainer.precision=32-true",  # auto is bf16 on a bf16 CPU: products rounded to 8 bits
    # oneDNN's NHWC convolutions sum in an order that changes with the thread count, and Adam turns
    # the flipped sign of a near-zero gradient into a whole step: two one-process runs that differed
    # only in OMP_NUM_THREADS (1 or 2) ended their first epoch 1.4e-3 apart in NHWC, 1.4e-6 in NCHW.
    "model.channels_last=false",
]


def test_ddp_on_two_cpu_processes_trains_like_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """Two processes of 8 images take the same 10 Adam steps as one process of 16, batch-norm
    statistics synchronised over the 16 (trainer=ddp as shipped: sync_batchnorm=true).

    The same images in the same order: Lightning puts a DistributedSampler in front of the loader
    whenever the strategy is DDP, so the one-process run is trainer=ddp with trainer.devices=1.
    Both then visit randperm(72, seed + epoch) in global batches of 16; the two-process run gives
    each rank every other image of each global batch. The other run must differ by rounding only.
    """
    common = [*tiny_train_overrides(tmp_path), *SAME_STEPS, *NO_FIGURES, "trainer=ddp", "trainer.max_epochs=2"]
    check(run_python(str(ROOT / "train.py"), *common, "trainer.devices=1", "data.batch_size=16",
                     f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path))
    check(run_python(str(ROOT / "train.py"), *common, "trainer.devices=2", "data.batch_size=8",
                     f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    tags = ("train/loss", "train/acc", "train_step/loss")
    one, two = epoch_curves(tmp_path / "one", *tags), epoch_curves(tmp_path / "two", *tags)
    assert len(one["train_step/loss"]) == len(two["train_step/loss"]) == 10  # 72 training images / 16, twice
    # It learns: from chance (ln 2 = 0.693) to 0.64 and from half the images right to three quarters.
    for run in (one, two):
        assert len(run["train/loss"]) == 2 and run["train/loss"][1] < 0.67 and run["train/acc"][1] > 0.65
    # The epoch losses are means over all 72 images (synchronised over the ranks). Measured: they
    # differ by 4e-5; with each rank normalising by its own 8 images (trainer.sync_batchnorm=false)
    # by 8.8e-3 already in the first epoch. 1e-3 passes the one and refuses the other.
    for a, b in zip(one["train/loss"], two["train/loss"], strict=True):
        assert abs(a - b) <= 1e-3, (one["train/loss"], two["train/loss"])
    for a, b in zip(one["train/acc"], two["train/acc"], strict=True):
        assert abs(a - b) <= 1 / 72 + 1e-6  # at most one image on the other side of 0.5


def test_ddp_as_the_readme_types_it_runs_on_two_cpu_processes(tmp_path: Path) -> None:
    """python train.py experiment=demo trainer=ddp trainer.accelerator=cpu trainer.devices=2, at the
    tests' size and with everything else as shipped (bf16 where the CPU has it, shear, dropout)."""
    proc = run_python(str(ROOT / "train.py"), "experiment=demo", "trainer=ddp", "trainer.accelerator=cpu",
                      "trainer.devices=2", *tiny_train_overrides(tmp_path), f"hydra.run.dir={tmp_path / 'ddp'}",
                      cwd=tmp_path)
    check(proc)
    assert "batch-norm statistics are all-reduced over the global batch" in proc.stdout + proc.stderr
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())["metrics"]
    assert {"val/acc", "val/loss", "train/loss", "test/acc", "test/auroc"} <= set(results)
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["n"] == 48  # every test image once
    # Only rank zero writes: one run folder, and every TensorBoard file from one process.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["ddp"]
    writers = {p.name.split(".")[-2] for p in (tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1
    # The epoch line reads metrics that synchronise the processes: rank zero alone logs it.
    epoch_lines = [line for line in (tmp_path / "ddp" / "train.log").read_text().splitlines()
                   if "[cifake.callbacks.epoch_log]" in line]
    assert len(epoch_lines) == 1 and f"val/acc {results['val/acc']:.4f}" in epoch_lines[0]


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """Killed (SIGKILL) early in its second epoch of three, the run resumed with ckpt_path=last trains the
    rest, from where its last checkpoint stood."""
    from cifake.jobs import train as train_job
    from tests.helpers.hold import HoldAtSteps

    run_dir, epochs, steps_per_epoch = tmp_path / "run", 3, 5  # 72 training images / 16
    killed_step = steps_per_epoch + 2  # two batches into the second epoch
    overrides = [*tiny_train_overrides(tmp_path), f"trainer.max_epochs={epochs}", *NO_FIGURES]
    # The run holds after that step until it is killed: the kill lands mid-epoch at a known step, never while a
    # checkpoint is being written, however loaded the machine (the tiny data's epoch lasts well under a second).
    markers = tmp_path / "markers"
    markers.mkdir()
    hold = [f"+callbacks.hold._target_={HoldAtSteps.__module__}.HoldAtSteps", f"+callbacks.hold.steps=[{killed_step}]",
            f"+callbacks.hold.markers={markers}", "+callbacks.hold.wait=240"]
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, *hold, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (markers / str(killed_step)).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed_at = torch.load(last, weights_only=True)
    assert killed_at["epoch"] == 0 and killed_at["global_step"] == steps_per_epoch  # the first epoch's, whole

    # Resumed by train.py's job in this process: what is checked is where training went on from (the checkpoint,
    # the logged steps), and a process would add ~10 s of imports; the command line that resumes a run
    # (hydra.run.dir=<run> ckpt_path=last) is run as typed by test_preemption.py.
    before = set((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    train_job.run(compose_config("train", [*overrides, f"paths.output_dir={run_dir}", "ckpt_path=last"]))
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == epochs - 1 and final["global_step"] == epochs * steps_per_epoch
    resumed_events = sorted(set((run_dir / "tensorboard").glob("events.out.tfevents.*")) - before)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(resumed_events[0]), size_guidance={"scalars": 0})
    ea.Reload()
    steps = [e.step for e in ea.Scalars("train_step/loss")]
    assert min(steps) >= killed_at["global_step"] - 1  # continued, not restarted
    assert max(steps) == epochs * steps_per_epoch - 1


ONE_CYCLE = ["+model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:1.0e-3}",
             "model.scheduler_interval=step"]


def test_a_one_cycle_run_resumed_for_more_epochs_says_so_in_one_line(tmp_path: Path, cli) -> None:
    """A schedule laid out over the whole run (OneCycleLR) cannot be stretched: asked to go on for more epochs,
    the command says so in one line before training, instead of torch's ``Tried to step 11 times. The specified
    number of total steps is 10`` once the old length was spent."""
    from cifake.jobs import train as train_job

    run_dir = tmp_path / "run"
    overrides = [*tiny_train_overrides(tmp_path), *ONE_CYCLE, *NO_FIGURES, "evaluate=false"]
    train_job.run(compose_config("train", [*overrides, "trainer.max_epochs=2", f"paths.output_dir={run_dir}"]))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["lr_schedulers"][0]["total_steps"] == 10  # 72 images / 16, twice
    line = one_error_line(cli("train.py", tmp_path, *overrides, "trainer.max_epochs=4", "ckpt_path=last",
                              run_dir=run_dir),
                          f"ckpt_path={last}: its learning-rate schedule was laid out for 10 steps and this run "
                          "would take 20", f"init_from={last}")
    assert "Tried to step" not in line
    assert torch.load(last, weights_only=True)["global_step"] == 10  # nothing trained


def test_resuming_without_a_checkpoint_says_where_it_looked(tmp_path: Path, cli) -> None:
    proc = cli("train.py", tmp_path, *tiny_train_overrides(tmp_path), "ckpt_path=last", run_dir=tmp_path / "new")
    assert proc.returncode == 2 and "holds no last.ckpt" in proc.stderr and "hydra.run.dir" in proc.stderr


def test_local_submitit_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    check(run_python(str(ROOT / "train.py"), "-m", "hydra/launcher=local", "model.net.dropouts=0.2,0.4",
                     *tiny_train_overrides(tmp_path), *NO_FIGURES, f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    for job in ("0", "1"):
        assert (sweep / job / "results.json").is_file()
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 2


def test_slurm_launcher_config_composes(compose_cfg) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


def test_optuna_search_runs_trials_and_writes_the_best_parameters(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    # evaluate=false: the trials are chosen on validation (best/val/acc) and nothing here reads a test
    # evaluation; the dropout multirun above checks evaluated jobs' numbers in a sweep's summary.
    check(run_python(str(ROOT / "train.py"), "hparams_search=optuna", "experiment=demo", "evaluate=false",
                     *tiny_train_overrides(tmp_path), *NO_FIGURES, "hydra.sweeper.n_trials=3",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.net.dropouts", "model.optimizer.lr"}
    assert 0.0 <= best["best_params"]["model.net.dropouts"] <= 0.6
    assert 1e-5 <= best["best_params"]["model.optimizer.lr"] <= 3e-3
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 3 and max(float(r["best/val/acc"]) for r in rows) == pytest.approx(best["best_value"])


@pytest.mark.parametrize("debug", ["fast_dev_run", "overfit", "limit", "profiler"])
def test_debug_configs_compose(compose_cfg, debug: str) -> None:
    cfg = compose_cfg("train", [f"debug={debug}"])
    t = cfg.trainer
    assert {"fast_dev_run": t.fast_dev_run is True, "overfit": t.get("overfit_batches") == 4,
            "limit": t.limit_train_batches == 20, "profiler": "SimpleProfiler" in str(t.get("profiler"))}[debug]


def test_reference_experiment_is_the_reports_recipe(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=reference"])
    assert cfg.trainer.max_epochs == 350 and cfg.trainer.accelerator == "gpu"
    assert cfg.data.batch_size == 32 and cfg.data.shear == 0.2 and cfg.data.validate_on == "test"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 5e-4
    assert list(cfg.model.net.filters) == [64, 128, 256, 512] and list(cfg.model.net.convs) == [2, 2, 3, 3]
    assert list(cfg.model.net.dropouts) == [0.4, 0.4, 0.3, 0.2] and list(cfg.model.net.dense) == [4000, 1500]
    # float32 with TF32 matrix products and convolutions on CUDA, as the report trained; not bf16.
    assert cfg.trainer.precision == "32-true" and cfg.float32_matmul_precision == "high"
    best = compose_cfg("train", ["experiment=best"])
    assert best.trainer.precision == "auto" and best.float32_matmul_precision == "highest"  # bf16 where native
    assert cfg.scoring.precision == best.scoring.precision == "32-true"  # scored alike


def test_limit_debug_run_trains_end_to_end(compose_cfg) -> None:
    from cifake.jobs import train as train_job

    cfg = compose_cfg("train", [*tiny_demo_overrides(), "debug=limit", "callbacks.gradcam=null"])
    metrics = train_job.run(cfg)
    assert "val/acc" in metrics and (Path(cfg.paths.output_dir) / "results.json").is_file()
