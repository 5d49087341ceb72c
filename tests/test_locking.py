"""Runs started together on one cache folder: each shared cache (demo data, an archive's
extraction, a split's decoded arrays) is built by one of them while the others wait, saying so,
and then reuse it. Asserted from what the runs log, as users start them: real ``train.py``
processes, nothing mocked."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from filelock import FileLock

from cifake.data.archive import extraction_folder
from tests.helpers import ROOT
from tests.helpers.config import NO_FIGURES, tiny_demo_overrides
from tests.helpers.images import make_cifake_tree

WAITING = "Waiting for another process that is"


def _output(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(text: str, log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``proc`` has printed ``text`` into ``log``; fails if it exits first or takes too long."""
    deadline = time.monotonic() + timeout
    while text not in _output(log):
        assert proc.poll() is None and time.monotonic() < deadline, (text, _output(log)[-3000:])
        time.sleep(0.02)


def train_together(tmp_path: Path, overrides: list[str], hold: Path | list[Path] | None = None,
                   per_run: tuple[list[str], list[str]] = ([], [])) -> list[str]:
    """Start two ``train.py`` runs at once (their own ``hydra.run.dir``, the same cache folder
    through ``CIFAKE_CACHE_DIR``; ``per_run``: each one's own overrides) and return what each printed,
    once both exited 0.

    The runs draw no figures (NO_FIGURES): the caches are the point, and two runs' figures cost ~7 s an epoch
    and ~9 s an evaluation of these two cores.
    With ``hold``, this process holds those locks until both runs say they wait for one, so that they
    reach it together however their start-up times differ, then lets go of all at once: the two race
    for it (one lock), or build side by side (a lock each)."""
    env = {**os.environ, "CIFAKE_CACHE_DIR": str(tmp_path / "cache")}
    logs = [tmp_path / f"run{i}.txt" for i in (1, 2)]
    procs: list[subprocess.Popen] = []
    held = [hold] if isinstance(hold, Path) else list(hold or [])
    locks = [FileLock(str(path)) for path in held]
    try:
        for path, lock in zip(held, locks, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        for i, (log, own) in enumerate(zip(logs, per_run, strict=True), 1):
            with log.open("w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "train.py"), *overrides, *own, *NO_FIGURES,
                     f"hydra.run.dir={tmp_path / f'run{i}'}"],
                    cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT))
        if locks:
            deadline = time.monotonic() + 300
            while not all(WAITING in _output(log) for log in logs):
                exited = [p.returncode for p in procs if p.poll() is not None]
                assert not exited and time.monotonic() < deadline, [_output(log)[-3000:] for log in logs]
                time.sleep(0.2)
            for lock in locks:
                lock.release()
        for proc in procs:
            proc.wait(timeout=400)
    finally:
        for lock in locks:
            if lock.is_locked:
                lock.release()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [_output(log) for log in logs]
    assert [p.returncode for p in procs] == [0, 0], [out[-3000:] for out in outputs]
    return outputs


def built_once(outputs: list[str], built: str, reused: str) -> None:
    """One run logged ``built`` once, the other ``reused`` once (after waiting or not)."""
    counts = sorted((out.count(built), out.count(reused)) for out in outputs)
    assert counts == [(0, 1), (1, 0)], (built, reused, counts, [out[-3000:] for out in outputs])


def same_results(tmp_path: Path) -> None:
    """Both runs trained on the same arrays: same seed, same data, same numbers."""
    first, second = (json.loads((tmp_path / run / "results.json").read_text())["metrics"] for run in ("run1", "run2"))
    assert first == second


def one_folder_per_split(cache: Path) -> None:
    """Exactly one decoded folder per split, and no half-built folder left anywhere."""
    assert sorted(p.name.split("-")[1] for p in (cache / "decoded").iterdir() if p.is_dir()) == ["test", "train"]
    assert not list(cache.rglob("*.partial")), list(cache.rglob("*.partial"))


