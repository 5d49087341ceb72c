"""Caches, extractions and feature files on a disk too small for them: one error line saying how
much is needed, how much is free and which folder to move; no partial file left behind; the next
run on a larger folder succeeds. A disk that fills while a checkpoint, TensorBoard's events or the
predictions are written: one error line, and the files there load. On a real small file system (a
tmpfs, when the tests run as root and may mount one) and, everywhere, with the free-space probe patched."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cifake.core import atomic
from cifake.core.errors import DiskSpaceError
from cifake.data.archive import extract_archive
from cifake.data.cache import load_or_decode
from cifake.data.scan import scan_split
from tests.helpers import ROOT
from tests.helpers.config import NO_FIGURES, tiny_demo_overrides
from tests.helpers.images import make_cifake_tree
from tests.helpers.runner import one_error_line, script_env
from tests.tmpfs import mounted

CLASSES = ("FAKE", "REAL")
SIZES = r"needs [\d.]+ (bytes|KiB|MiB|GiB), the disk there has [\d.]+ (bytes|KiB|MiB|GiB|TiB) free"


def leftovers(folder: Path) -> list[Path]:
    """Files under ``folder`` that a later run could take for part of a cache (lock files are empty
    and hold nothing)."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".use"))]


def patch_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: free)


def test_the_message_names_what_the_folder_and_both_sizes(tmp_path, monkeypatch) -> None:
    patch_free(monkeypatch, 10 * 2**20)
    with pytest.raises(DiskSpaceError) as err:
        atomic.check_space(tmp_path / "cache", 369 * 2**20, "the decoded train cache")
    message = str(err.value)
    assert "the decoded train cache" in message and str(tmp_path / "cache") in message
    assert "it needs 369.0 MiB, the disk there has 10.0 MiB free" in message
    assert "paths.cache_dir" in message and "CIFAKE_CACHE_DIR" in message
    atomic.check_space(tmp_path, 10 * 2**20, "fits")  # as much as is free: no error


def test_sizes_count_whole_blocks(tmp_path) -> None:
    block = atomic.block_size(tmp_path)
    assert atomic.bytes_on_disk([1, block, block + 1], tmp_path) == 4 * block + atomic.SPACE_HEADROOM


def test_decoding_without_room_stops_before_writing_then_a_larger_folder_works(cifake_tree, tmp_path,
                                                                                monkeypatch) -> None:
    listing = scan_split(cifake_tree, "train", CLASSES)
    patch_free(monkeypatch, 64 * 1024)
    with pytest.raises(DiskSpaceError, match=SIZES) as err:
        load_or_decode(listing, tmp_path / "small", 32, workers=1)
    assert str(tmp_path / "small" / "decoded") in str(err.value)
    assert leftovers(tmp_path / "small") == []
    monkeypatch.undo()
    assert len(load_or_decode(listing, tmp_path / "large", 32, workers=1)) == 12


def test_a_full_disk_while_reserving_is_the_same_message(cifake_tree, tmp_path, monkeypatch) -> None:
    """The free-space probe can be wrong (a quota, another writer): the reservation still catches it."""
    with mounted(tmp_path / "tiny", "size=16k") as tiny:
        patch_free(monkeypatch, 1 << 40)  # the probe claims a terabyte
        with pytest.raises(DiskSpaceError, match=SIZES):
            load_or_decode(scan_split(cifake_tree, "train", CLASSES), tiny, 32, workers=1)
        assert leftovers(tiny) == []


def _tar(tmp_path: Path) -> Path:
    src = make_cifake_tree(tmp_path / "src", n_per_class=3)
    path = tmp_path / "cifake.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(src, arcname="cifake")
    return path


