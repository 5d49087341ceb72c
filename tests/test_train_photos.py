"""The photographs to train on (cifake/data/train_photos.py): built from packages the photo set does not
use, tiled into REAL/ and read by data.extra_train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.photos import EXTRA_PACKAGES, PACKAGES, Source, TileSettings, photo_id, tile_boxes
from cifake.data.train_photos import TRAIN_PACKAGES, TRAIN_TILES, WHOLE_VIEWS, build_train_extra, whole_boxes
from tests.helpers.config import conf_args
from tests.helpers.images import make_cifake_tree

SIDE = (96, 70)  # small photos: tiles at divisors 1 and 2 only


def _sources(root: Path) -> dict[str, Source]:
    rng = np.random.default_rng(0)
    sources = {}
    for pkg in TRAIN_PACKAGES:
        folder = root / pkg.name / pkg.folder
        for rel in (*pkg.kept, "not_a_photo/logo.png"):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (SIDE[1], SIDE[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / rel)
        sources[pkg.name] = Source(root / pkg.name, "1.0", f"{pkg.name}_1.0_all.deb")
    return sources


def test_train_packages_are_not_the_photo_sets() -> None:
    measured = {pkg.name for pkg in (*PACKAGES, *EXTRA_PACKAGES)}
    assert measured.isdisjoint(pkg.name for pkg in TRAIN_PACKAGES)


def test_tiles_land_in_real_and_train_on(tmp_path: Path) -> None:
    out = tmp_path / "train_extra"
    manifest = build_train_extra(out, _sources(tmp_path / "src"), seed=0)
    kept = [(pkg, rel) for pkg in TRAIN_PACKAGES for rel in pkg.kept]
    expected = {f"{photo_id(pkg, rel)}_s{d}_{k}.png" for pkg, rel in kept
                for d, k, _ in tile_boxes(*SIDE, photo_id(pkg, rel), 0, TRAIN_TILES)}
    expected |= {f"{photo_id(pkg, rel)}_w_{k}.png" for pkg, rel in kept for k in range(WHOLE_VIEWS)}
    files = {p.name for p in (out / "REAL").iterdir()}
    assert files == expected and len(files) == len(kept) * (1 + 8 + WHOLE_VIEWS)  # 70 px: scales 1 and 2 only
    assert manifest["counts"] == {"photos": len(kept), "tiles": len(files)}
    assert json.loads((out / "manifest.json").read_text())["counts"] == manifest["counts"]
    assert any(row["path"].endswith("not_a_photo/logo.png") for row in manifest["excluded"])
    with Image.open(out / "REAL" / sorted(files)[0]) as tile:
        assert tile.size == (32, 32) and tile.mode == "RGB"
    assert not (tmp_path / "train_extra.partial").exists()

    data = CIFAKEDataModule(**conf_args("data", root=str(make_cifake_tree(tmp_path / "d", n_per_class=10)),
                                        cache_dir=str(tmp_path / "cache"), decode_workers=1, extra_train=str(out)))
    data.setup("fit")
    assert len(data.train_set) == 18 + len(files)
    assert np.bincount(data.train_set.split.labels[data.train_set.indices]).tolist() == [9, 9 + len(files)]


def test_a_used_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        build_train_extra(out, _sources(tmp_path / "src"), seed=0)
    assert (out / "keep.txt").read_text() == "mine"


def test_tile_settings_cut_many_scales() -> None:
    assert isinstance(TRAIN_TILES, TileSettings) and len(tile_boxes(4000, 3000, "p", 0, TRAIN_TILES)) == 217


def test_a_full_disk_is_told_before_any_tile(tmp_path: Path, monkeypatch) -> None:
    from cifake.core import atomic
    from cifake.core.errors import DiskSpaceError

    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10_000)
    with pytest.raises(DiskSpaceError, match="--train-extra"):
        build_train_extra(tmp_path / "out", _sources(tmp_path / "src"), seed=0)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_whole_views_squash_the_frame_as_predict_does(tmp_path: Path) -> None:
    """The first whole view is the full frame, resized to 32x32 as cifake-predict resizes a whole file; the
    others keep at least 70% of each side, lie inside the photo, differ, and are the same on every build."""
    from cifake.data.decode import to_model_input

    boxes = whole_boxes(400, 240, "p", 0)
    assert len(boxes) == WHOLE_VIEWS and boxes[0] == (0, (0, 0, 400, 240)) and boxes == whole_boxes(400, 240, "p", 0)
    for _, (left, top, right, bottom) in boxes[1:]:
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 240
        assert right - left >= 280 and bottom - top >= 168
    assert len({box for _, box in boxes}) == WHOLE_VIEWS and whole_boxes(400, 240, "q", 0) != boxes

    sources = _sources(tmp_path / "src")
    build_train_extra(tmp_path / "out", sources, seed=0)
    pkg, rel = TRAIN_PACKAGES[0], TRAIN_PACKAGES[0].kept[0]
    with Image.open(sources[pkg.name].root / pkg.folder / rel) as photo:
        as_predicted, _ = to_model_input(photo.convert("RGB"), 32, "bicubic")
    with Image.open(tmp_path / "out" / "REAL" / f"{photo_id(pkg, rel)}_w_0.png") as view:
        assert np.array_equal(np.asarray(view).transpose(2, 0, 1), as_predicted)