@pytest.mark.slow
def test_two_demo_runs_started_together_on_an_empty_cache_generate_and_decode_once(tmp_path: Path) -> None:
    # experiment=demo writes its generated data into the cache folder too (data.root's default).
    outputs = train_together(tmp_path, ["experiment=demo", *tiny_demo_overrides(), "trainer.max_epochs=1"])
    built_once(outputs, "Generating the demo dataset (144 images)", "Reusing the demo dataset")
    built_once(outputs, "Decoding 96 train images", "Reusing the decoded train cache")
    built_once(outputs, "Decoding 48 test images", "Reusing the decoded test cache")  # evaluate=true reads test
    one_folder_per_split(tmp_path / "cache")
    same_results(tmp_path)


@pytest.mark.slow
def test_two_runs_reaching_an_archive_together_extract_and_decode_it_once(tmp_path: Path) -> None:
    src = make_cifake_tree(tmp_path / "src", n_per_class=12)
    archive = tmp_path / "cifake.tar.xz"
    with tarfile.open(archive, "w:xz") as tf:
        tf.add(src, arcname="cifake")
    settings = [o for o in tiny_demo_overrides() if not o.startswith(("data=", "data.demo."))]
    dest = extraction_folder(archive, tmp_path / "cache")
    outputs = train_together(tmp_path, [f"data.root={archive}", *settings, "trainer.max_epochs=1", "evaluate=true"],
                             hold=Path(f"{dest}.lock"))
    assert all(out.count(WAITING) >= 1 and f"extracting {archive}" in out for out in outputs)
    built_once(outputs, f"Extracting {archive} into {dest}", "Reusing the extraction of")
    built_once(outputs, "Decoding 24 train images", "Reusing the decoded train cache")
    built_once(outputs, "Decoding 24 test images", "Reusing the decoded test cache")
    one_folder_per_split(tmp_path / "cache")
    assert sorted(p.name for p in dest.rglob("*.jpg")) == sorted(p.name for p in src.rglob("*.jpg"))
    same_results(tmp_path)


def decoded_version(root: Path, split: str, size: int, cache: Path) -> Path:
    """The decoded cache folder that a run at ``data.image_size=size`` builds for ``split`` of ``root``."""
    import hashlib

    from cifake.data.cache import CACHE_VERSION
    from cifake.data.scan import scan_split

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    fingerprint = scan_split(root, split, ("FAKE", "REAL")).fingerprint(CACHE_VERSION, size, "bicubic")
    return cache / "decoded" / f"{key}-{split}-{fingerprint[:16]}"


SIZES = (["data.image_size=16"], ["data.image_size=32"])
DECODED = re.compile(r"Decoding \d+ train images")


