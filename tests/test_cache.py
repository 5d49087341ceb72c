import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.core.errors import DataError
from cifake.data import cache as cache_mod
from cifake.data.cache import load_or_decode
from cifake.data.scan import scan_split
from tests.helpers import ROOT
from tests.helpers.config import NO_FIGURES, tiny_demo_overrides
from tests.helpers.images import write_image

CLASSES = ("FAKE", "REAL")


def decode(root: Path, cache: Path, **kw):
    return load_or_decode(scan_split(root, "train", CLASSES), cache, image_size=32, workers=1, **kw)


def test_decoded_pixels_match_pil_and_labels(cifake_tree: Path, tmp_path: Path) -> None:
    split = decode(cifake_tree, tmp_path / "c")
    assert split.images.shape == (12, 3, 32, 32) and split.images.dtype == np.uint8
    assert split.labels.tolist() == [0] * 6 + [1] * 6
    for i in (0, 11):
        expected = np.asarray(Image.open(cifake_tree / split.files[i]).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(split.images[i], expected)


def test_cache_is_reused_then_invalidated_by_a_changed_file(cifake_tree: Path, tmp_path: Path,
                                                          monkeypatch, caplog) -> None:
    first = decode(cifake_tree, tmp_path / "c")
    calls = []
    original = cache_mod._build
    monkeypatch.setattr(cache_mod, "_build", lambda *a, **k: (calls.append(1), original(*a, **k)))
    with caplog.at_level(logging.INFO):
        second = decode(cifake_tree, tmp_path / "c")
    assert calls == [] and "Reusing" in caplog.text
    assert second.cache_dir == first.cache_dir

    changed = cifake_tree / first.files[3]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    third = decode(cifake_tree, tmp_path / "c")
    assert calls == [1] and third.cache_dir != first.cache_dir
    assert np.abs(third.images[3].astype(int) - [[[255]], [[0]], [[0]]]).max() < 8
    assert first.cache_dir.exists()  # a run never deletes a version: another may read it (pruning is explicit)


def test_cache_key_includes_image_size(cifake_tree: Path, tmp_path: Path, caplog) -> None:
    a = decode(cifake_tree, tmp_path / "c")
    b = load_or_decode(scan_split(cifake_tree, "train", CLASSES), tmp_path / "c", image_size=16, workers=1)
    assert a.cache_dir != b.cache_dir and b.images.shape[-1] == 16
    with caplog.at_level(logging.INFO):  # both sizes stay: alternating between them rebuilds nothing
        again = [decode(cifake_tree, tmp_path / "c"),
                 load_or_decode(scan_split(cifake_tree, "train", CLASSES), tmp_path / "c", image_size=16, workers=1)]
    assert [s.cache_dir for s in again] == [a.cache_dir, b.cache_dir] and caplog.text.count("Reusing") == 2
    assert "Decoding" not in caplog.text


def prune(cache: Path, *args: str) -> str:
    """``python -m cifake.data.prune`` as a user runs it, in another process; what it printed."""
    proc = subprocess.run([sys.executable, "-m", "cifake.data.prune", str(cache), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_pruning_deletes_only_the_versions_no_run_holds_or_builds(cifake_tree: Path, tmp_path: Path, caplog) -> None:
    from filelock import FileLock

    from cifake.data.locking import release

    cache = tmp_path / "c"
    with caplog.at_level(logging.INFO):
        big = decode(cifake_tree, cache)
        small = load_or_decode(scan_split(cifake_tree, "train", CLASSES), cache, image_size=16, workers=1)
    assert "holds 2 version(s)" in caplog.text and "python -m cifake.data.prune" in caplog.text
    building = cache / "decoded" / "feedbeef-train-0123456789abcdef"  # another run, half-way through a build
    (partial := building.with_name(building.name + ".partial")).mkdir()
    (partial / "all.npy").write_bytes(b"x" * 100)
    crashed = cache / "decoded" / "deadbeef-train-0123456789abcdef.partial"  # a killed build: nobody holds it
    crashed.mkdir()
    lock = FileLock(str(building) + ".lock")
    lock.acquire()
    try:
        out = prune(cache, "--dry-run")
        assert f"would delete {crashed}" in out and not crashed.parent.joinpath("x").exists() and crashed.exists()
        out = prune(cache)  # this process reads both versions and builds one: only the crashed build goes
        assert f"deleted {crashed}" in out and not crashed.exists()
        assert big.cache_dir.exists() and small.cache_dir.exists() and partial.exists()
        release(small.cache_dir)  # this run is done with size 16
        out = prune(cache)
        assert f"deleted {small.cache_dir}" in out and not small.cache_dir.exists()
        assert big.cache_dir.exists() and partial.exists() and np.asarray(big.images).sum() > 0
    finally:
        lock.release()
        release(big.cache_dir)
    assert "--days" in prune(cache, "--help")
    prune(cache, "--days", "1")  # used a moment ago: kept
    assert big.cache_dir.exists()
    prune(cache)
    assert not big.cache_dir.exists() and not partial.exists()


def _add_bad_files(root: Path) -> list[str]:
    folder = root / "train" / "REAL"
    (folder / "empty.jpg").write_bytes(b"")
    good = (folder / "0 (REAL).jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage.png").write_bytes(os.urandom(300))
    return ["empty.jpg", "truncated.jpg", "garbage.png"]


def test_undecodable_files_stop_the_run_with_every_name(cifake_tree: Path, tmp_path: Path) -> None:
    names = _add_bad_files(cifake_tree)
    with pytest.raises(DataError) as err:
        decode(cifake_tree, tmp_path / "c")
    message = str(err.value)
    assert "3 file(s)" in message and "data.skip_bad_files=true" in message
    assert all(name in message for name in names)
    # nothing half-written (lock files are empty and hold nothing)
    assert not [p for p in (tmp_path / "c" / "decoded").iterdir() if p.suffix not in (".lock", ".use")]


def test_skip_bad_files_leaves_them_out_with_a_warning(cifake_tree: Path, tmp_path: Path, caplog) -> None:
    names = _add_bad_files(cifake_tree)
    with caplog.at_level(logging.WARNING):
        split = decode(cifake_tree, tmp_path / "c", skip_bad_files=True)
    assert len(split) == 12 and split.labels.tolist() == [0] * 6 + [1] * 6
    assert not any(name in f for f in split.files for name in names)
    assert all(name in caplog.text for name in names)
    # The same cache reused by a run that did not ask to skip: the bad files are not silently gone.
    with pytest.raises(DataError, match="data.skip_bad_files=true"):
        decode(cifake_tree, tmp_path / "c", skip_bad_files=False)


@pytest.mark.parametrize(("mode", "size", "fmt", "kind"), [
    ("L", 32, "JPEG", "mode L -> RGB"),
    ("RGBA", 32, "PNG", "mode RGBA -> RGB"),
    ("CMYK", 32, "JPEG", "mode CMYK -> RGB"),
    ("P", 32, "PNG", "mode P -> RGB"),
    ("RGB", 64, "JPEG", "resized to 32x32"),
])
def test_other_modes_and_sizes_are_converted_and_counted(cifake_tree: Path, tmp_path: Path, caplog,
                                                         mode, size, fmt, kind) -> None:
    suffix = ".png" if fmt == "PNG" else ".jpg"
    write_image(cifake_tree / "train" / "FAKE" / f"odd{suffix}", np.random.default_rng(1), size, mode, fmt)
    with caplog.at_level(logging.INFO):
        split = decode(cifake_tree, tmp_path / "c")
    assert split.images.shape == (13, 3, 32, 32)
    assert f"{kind}: 1" in caplog.text


def test_parallel_decode_matches_serial(cifake_tree: Path, tmp_path: Path, monkeypatch) -> None:
    serial = decode(cifake_tree, tmp_path / "a")
    monkeypatch.setattr(cache_mod, "_CHUNK", 5)  # several chunks, so the process pool runs
    listing = scan_split(cifake_tree, "train", CLASSES)
    parallel = load_or_decode(listing, tmp_path / "b", image_size=32, workers=2)
    assert np.array_equal(np.asarray(serial.images), np.asarray(parallel.images))


def test_jobs_started_together_build_each_cache_once(tmp_path) -> None:
    """As in a sweep whose jobs start at once: every process must get the same complete data."""
    import subprocess
    import sys

    script = (
        "import logging, sys; from pathlib import Path; from cifake.data.demo import generate_demo; "
        "logging.basicConfig(level=logging.INFO); "
        "from cifake.data.scan import scan_split; from cifake.data.cache import load_or_decode; "
        "root = generate_demo(Path(sys.argv[1]), 40, 10, 0, 32, 2, 0.06, 90); "
        "s = load_or_decode(scan_split(root, 'train', ('FAKE', 'REAL')), Path(sys.argv[2]), 32); "
        "print(len(s), int(s.images.sum()))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "demo"), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len({out for out, _ in outs}) == 1 and outs[0][0].split()[0] == "80"
    assert len([p for p in (tmp_path / "cache" / "decoded").iterdir() if p.is_dir()]) == 1
    # Built by one process, reused by the other two (whether they waited for it or came after).
    for built, reused in (("Generating the demo dataset", "Reusing the demo dataset"),
                          ("Decoding 80 train images", "Reusing the decoded train cache")):
        assert sorted((err.count(built), err.count(reused)) for _, err in outs) == [(0, 1), (0, 1), (1, 0)], \
            [err[-2000:] for _, err in outs]


# -- damaged caches ------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"NOT AN NPY")


DAMAGE = {
    "truncated images": lambda folder: _truncate(folder / "images.npy"),
    "garbled header": lambda folder: _garble_header(folder / "images.npy"),
    # a whole, valid .npy, but not what the record says the folder holds
    "other shape": lambda folder: np.save(folder / "images.npy", np.zeros((12, 3, 16, 16), np.uint8)),
    "other dtype": lambda folder: np.save(folder / "images.npy", np.zeros((12, 3, 32, 32), np.int16)),
    "truncated labels": lambda folder: _truncate(folder / "labels.npy"),
    "garbled record": lambda folder: (folder / "meta.json").write_text('{"files": ['),
    "no record": lambda folder: (folder / "meta.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_rebuilt_with_one_warning_and_never_mapped(cifake_tree: Path, tmp_path: Path,
                                                                      monkeypatch, caplog, damage: str) -> None:
    clean = decode(cifake_tree, tmp_path / "c")
    pixels, whole = np.array(clean.images), (clean.cache_dir / "images.npy").stat().st_size
    DAMAGE[damage](clean.cache_dir)
    mapped = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda file, *a, **k: (mapped.append(Path(file).stat().st_size)
                                                           if k.get("mmap_mode") else None, original(file, *a, **k))[1])
    with caplog.at_level(logging.INFO):
        again = decode(cifake_tree, tmp_path / "c")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0].getMessage(), caplog.text
    assert str(clean.cache_dir) in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert "Decoding 12 train images" in caplog.text and "Reusing" not in caplog.text
    assert mapped and set(mapped) == {whole}  # only whole files were mapped: the decoder's and the rebuilt one
    assert again.cache_dir == clean.cache_dir and np.array_equal(np.asarray(again.images), pixels)
    with caplog.at_level(logging.INFO):
        caplog.clear()
        decode(cifake_tree, tmp_path / "c")
    assert "Reusing" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_record_says_what_the_arrays_hold(cifake_tree: Path, tmp_path: Path) -> None:
    import json

    split = decode(cifake_tree, tmp_path / "c")
    meta = json.loads((split.cache_dir / "meta.json").read_text())
    assert meta["images"] == {"shape": [12, 3, 32, 32], "dtype": "uint8"}
    assert meta["labels"] == {"shape": [12], "dtype": "int64"} and len(meta["files"]) == 12
    assert meta["fingerprint"].startswith(split.cache_dir.name.split("-")[-1])


def test_a_cache_whose_source_files_are_gone_is_an_error_naming_the_file(cifake_tree: Path, tmp_path: Path) -> None:
    listing = scan_split(cifake_tree, "train", CLASSES)
    split = load_or_decode(listing, tmp_path / "c", image_size=32, workers=1)
    _truncate(split.cache_dir / "images.npy")
    gone = cifake_tree / listing.files[4]
    gone.unlink()  # after it was listed: the cache can be neither trusted nor built again
    with pytest.raises(DataError) as err:
        load_or_decode(listing, tmp_path / "c", image_size=32, workers=1)
    assert str(gone) in str(err.value) and "data.root" in str(err.value)


@pytest.mark.slow
def test_train_rebuilds_a_damaged_cache_and_its_numbers_equal_a_clean_run(tmp_path: Path, caplog) -> None:
    import json

    from cifake.jobs import train as train_job
    from tests.helpers.config import compose_config

    def train(run: str) -> tuple[dict, list[str]]:
        """train.py's job in this process (the cache and the numbers are the point, not the command line: a
        process would add ~10 s of imports to each of the three runs); its results and every line it logged.
        NO_FIGURES: the cache and the numbers are compared; the figures cost ~3.5 s of each run."""
        cfg = compose_config("train", [*tiny_demo_overrides(), *NO_FIGURES, "trainer.max_epochs=1",
                                       f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / run}"])
        caplog.clear()
        with caplog.at_level(logging.INFO):
            train_job.run(cfg)
        return (json.loads((tmp_path / run / "results.json").read_text())["metrics"],
                [r.getMessage() for r in caplog.records])

    clean, logged = train("clean")
    assert not [line for line in logged if "is damaged" in line], logged
    images = next((tmp_path / "cache" / "decoded").glob("*-train-*/images.npy"))
    for damage in ("truncated images", "garbled header"):
        DAMAGE[damage](images.parent)
        metrics, logged = train(damage.replace(" ", "_"))
        warned = [line for line in logged if "is damaged" in line]
        assert len(warned) == 1 and str(images.parent) in warned[0], logged
        assert metrics == clean