def test_an_archive_is_not_extracted_without_room_for_its_listed_sizes(tmp_path, monkeypatch) -> None:
    archive = _tar(tmp_path)
    patch_free(monkeypatch, 8 * 1024)
    with pytest.raises(DiskSpaceError, match=SIZES) as err:
        extract_archive(archive, tmp_path / "cache")
    assert "the extraction of cifake.tar" in str(err.value) and str(tmp_path / "cache" / "extracted") in str(err.value)
    assert leftovers(tmp_path / "cache") == []
    monkeypatch.undo()
    assert len(list(extract_archive(archive, tmp_path / "cache").rglob("*.jpg"))) == 12


def test_an_archive_needing_more_files_than_the_disk_has_inodes_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(atomic, "free_files", lambda folder: 5)
    with pytest.raises(DiskSpaceError, match="files, the file system there has room for 5 more"):
        extract_archive(_tar(tmp_path), tmp_path / "cache")


def test_a_full_disk_during_extraction_leaves_no_partial_folder(tmp_path, monkeypatch) -> None:
    archive = _tar(tmp_path)
    with mounted(tmp_path / "tiny", "size=16k") as tiny:  # 12 files of a 4 KiB page each
        patch_free(monkeypatch, 1 << 40)  # passes the check; the disk fills while writing
        with pytest.raises(DiskSpaceError, match=SIZES):
            extract_archive(archive, tiny)
        assert leftovers(tiny) == []


def test_feature_and_hash_files_are_not_written_without_room(cifake_tree, tmp_path, monkeypatch) -> None:
    from cifake.audit.hashes import split_hashes
    from cifake.models.forest.features import cached_features

    split = load_or_decode(scan_split(cifake_tree, "train", CLASSES), tmp_path / "c", 32, workers=1)
    before = sorted(p.name for p in split.cache_dir.iterdir())
    patch_free(monkeypatch, 1024)
    with pytest.raises(DiskSpaceError, match="the 'report' features of"):
        cached_features(split, "report")
    with pytest.raises(DiskSpaceError, match="the hashes of"):
        split_hashes(split)
    assert sorted(p.name for p in split.cache_dir.iterdir()) == before  # no partial file
    monkeypatch.undo()
    assert cached_features(split, "report").shape == (12, 8) and split_hashes(split).phash.shape == (12,)


def test_the_entry_point_reports_no_room_as_one_line(compose_cfg, tmp_path, monkeypatch, capsys) -> None:
    from cifake.core.errors import friendly_errors
    from cifake.jobs import train as train_job

    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=1", f"data.root={tmp_path / 'demo'}"])
    patch_free(monkeypatch, 100 * 1024)
    with pytest.raises(SystemExit) as ended:
        friendly_errors(train_job.run)(cfg)
    assert ended.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(SIZES, errors[0]) and str(tmp_path / "cache") in errors[0]


def _overrides(tmp_path: Path, cache: Path) -> list[str]:
    """One epoch on the tiny demo data: the demo images in a large folder, only the decoded cache in ``cache``.
    NO_FIGURES: the decoded cache is what fills the disk; the figures cost ~3.5 s a run."""
    return [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=1", f"data.root={tmp_path / 'demo'}",
            f"paths.cache_dir={cache}"]