def two_sizes_on_one_root(tmp_path: Path, root: Path, settings: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Two ``train.py`` runs on ``root`` at image sizes 16 and 32, both reaching their decode at once;
    both exit 0, each decodes its own version once, and both versions stay; a third run rebuilds nothing."""
    from cifake.jobs import train as train_job
    from tests.helpers.config import compose_config

    cache = tmp_path / "cache"
    versions = [decoded_version(root, "train", size, cache) for size in (16, 32)]
    outputs = train_together(tmp_path, [f"data.root={root}", *settings], per_run=SIZES,
                             hold=[Path(f"{v}.lock") for v in versions])
    for out, version in zip(outputs, versions, strict=True):
        assert len(DECODED.findall(out)) == 1 and f"decoding the train cache {version}" in out, out[-3000:]
        assert "Reusing the decoded" not in out and "is damaged" not in out
    assert all((v / "images.npy").is_file() for v in versions)  # neither run pruned the other's version
    assert not list(cache.rglob("*.partial"))
    # The third run alone, in this process: what it finds in the cache is the point, and a process would add
    # ~10 s of imports (the two above are processes because they race for the locks).
    with caplog.at_level(logging.INFO):
        train_job.run(compose_config("train", [f"data.root={root}", *settings, *SIZES[0], *NO_FIGURES,
                                               f"paths.cache_dir={cache}", f"paths.output_dir={tmp_path / 'run3'}"]))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not DECODED.search(logged) and f"Reusing the decoded train cache {versions[0]}" in logged, logged[-3000:]
    assert all((v / "images.npy").is_file() for v in versions)


def test_two_runs_with_other_image_sizes_on_one_root_decode_side_by_side(tmp_path: Path, request: pytest.FixtureRequest,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """As the issue met it where real CIFAKE is at hand (``CIFAKE_ROOT``): its training files decoded at two sizes
    at once, on one root (5,000 of them in CIFAKE's layout, conftest's ``real_cifake_subset``: the locks and
    versions are the same for 100,000, which took two minutes more to decode). Without it, generated files in
    the same layout: the same runs, locks and checks."""
    settings = [o for o in tiny_demo_overrides() if not o.startswith(("data=", "data.demo."))]
    if os.environ.get("CIFAKE_ROOT"):
        root = request.getfixturevalue("real_cifake_subset")
        settings = [o for o in settings if not o.startswith("data.val_fraction")]
        settings += ["data.batch_size=64", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2"]
    else:
        root = make_cifake_tree(tmp_path / "cifake", n_per_class=12)
    two_sizes_on_one_root(tmp_path, root, [*settings, "trainer.max_epochs=1"], caplog)


@pytest.mark.slow
def test_two_demo_runs_with_other_image_sizes_each_generate_their_own_folder(tmp_path: Path) -> None:
    """experiment=demo at sizes 16 and 32 at once: neither regenerates the data the other reads."""
    from cifake.data.demo import demo_folder

    demo = {"train_per_class": 48, "test_per_class": 24, "seed": 0, "upsample_factor": 2, "noise": 0.06,
            "jpeg_quality": 90}
    folders = [demo_folder(tmp_path / "cache" / "demo", **demo, image_size=size) for size in (16, 32)]
    outputs = train_together(tmp_path, ["experiment=demo", *tiny_demo_overrides(), "trainer.max_epochs=1"],
                             per_run=SIZES, hold=[Path(f"{f}.lock") for f in folders])
    for out, folder in zip(outputs, folders, strict=True):
        assert out.count("Generating the demo dataset (144 images)") == 1 and str(folder) in out, out[-3000:]
        assert "is gone" not in out and "cannot be decoded" not in out
        assert len(list(folder.rglob("*.jpg"))) == 144
    assert len([p for p in (tmp_path / "cache" / "decoded").iterdir() if p.is_dir()]) == 4  # 2 sizes x 2 splits


DEMO = ("import logging, sys; from pathlib import Path; from cifake.data.demo import generate_demo; "
        "logging.basicConfig(level=logging.INFO); generate_demo(Path(sys.argv[1]), 1000, 1, 0, 32, 2, 0.06, 90)")


def test_a_builder_killed_midway_leaves_the_waiting_run_to_build_it_whole(tmp_path: Path) -> None:
    """Its half-written folder is never taken for a finished one: the waiting run builds it all."""
    root, logs = tmp_path / "demo", [tmp_path / "first.txt", tmp_path / "second.txt"]
    procs: list[subprocess.Popen] = []
    try:
        for log in logs:
            with log.open("w") as out:
                procs.append(subprocess.Popen([sys.executable, "-c", DEMO, str(root)], cwd=ROOT, stdout=out,
                                              stderr=subprocess.STDOUT))
            if len(procs) == 1:  # the first one: frozen once it has written some images, holding the lock
                wait_for("Generating the demo dataset", log, procs[0])
                while not list(root.glob("*.partial/*/*/*.jpg")):
                    assert procs[0].poll() is None, _output(log)[-3000:]
                    time.sleep(0.005)
                procs[0].send_signal(signal.SIGSTOP)
        wait_for(WAITING, logs[1], procs[1])
        assert not [p for p in root.glob("*px-*") if p.is_dir() and p.suffix != ".partial"]  # stopped midway
        procs[0].kill()  # as a killed run: the operating system lets go of its lock
        assert procs[1].wait(timeout=120) == 0, _output(logs[1])[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "Generating the demo dataset (2002 images)" in _output(logs[1]) and "Reusing" not in _output(logs[1])
    assert len(list(root.rglob("*.jpg"))) == 2002 and not list(root.glob("*.partial"))
