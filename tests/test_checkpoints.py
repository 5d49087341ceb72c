"""cifake.core.checkpoints: checkpoints written whole whenever their writer dies, and a damaged one
refused before a run resumes from it."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from cifake.core.checkpoints import PARTIAL_PREFIX, WholeFileCheckpointIO, check_resumable, checkpoint_problem
from cifake.core.errors import ModelFileError
from cifake.training.fit import cluster_plugins
from cifake.training.trainer import build_trainer
from tests.helpers.config import tiny_demo_overrides
from tests.helpers.runner import one_error_line

# Big enough that writing it and flushing it to disk is most of each round of the writer's loop,
# so most kills land in the middle of a write.
PAYLOAD = torch.arange(1 << 21, dtype=torch.float32)  # 8 MiB


def whole_file_writer(path: Path, checkpoint: dict) -> None:
    WholeFileCheckpointIO().save_checkpoint(checkpoint, path)


def plain_writer(path: Path, checkpoint: dict) -> None:
    torch.save(checkpoint, path)  # straight into place: what the test must be able to catch


def _write_forever(write: Callable[[Path, dict], None], path: Path) -> None:
    # Runs in a forked child: no torch arithmetic here (its thread pool does not survive a fork).
    n = 0
    while True:
        n += 1
        write(path, {"n": n, "n_again": torch.tensor([n]), "payload": PAYLOAD})


def kill_while_writing(write: Callable[[Path, dict], None], path: Path, kills: int) -> list[str | None]:
    """Start a process that rewrites ``path`` with ``write`` in a loop and SIGKILL it at a random
    moment, ``kills`` times; after each kill, what :func:`checkpoint_problem` finds in ``path``
    (``None``: whole), and the whole ones are checked to load as written."""
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    found = []
    for _ in range(kills):
        writer = fork.Process(target=_write_forever, args=(write, path), daemon=True)
        writer.start()
        time.sleep(rng.uniform(0.2, 0.6))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        problem = checkpoint_problem(path)
        if problem is None:
            loaded = torch.load(path, weights_only=True)
            assert loaded["n_again"].item() == loaded["n"] and torch.equal(loaded["payload"], PAYLOAD)
        found.append(problem)
    return found


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the writer is a forked process")
def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    whole_file_writer(last, {"n": 0, "n_again": torch.tensor([0]), "payload": PAYLOAD})
    assert kill_while_writing(whole_file_writer, last, kills=6) == [None] * 6
    # The kills did land mid-write: each of those left its temporary file (never named last*, so
    # Lightning's ckpt_path="last" never picks one).
    assert list(last.parent.glob(f"{PARTIAL_PREFIX}*.partial"))
    assert {p.name for p in last.parent.iterdir() if p.name.startswith("last")} == {"last.ckpt"}
    assert oct(last.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as any file this user creates


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the writer is a forked process")
def test_the_kill_test_catches_a_writer_that_writes_in_place(tmp_path: Path) -> None:
    found = kill_while_writing(plain_writer, tmp_path / "last.ckpt", kills=4)
    assert any(problem is not None for problem in found), found


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_what_is_wrong_with_a_checkpoint_is_said(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    whole_file_writer(good, {"payload": PAYLOAD[:1000]})
    assert checkpoint_problem(good) is None
    data = good.read_bytes()
    cases = {"missing": (None, "is not a file"), "empty": (b"", "is empty (0 bytes)"),
             "truncated": (data[: len(data) // 2], "is truncated or not a checkpoint"),
             "pickle": (b"\x80\x04K\x01.", "is truncated or not a checkpoint"),
             "flipped": (_flip(data, len(data) // 2), "is damaged (its entry"),  # a byte of the payload
             "flipped-header": (_flip(data, 40), "is damaged")}  # a byte of the first entry's name
    for name, (content, words) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        if content is not None:
            path.write_bytes(content)
        problem = checkpoint_problem(path)
        assert problem is not None and words in problem, (name, problem)
    assert zipfile.is_zipfile(tmp_path / "flipped.ckpt")  # only the checksums tell this one


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_the_way_on_from_a_damaged_checkpoint_is_best_when_whole(tmp_path: Path) -> None:
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    last.write_bytes(b"")
    whole_file_writer(best, {"x": 1})
    with pytest.raises(ModelFileError, match=f"pass ckpt_path={best} instead"):
        check_resumable(last, "ckpt_path=last", "best.ckpt")
    best.write_bytes(b"PK")
    with pytest.raises(ModelFileError, match="no whole best checkpoint is beside it: leave ckpt_path out"):
        check_resumable(last, "ckpt_path=last", "best.ckpt")
    with pytest.raises(ModelFileError, match="no whole best checkpoint"):  # best itself damaged: no way via best
        check_resumable(best, "ckpt_path", "best.ckpt")


@pytest.mark.parametrize(("last_content", "best_content", "fragments"), [
    pytest.param("truncated", "whole", ("is truncated or not a checkpoint", "is whole: pass ckpt_path="),
                 id="truncated-with-best"),
    pytest.param("empty", None, ("is empty (0 bytes)", "leave ckpt_path out to start over"), id="empty-no-best"),
    pytest.param("not-zip", "truncated", ("not a complete zip archive", "no whole best checkpoint"),
                 id="not-zip-best-damaged"),
])
def test_a_damaged_last_checkpoint_is_refused_in_one_line(tmp_path: Path, last_content: str,
                                                          best_content: str | None, fragments: tuple[str, ...],
                                                          cli) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    whole_file_writer(folder / "whole.ckpt", {"payload": PAYLOAD[:1000]})
    data = (folder / "whole.ckpt").read_bytes()
    contents = {"whole": data, "truncated": data[: len(data) // 3], "empty": b"", "not-zip": b"{'epoch': 3}\n"}
    (folder / "last.ckpt").write_bytes(contents[last_content])
    if best_content is not None:
        (folder / "best.ckpt").write_bytes(contents[best_content])
    line = one_error_line(cli("train.py", tmp_path, *tiny_demo_overrides(), "ckpt_path=last"),
                          "ckpt_path=last:", str(folder / "last.ckpt"), "so training cannot resume from it", *fragments)
    if best_content == "whole":
        assert f"ckpt_path={folder / 'best.ckpt'}" in line
    assert not (tmp_path / "cache").exists()  # refused before any data was generated


def test_checkpoints_go_through_the_whole_file_writer_and_slurm_does_not_requeue_by_itself(
        compose_cfg, monkeypatch) -> None:
    cfg = compose_cfg("train", tiny_demo_overrides())
    trainer = build_trainer(cfg, plugins=cluster_plugins(cfg))
    assert isinstance(trainer.strategy.checkpoint_io, WholeFileCheckpointIO)
    assert not isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(key, value)
    environment = build_trainer(cfg, plugins=cluster_plugins(cfg))._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    cfg.callbacks.preemption = None  # without ours, Lightning's own SLURM handling stays
    environment = build_trainer(cfg, plugins=cluster_plugins(cfg))._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is True
