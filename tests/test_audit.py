"""The data audit: the hashes, the near-duplicate search against brute force, exact counts on a
tree with planted duplicates, the CLI, and real CIFAKE (skipped without ``CIFAKE_ROOT``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.audit import hashes as hashes_module
from cifake.audit import leaked_test_files
from cifake.audit.hashes import perceptual_hashes
from cifake.audit.near import chunk_spans, components, near_pairs
from cifake.audit.report import check_settings
from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.decode import grayscale
from cifake.jobs.audit import run
from tests.helpers import ROOT
from tests.helpers.config import conf_args, real_cifake_root
from tests.helpers.images import make_cifake_tree
from tests.helpers.outputs import read_csv

NEAR = 4  # conf/audit.yaml's audit.near_distance


# -- the near-duplicate search -----------------------------------------------------------------
def bit_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of every a x b pair, counted from unpacked bits (independent of popcount)."""
    x = a[:, None] ^ b[None, :]
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def clustered_hashes(rng: np.random.Generator, centres: np.ndarray, n: int, max_flips: int) -> np.ndarray:
    """``n`` hashes, each a random centre with up to ``max_flips`` random bits flipped (some exact copies)."""
    out = centres[rng.integers(0, len(centres), n)].copy()
    for row in range(n):
        for bit in rng.choice(64, size=rng.integers(0, max_flips + 1), replace=False):
            out[row] ^= np.uint64(1) << np.uint64(bit)
    return out


@pytest.mark.parametrize("distance", [0, 1, 3, 5, 8])
def test_near_pairs_match_brute_force(distance: int) -> None:
    rng = np.random.default_rng(distance)
    centres = rng.integers(0, np.iinfo(np.uint64).max, size=40, dtype=np.uint64, endpoint=True)
    a = clustered_hashes(rng, centres, 300, max_flips=2 * distance + 2)
    b = clustered_hashes(rng, centres[:25], 200, max_flips=2 * distance + 2)

    dist = bit_distance(a, a)
    ii, jj = np.nonzero(np.triu(dist <= distance, k=1))
    i, j, d = near_pairs(a, None, distance, max_candidates=64)  # a small budget: many blocks
    assert len(ii) > 0 and (i < j).all()
    assert list(zip(i, j, d, strict=True)) == list(zip(ii, jj, dist[ii, jj], strict=True))

    dist = bit_distance(a, b)
    ii, jj = np.nonzero(dist <= distance)
    i, j, d = near_pairs(a, b, distance)
    assert len(ii) > 0
    assert list(zip(i, j, d, strict=True)) == list(zip(ii, jj, dist[ii, jj], strict=True))


def test_chunks_tile_the_bits_and_distance_is_checked() -> None:
    for parts in (1, 5, 9, 64):
        spans = chunk_spans(parts)
        assert len(spans) == parts and spans[0][0] == 0 and sum(w for _, w in spans) == 64
        assert all(s + w == s2 for (s, w), (s2, _) in zip(spans, spans[1:], strict=False))
    for bad in (-1, 64, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="Hamming distance"):
            near_pairs(np.zeros(3, np.uint64), None, bad)
    with pytest.raises(ConfigError, match="also_distances"):
        check_settings({"near_distance": 4, "also_distances": [70], "chunk_size": 8, "max_candidates": 8})
    with pytest.raises(ConfigError, match="chunk_size"):
        check_settings({"near_distance": 4, "also_distances": [], "chunk_size": 0, "max_candidates": 8})


def test_components_label_each_node_with_its_smallest_member() -> None:
    # 0-3-5 chained in an order that needs several passes, 1-4, 2 and 6 alone.
    labels = components(7, np.array([5, 4, 3]), np.array([3, 1, 0]))
    assert labels.tolist() == [0, 1, 2, 0, 1, 0, 6]
    assert components(3, np.array([], int), np.array([], int)).tolist() == [0, 1, 2]


