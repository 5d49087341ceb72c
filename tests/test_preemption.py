"""callbacks.preemption: a run stopped mid-epoch by SIGTERM or SIGUSR1 saves where it stands, says in
one line how to resume it, exits as the signal would (143, 138), and the command it prints continues it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cifake.callbacks.preemption import Preemption, Stop, last_checkpoint, parse_signals
from cifake.core.errors import ConfigError
from cifake.jobs import train as train_job
from cifake.training.fit import stopped_line
from cifake.training.provenance import run_overrides
from tests.helpers import ROOT
from tests.helpers.config import compose_config, tiny_train_overrides
from tests.helpers.hold import HoldAtSteps
from tests.helpers.runner import check

STEPS_PER_EPOCH = 15  # 240 training images (320 less a quarter held out) in batches of 16
EPOCHS = 2
SIGTERM_AT, SIGUSR1_AT = 20, 25  # global steps, both in the second epoch
# What the stopped and resumed run's validation loss may differ from the unstopped one's by, at the
# end. Not bit-identical: the stop's checkpoint is (weights, optimizer moments, loop counters: checked
# exactly below), but Lightning does not restore the RNG (shear, dropout) nor the loader's place in
# its shuffled order, so the rest of a stopped epoch draws a fresh permutation: its last batches are
# other images, some seen twice in the epoch, some not at all. Here that moves the loss by about
# 0.002; in trial runs of 3 seeds (3 epochs of 15 steps, stopped at step 35) by 0.004 to 0.094. The
# loss says little at this size: that the run went on from the very point where it stopped is what
# the checks of the saved state and of the logged steps pin.
VAL_LOSS_TOLERANCE = 0.15


def settings(tmp_path: Path) -> list[str]:
    return [*tiny_train_overrides(tmp_path), "data.demo.train_per_class=160", f"trainer.max_epochs={EPOCHS}", "seed=0",
            "model.optimizer.lr=2e-3", "callbacks.gradcam=null", "callbacks.curves=null",
            "callbacks.prediction_grid=null"]


def stop_at(command: list[str], markers: Path, step: int, sig: signal.Signals, cwd: Path) -> tuple[int, str]:
    """Run ``command``, send ``sig`` once it holds at ``step``, and return its exit status and output."""
    with (cwd / "output.txt").open("w+") as output:
        proc = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 240
            while not (markers / str(step)).exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, f"the run ended before it reached step {step}"
            os.kill(proc.pid, sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output.seek(0)
        return proc.returncode, output.read()


def the_line(output: str, run_dir: Path, name: str) -> list[str]:
    """The one line the stop logged (on the console and in train.log), and the command it gives."""
    lines = [line for line in output.splitlines() if f"Stopped by {name}" in line]
    logged = [line for line in (run_dir / "train.log").read_text().splitlines() if f"Stopped by {name}" in line]
    assert len(lines) == 1 and len(logged) == 1, output[-3000:]
    assert f"; saved {run_dir / 'checkpoints' / 'last.ckpt'}. Resume run {run_dir} with: " in lines[0]
    return shlex.split(lines[0].split(" with: ", 1)[1])


def trained_steps(events: Path) -> list[int]:
    """The global steps of the training losses logged in the TensorBoard file ``events``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(events), size_guidance={"scalars": 0})
    ea.Reload()
    return [e.step for e in ea.Scalars("train_step/loss")]


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_by_sigterm_then_sigusr1_ends_where_an_unstopped_one_does(tmp_path: Path) -> None:
    # The unstopped run, which also keeps its state at step SIGTERM_AT to compare the stop's checkpoint with. In this
    # process: only its files are compared (the signals, exits and printed commands are the stopped runs', below),
    # and a process of its own would add ~10 s of imports. Same settings, same seed, same thread count (inherited
    # OMP_NUM_THREADS), so the same steps to the bit.
    full = tmp_path / "full"
    train_job.run(compose_config("train", [
        *settings(tmp_path), f"paths.output_dir={full}",
        f"+callbacks.snapshot={{_target_:{ModelCheckpoint.__module__}.ModelCheckpoint,"
        f"dirpath:{full / 'snap'},every_n_train_steps:{SIGTERM_AT},save_top_k:-1,filename:'step{{step}}',"
        "auto_insert_metric_name:false}"]))

    run_dir, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    hold = [f"+callbacks.hold._target_={HoldAtSteps.__module__}.HoldAtSteps",
            f"+callbacks.hold.steps=[{SIGTERM_AT},{SIGUSR1_AT}]", f"+callbacks.hold.markers={markers}",
            "+callbacks.hold.wait=120"]
    code, output = stop_at([sys.executable, str(ROOT / "train.py"), *settings(tmp_path), *hold,
                            f"hydra.run.dir={run_dir}"], markers, SIGTERM_AT, signal.SIGTERM, tmp_path)
    assert code == 143, output[-3000:]
    command = the_line(output, run_dir, "SIGTERM")
    assert command[:2] == ["python", str(ROOT / "train.py")]
    assert command[-2:] == [f"hydra.run.dir={run_dir}", "ckpt_path=last"] and "ckpt_path=last" not in command[:-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped = torch.load(last, weights_only=True)
    progress = stopped["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert stopped["global_step"] == SIGTERM_AT and progress["completed"] == SIGTERM_AT % STEPS_PER_EPOCH != 0
    # Exactly where the unstopped run stood at that step: same weights, same optimizer moments.
    snapshot = torch.load(full / "snap" / f"step{SIGTERM_AT}.ckpt", weights_only=True)
    assert stopped["state_dict"].keys() == snapshot["state_dict"].keys()
    assert all(torch.equal(stopped["state_dict"][k], v) for k, v in snapshot["state_dict"].items())
    for mine, theirs in zip(stopped["optimizer_states"][0]["state"].values(),
                            snapshot["optimizer_states"][0]["state"].values(), strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)

    # The printed command resumes it; SIGUSR1 (SLURM's warning before the time limit) stops it again.
    first_events = set((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    code, output = stop_at([sys.executable, *command[1:]], markers, SIGUSR1_AT, signal.SIGUSR1, tmp_path)
    assert code == 138, output[-3000:]
    assert "Restored all states from the checkpoint" in output
    assert the_line(output, run_dir, "SIGUSR1") == command  # the same command resumes it again
    assert torch.load(last, weights_only=True)["global_step"] == SIGUSR1_AT
    (second_events,) = set((run_dir / "tensorboard").glob("events.out.tfevents.*")) - first_events
    assert trained_steps(second_events) == list(range(SIGTERM_AT, SIGUSR1_AT))  # on from step 20

    third = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    check(third)
    third_events = sorted(set((run_dir / "tensorboard").glob("events.out.tfevents.*")) - first_events
                          - {second_events})[0]  # the fit's (the hyper-parameters table comes after it)
    assert trained_steps(third_events) == list(range(SIGUSR1_AT, EPOCHS * STEPS_PER_EPOCH))

    ended, unstopped = torch.load(last, weights_only=True), torch.load(full / "checkpoints" / "last.ckpt",
                                                                       weights_only=True)
    assert ended["global_step"] == unstopped["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert ended["epoch"] == unstopped["epoch"] == EPOCHS - 1
    resumed_metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    full_metrics = json.loads((full / "results.json").read_text())["metrics"]
    assert resumed_metrics["val/loss"] == pytest.approx(full_metrics["val/loss"], abs=VAL_LOSS_TOLERANCE)


def test_unknown_signal_names_are_refused() -> None:
    assert parse_signals(["SIGUSR1", "SIGTERM"]) == [signal.SIGUSR1, signal.SIGTERM]
    with pytest.raises(ConfigError, match=r"\['SIGUSR3'\] are not signals here"):
        Preemption(signals=["SIGUSR3"])


def test_without_a_last_checkpoint_there_is_nowhere_to_stop_to(tmp_path: Path) -> None:
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/acc")])
    with pytest.raises(ConfigError, match="keep callbacks.last_checkpoint, or pass callbacks.preemption=null"):
        last_checkpoint(trainer)
    kept = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                     callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)])
    assert last_checkpoint(kept) == tmp_path / "last.ckpt"


def test_the_resume_command_keeps_the_overrides_but_where_it_resumes_from(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- experiment=demo\n- model.net.filters=[8,16]\n- ckpt_path=/old/last.ckpt\n"
        "- +trainer.max_time='00:01:00:00'\n")
    assert run_overrides(tmp_path) == ["experiment=demo", "model.net.filters=[8,16]", "+trainer.max_time='00:01:00:00'"]
    stop = Stop(signal.SIGTERM, tmp_path / "last.ckpt", epochs_done=2, in_epoch=True, batch=7, batches=15, step=37)
    line = stopped_line(stop, tmp_path)
    assert line.startswith(f"Stopped by SIGTERM at epoch 3, after batch 7 of 15 (global step 37); saved "
                           f"{tmp_path / 'last.ckpt'}. Resume run {tmp_path} with: cifake-train experiment=demo ")
    assert shlex.split(line.split(" with: ")[1])[1:] == [*run_overrides(tmp_path), f"hydra.run.dir={tmp_path}",
                                                         "ckpt_path=last"]
    at_the_end = Stop(signal.SIGUSR1, None, epochs_done=2, in_epoch=False, batch=15, batches=15, step=30)
    assert "nothing to resume, start it again with: cifake-train experiment=demo" in stopped_line(at_the_end, tmp_path)