def _train(tmp_path: Path, cache: Path, run: str) -> subprocess.CompletedProcess:
    """train.py as a user runs it, with :func:`_overrides`."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *_overrides(tmp_path, cache),
                           f"hydra.run.dir={tmp_path / run}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_train_on_a_too_small_cache_disk_says_so_then_runs_on_a_larger_one(tmp_path) -> None:
    with mounted(tmp_path / "small", "size=256k") as small:  # the train split decodes to 288 KiB
        proc = _train(tmp_path, small / "cache", "first")
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr[-3000:]
        assert str(small / "cache" / "decoded") in errors[0] and re.search(SIZES, errors[0]), errors[0]
        assert "paths.cache_dir" in errors[0]
        assert leftovers(small) == []
    # The larger folder in this process: that run's point is the cache it decodes and that it trains (the
    # console's one line was the first run's), and a process of its own would add ~10 s of imports.
    from cifake.jobs import train as train_job
    from tests.helpers.config import compose_config

    train_job.run(compose_config("train", [*_overrides(tmp_path, tmp_path / "large"),
                                           f"paths.output_dir={tmp_path / 'second'}"]))
    assert (tmp_path / "second" / "checkpoints" / "best.ckpt").is_file()
    assert np.load(next((tmp_path / "large" / "decoded").glob("*-train-*/images.npy"))).shape == (96, 3, 32, 32)


# -- a disk that fills at each place a run writes, through the entry points ------------------------------------------

def _train_with_a_small(tmp_path: Path, folder: str, size: str, *overrides: str) -> subprocess.CompletedProcess:
    """train.py on the tiny demo data, with ``<run folder>/<folder>`` a tmpfs of ``size``: the rest of the run
    folder (Hydra's files, the log) and the cache have room, that one place does not."""
    run = tmp_path / "run"
    with mounted(run / folder, f"size={size}"):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny_demo_overrides(), *overrides,
                               f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=400, env=script_env())
        # What the full disk left, read before the tmpfs goes: whole files only.
        files = {p.name: p.read_bytes() for p in (run / folder).iterdir() if p.is_file()}
    for name, data in files.items():
        (tmp_path / "left" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "left" / name).write_bytes(data)
    return proc


@pytest.mark.slow
def test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line_and_the_checkpoints_load(tmp_path) -> None:
    import torch

    from cifake.core.checkpoints import checkpoint_problem

    # best.ckpt and last.ckpt of this net take ~290 KiB each: epoch 1's fit in 700 KiB, a third file (epoch 2's,
    # written beside the one it replaces) does not. torch's writer fails with its own error while handling ENOSPC.
    # NO_FIGURES: the checkpoints fill this disk, not the figures (~3.5 s an epoch).
    proc = _train_with_a_small(tmp_path, "checkpoints", "700k", "trainer.max_epochs=2", *NO_FIGURES)
    one_error_line(proc, "no space left on the disk", "hydra.run.dir")
    left = tmp_path / "left"
    assert sorted(p.name for p in left.iterdir()) == ["best.ckpt", "last.ckpt"]  # no partial file
    for ckpt in left.iterdir():
        assert checkpoint_problem(ckpt) is None
        assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 0  # epoch 1's, whole


@pytest.mark.slow
def test_a_disk_that_fills_under_tensorboard_is_one_line_and_the_events_load(tmp_path) -> None:
    from tests.helpers.outputs import read_events

    # The event writer's thread meets the full disk; the main thread meets its error at the next write.
    proc = _train_with_a_small(tmp_path, "tensorboard", "64k", "trainer.max_epochs=1")
    one_error_line(proc, "no space left on the disk", "hydra.run.dir")
    assert "warning: the background thread" in proc.stderr and "[Errno 28]" in proc.stderr
    events = read_events(tmp_path / "left")  # the records written before the disk filled
    assert events["scalars"], events


def test_predictions_on_a_full_disk_are_one_line_and_leave_no_partial_file(tmp_path) -> None:
    from tests.helpers.images import write_image
    from tests.helpers.models import export_tiny

    _, onnx_path, _ = export_tiny(tmp_path / "model")
    rng = np.random.default_rng(0)
    for i in range(300):  # ~100 KiB of rows for a 48 KiB disk
        write_image(tmp_path / "photos" / f"photo_with_a_long_name_{i:04d}.jpg", rng, size=8)
    with mounted(tmp_path / "small", "size=48k") as small:
        proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"ckpt_path={onnx_path}",
                               f"inputs={tmp_path / 'photos'}", f"hydra.run.dir={small / 'run'}", "progress_bar=false"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=script_env())
        line = one_error_line(proc, "the predictions of 300 files", str(small / "run"), "hydra.run.dir")
        assert re.search(SIZES, line), line
        assert not list((small / "run").glob("predictions*")), list((small / "run").iterdir())