# -- the perceptual hash -----------------------------------------------------------------------
def photo_like(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8: random 4x4, 8x8 and 16x16 pictures upscaled and mixed, strongest first,
    so that like a photo it holds broad shapes and some detail (a pHash's coefficients then stand well
    apart from their median, as on CIFAKE, rather than crowding around it)."""

    def upscaled(n: int) -> np.ndarray:
        small = rng.integers(0, 256, size=(n, n, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)

    return np.clip(0.6 * upscaled(4) + 0.25 * upscaled(8) + 0.15 * upscaled(16), 0, 255).astype(np.uint8)


def test_phash_is_the_median_threshold_of_the_low_dct_block() -> None:
    fft = pytest.importorskip("scipy.fft")
    rng = np.random.default_rng(0)
    for h, w in ((32, 32), (24, 40)):
        images = np.stack([photo_like(rng, 48)[:h, :w].transpose(2, 0, 1) for _ in range(5)])
        coef = fft.dctn(grayscale(images).astype(np.float64), type=2, norm="ortho", axes=(1, 2))[:, :8, :8]
        coef = coef.reshape(len(images), 64)
        bits = coef > np.median(coef, axis=1, keepdims=True)
        expected = [sum(1 << (63 - int(k)) for k in np.flatnonzero(row)) for row in bits]
        assert [int(v) for v in perceptual_hashes(images, chunk_size=2)] == expected


# -- a tree with planted duplicates ------------------------------------------------------------
def save_jpeg(path: Path, pixels: np.ndarray, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def planted_tree(root: Path) -> Path:
    """``make_cifake_tree`` (6 random images per folder) plus planted duplicates (see the counts below)."""
    make_cifake_tree(root, n_per_class=6)
    for src, dst in [("train/FAKE/0 (FAKE).jpg", "train/FAKE/copy-a.jpg"),     # within train/FAKE
                     ("train/FAKE/1 (FAKE).jpg", "train/REAL/copy-b.jpg"),     # train/FAKE -> train/REAL
                     ("train/FAKE/2 (FAKE).jpg", "test/FAKE/leak-c.jpg"),      # exact leak
                     ("train/REAL/0 (REAL).jpg", "test/REAL/leak-d1.jpg"),     # two exact leaks
                     ("train/REAL/0 (REAL).jpg", "test/REAL/leak-d2.jpg"),
                     ("test/FAKE/0 (FAKE).jpg", "test/FAKE/dup-e1.jpg"),       # two within test/FAKE
                     ("test/FAKE/0 (FAKE).jpg", "test/FAKE/dup-e2.jpg")]:
        shutil.copyfile(root / src, root / dst)
    rng = np.random.default_rng(1)
    # The same picture re-encoded at another quality and a little brighter: new bytes, near hash.
    f, g = photo_like(rng), photo_like(rng)
    save_jpeg(root / "train/REAL/pic-f.jpg", f)
    save_jpeg(root / "test/FAKE/near-f.jpg", np.clip(f.astype(int) + 3, 0, 255).astype(np.uint8), quality=75)
    save_jpeg(root / "train/FAKE/pic-g.jpg", g)
    save_jpeg(root / "train/FAKE/pic-g-near.jpg", g, quality=70)
    (root / "train/FAKE/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "test/REAL/broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return planted_tree(tmp_path / "planted")


def test_audit_counts_planted_duplicates_exactly(planted: Path, compose_cfg) -> None:
    cfg = compose_cfg("audit", [f"data.root={planted}"])
    report = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "audit.json").read_text()) == report
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert train["images"] == {"FAKE": 9, "REAL": 8} and test["images"] == {"FAKE": 10, "REAL": 8}
    assert train["not_images"] == {"not an image (.DS_Store)": 1} and test["not_images"] == {}
    assert list(test["undecodable"]) == ["test/REAL/broken.jpg"] and train["undecodable"] == {}
    assert train["converted"] == test["converted"] == {}

    exact = report["exact"]
    assert report["files"] == 35 and exact["distinct"] == 28
    assert exact["repeats"] == {
        "total": 7,
        "within": {"train/FAKE": 1, "train/REAL": 0, "test/FAKE": 2, "test/REAL": 0},
        "across": {"train/FAKE -> train/REAL": 1, "train/FAKE -> test/FAKE": 1, "train/REAL -> test/REAL": 2},
    }
    assert exact["test_leaks"] == {"exact": 3, "near": 0, "total": 3, "by_location": {"test/FAKE": 1, "test/REAL": 2}}

    near = report["near"]
    assert near["distance"] == NEAR and near["groups"] == 26 and near["largest_group"] == 3
    assert near["repeats_not_exact"] == {
        "total": 2,
        "within": {"train/FAKE": 1, "train/REAL": 0, "test/FAKE": 0, "test/REAL": 0},
        "across": {"train/REAL -> test/FAKE": 1},
    }
    assert near["pairs_not_exact"] == 2
    assert near["test_leaks"] == {"exact": 3, "near": 1, "total": 4, "by_location": {"test/FAKE": 2, "test/REAL": 2}}
    assert set(report["near_at"]) == {"0", "2", "6"}
    assert all(s["repeats_not_exact"]["total"] <= 2 for d, s in report["near_at"].items() if int(d) < NEAR)

    leaks = read_csv(out / "leaks.csv")
    assert [(r["path"], r["kind"], r["train_file"]) for r in leaks] == [
        ("test/FAKE/leak-c.jpg", "exact", "train/FAKE/2 (FAKE).jpg"),
        ("test/FAKE/near-f.jpg", "near", "train/REAL/pic-f.jpg"),
        ("test/REAL/leak-d1.jpg", "exact", "train/REAL/0 (REAL).jpg"),
        ("test/REAL/leak-d2.jpg", "exact", "train/REAL/0 (REAL).jpg"),
    ]
    assert [int(r["distance"]) for r in leaks if r["kind"] == "exact"] == [0, 0, 0]
    assert 0 <= int(leaks[1]["distance"]) <= NEAR

    rows = read_csv(out / "duplicates.csv")
    exact_rows = [r for r in rows if r["kind"] == "exact"]
    assert len(exact_rows) == 12 and {r["group"] for r in exact_rows} == {"1", "2", "3", "4", "5"}
    assert {r["path"] for r in exact_rows if r["size"] == "3"} == {
        "train/REAL/0 (REAL).jpg", "test/REAL/leak-d1.jpg", "test/REAL/leak-d2.jpg",
        "test/FAKE/0 (FAKE).jpg", "test/FAKE/dup-e1.jpg", "test/FAKE/dup-e2.jpg"}
    near_rows = {(r["group"], r["path"]) for r in rows if r["kind"] == "near"}
    assert near_rows == {("1", "train/FAKE/pic-g-near.jpg"), ("1", "train/FAKE/pic-g.jpg"),
                         ("2", "train/REAL/pic-f.jpg"), ("2", "test/FAKE/near-f.jpg")}
    assert "Exact duplicates (sha256): 35 files, 28 distinct, 7 repeat another" in (out / "summary.txt").read_text()


def test_leaked_test_files_reads_the_cached_hashes_the_second_time(planted: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    (planted / "test/REAL/broken.jpg").unlink()
    cache = tmp_path / "cache"
    exact = {"test/FAKE/leak-c.jpg", "test/REAL/leak-d1.jpg", "test/REAL/leak-d2.jpg"}
    data = CIFAKEDataModule(**conf_args("data", root=str(planted), cache_dir=str(cache)))
    assert leaked_test_files(data) == exact
    assert len(list(cache.glob("decoded/*/hashes-v*.npz"))) == 2

    def no_rehashing(*args, **kwargs):
        raise AssertionError("the hashes should have come from the cache")

    monkeypatch.setattr(hashes_module, "file_digests", no_rehashing)
    monkeypatch.setattr(hashes_module, "perceptual_hashes", no_rehashing)
    assert leaked_test_files(data, near_distance=NEAR) == exact | {"test/FAKE/near-f.jpg"}
    assert leaked_test_files(data, near_distance=0) <= exact | {"test/FAKE/near-f.jpg"}


def test_cli_writes_the_report_and_prints_the_summary(planted: Path, tmp_path: Path, cli) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "audit.py"), f"data.root={planted}", f"paths.log_dir={tmp_path / 'logs'}",
         f"paths.cache_dir={tmp_path / 'cache'}", "audit.also_distances=[]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test files identical to a train file: 3" in proc.stdout
    (run_dir,) = (tmp_path / "logs" / "audit" / "runs").iterdir()
    assert {"audit.json", "duplicates.csv", "leaks.csv", "summary.txt"} <= {p.name for p in run_dir.iterdir()}

    proc = cli("audit.py", tmp_path, f"data.root={planted}", "audit.near_distance=64")  # its error, in process
    assert proc.returncode == 2 and "audit.near_distance" in proc.stderr and "Traceback" not in proc.stderr


# -- real CIFAKE -------------------------------------------------------------------------------
@pytest.mark.real_data
def test_real_cifake_duplicates_and_leaks(compose_cfg, tmp_path: Path) -> None:
    root = real_cifake_root()
    cache = os.environ.get("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))  # .ci/run shares one cache
    report = run(compose_cfg("audit", [f"data.root={root}", f"paths.cache_dir={cache}", "audit.also_distances=[]"]))
    exact, near = report["exact"], report["near"]
    # Measured on the shared copy (shared/data/README.md).
    assert report["files"] == 120_000 and exact["distinct"] == 118_664
    assert exact["repeats"]["total"] == 1_336
    assert exact["repeats"]["within"]["train/FAKE"] == 920 and exact["repeats"]["within"]["test/FAKE"] == 38
    assert exact["test_leaks"]["total"] == 378 == exact["test_leaks"]["by_location"]["test/FAKE"]
    # Near duplicates contain the exact ones.
    assert near["groups"] <= exact["distinct"] and near["test_leaks"]["exact"] == 378
    assert near["test_leaks"]["total"] >= 378
    data = CIFAKEDataModule(**conf_args("data", root=str(root), cache_dir=cache))
    leaked = leaked_test_files(data)
    assert len(leaked) == 378 and leaked <= leaked_test_files(data, near_distance=NEAR)
