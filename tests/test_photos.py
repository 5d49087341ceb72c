"""The photo set builder (cifake/data/photos.py, cifake/tools/photos.py) on generated images only: no
network, no Debian package."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake.core.errors import ConfigError, DataError
from cifake.data import photos
from cifake.data.photos import (
    CHOOSE,
    EXTRA_PACKAGES,
    HELDOUT,
    PACKAGES,
    REPORT,
    FakeSettings,
    Packages,
    Rendering,
    Source,
    SourcePackage,
    TileSettings,
    build_set,
    cut_tile,
    draw_int,
    photo_id,
    sample_fakes,
    select_photos,
    split_parts,
    tile_boxes,
)
from cifake.tools import photos as tool

FOLDER = "usr/share/backgrounds/test"
# (name, width, height, format): landscape, portrait, square, a panorama, RGBA and palette PNGs; the
# 100x60 one is too small for half-scale tiles (30 px < 32)
PHOTOS_A = [("a0.jpg", 240, 160, "JPEG"), ("a1.jpg", 150, 260, "JPEG"), ("a2.png", 200, 200, "PNG"),
            ("a3.jpg", 400, 130, "JPEG"), ("a4.png", 180, 140, "PNG-RGBA"), ("a5.jpg", 100, 60, "JPEG"),
            ("a6.png", 160, 170, "PNG-P")]
PHOTOS_B = [("b0.jpg", 300, 200, "JPEG"), ("b1.jpg", 210, 210, "JPEG"), ("sub/b2.jpg", 256, 144, "JPEG"),
            ("sub/b3.jpg", 144, 256, "JPEG")]
PACKAGE_A = SourcePackage(name="pkg-a", short="a", folder=FOLDER, kept=tuple(name for name, *_ in PHOTOS_A),
                          excluded={"render.png": "render", "patterns/*": "abstract pattern"})
PACKAGE_B = SourcePackage(name="pkg-b", short="b", folder=FOLDER, kept=tuple(name for name, *_ in PHOTOS_B))
EXTRA = SourcePackage(name="pkg-x", short="x", folder=FOLDER, kept=("x0.jpg", "x1.jpg"))
SMALL_FAKES = FakeSettings(sides=(64, 96), filters=("bicubic", "lanczos"), qualities=(85, 95))


def _picture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A gradient with noise: smooth and detailed parts, different in every photo."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def _write(path: Path, rng: np.random.Generator, width: int, height: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_picture(rng, width, height))
    if fmt == "PNG-RGBA":
        image.convert("RGBA").save(path, format="PNG")
    elif fmt == "PNG-P":
        image.convert("P").save(path, format="PNG")
    elif fmt == "JPEG":
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format=fmt)


def _package_tree(root: Path, photos_: list[tuple[str, int, int, str]], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, width, height, fmt in photos_:
        _write(root / FOLDER / name, rng, width, height, fmt)
    return root


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Source]:
    """Two packages to split and one held out, extracted; package A also holds excluded files, an
    unreviewed one and a link."""
    a = _package_tree(tmp_path / "src" / "a", PHOTOS_A, seed=1)
    rng = np.random.default_rng(9)
    _write(a / FOLDER / "render.png", rng, 120, 90, "PNG")
    _write(a / FOLDER / "patterns" / "p0.jpg", rng, 120, 90)
    _write(a / FOLDER / "new_in_this_version.jpg", rng, 120, 90)
    (a / FOLDER / "notes.txt").write_text("not an image")
    os.symlink("a0.jpg", a / FOLDER / "a0_small.jpg")
    b = _package_tree(tmp_path / "src" / "b", PHOTOS_B, seed=2)
    x = _package_tree(tmp_path / "src" / "x", [("x0.jpg", 220, 150, "JPEG"), ("x1.jpg", 150, 220, "JPEG")], seed=3)
    return {"pkg-a": Source(a, "1.0"), "pkg-b": Source(b, "2.0"), "pkg-x": Source(x, "3.0")}


def _build(out: Path, sources: dict[str, Source], **kwargs) -> dict:
    return build_set(out, sources, packages=Packages(chosen=(PACKAGE_A, PACKAGE_B), heldout=(EXTRA,)), **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != photos.MANIFEST}


def _cifake_root(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(4)
    for i in range(n):
        _write(root / "test" / "FAKE" / f"{i} ({i % 3 + 1}).jpg", rng, 32, 32)
    _write(root / "test" / "REAL" / "0.jpg", rng, 32, 32)
    return root


def test_split_never_puts_one_photo_on_both_sides_and_is_the_same_twice(tmp_path: Path, sources) -> None:
    first = _build(tmp_path / "one", sources)
    second = _build(tmp_path / "two", sources)
    part_of = {photo["id"]: photo["part"] for photo in first["photos"]}
    assert part_of == {photo["id"]: photo["part"] for photo in second["photos"]}
    # what is on disk: every file of a photo (whole and tiles) lies in its photo's part, never another
    ids_by_part: dict[str, set[str]] = {}
    for path in (tmp_path / "one").rglob("*.*"):
        if path.name == photos.MANIFEST:
            continue
        rel = path.relative_to(tmp_path / "one")
        if rel.parts[0] == photos.FAKES_FOLDER:
            continue
        pid = next(i for i in part_of if path.stem == i or path.stem.startswith(f"{i}_s"))
        ids_by_part.setdefault(rel.parts[0], set()).add(pid)
        assert part_of[pid] == rel.parts[0], f"{rel} is in {rel.parts[0]}, its photo in {part_of[pid]}"
    assert not ids_by_part[CHOOSE] & ids_by_part[REPORT]
    assert not (ids_by_part[CHOOSE] | ids_by_part[REPORT]) & ids_by_part[HELDOUT]
    # half of each package chooses (rounded down), the rest reports; the extra package is held out whole
    assert first["counts"]["photos"] == {"pkg-a": {CHOOSE: 3, REPORT: 4}, "pkg-b": {CHOOSE: 2, REPORT: 2},
                                         "pkg-x": {HELDOUT: 2}}
    assert _files(tmp_path / "one") == _files(tmp_path / "two")  # byte for byte, tiles included


def test_split_rule_is_a_sha256_rank_independent_of_order() -> None:
    keys = [f"pkg/{c}.jpg" for c in "abcdefg"]
    parts = split_parts(keys)
    assert parts == split_parts(list(reversed(keys)))
    assert sum(part == CHOOSE for part in parts.values()) == 3
    # pinned: a salted hash() or another digest would move these (the set must match across machines)
    assert split_parts(["p/a.jpg", "p/b.jpg", "p/c.jpg", "p/d.jpg"]) == {
        "p/a.jpg": CHOOSE, "p/b.jpg": CHOOSE, "p/c.jpg": REPORT, "p/d.jpg": REPORT}
    assert draw_int("0:x", 0, 1000) == 996 and draw_int("seed:key", 512, 1024) == 860


def test_tiles_are_32x32_pngs_of_their_boxes(tmp_path: Path, sources) -> None:
    settings = TileSettings()
    manifest = _build(tmp_path / "set", sources)
    out = tmp_path / "set"
    sizes = {f"a_{Path(n).stem}": (w, h) for n, w, h, _ in PHOTOS_A}
    for photo in manifest["photos"]:
        width, height = photo["width"], photo["height"]
        expected = sum(count for divisor, count in zip(settings.divisors, settings.counts, strict=True)
                       if min(width, height) // divisor >= settings.size)
        assert len(photo["tiles"]) == expected
        if photo["id"] in sizes:
            assert (width, height) == sizes[photo["id"]]
        source = Image.open(Path(sources[photo["package"]].root) / photo["path"]).convert("RGB")
        for row in photo["tiles"]:
            tile = Image.open(out / row["file"])
            assert (tile.format, tile.size, tile.mode) == ("PNG", (32, 32), "RGB")
            left, top, right, bottom = row["box"]
            assert right - left == bottom - top == min(width, height) // row["divisor"]
            assert left >= 0 and right <= width and top >= 0 and bottom <= height
            assert np.array_equal(np.asarray(tile), np.asarray(cut_tile(source, tuple(row["box"]), settings)))
    small = next(p for p in manifest["photos"] if p["id"] == "a_a5")  # 100x60: no half- or quarter-scale tile
    assert [row["divisor"] for row in small["tiles"]] == [1]
    assert sum(manifest["counts"]["tiles"].values()) == len(list(out.glob("*/tiles/REAL/*.png")))


def test_tile_positions_are_seeded() -> None:
    settings = TileSettings()
    boxes = tile_boxes(640, 480, "p", 0, settings)
    assert [(d, k) for d, k, _ in boxes] == [(1, 0)] + [(2, k) for k in range(4)] + [(4, k) for k in range(8)]
    assert boxes == tile_boxes(640, 480, "p", 0, settings)
    assert boxes != tile_boxes(640, 480, "p", 1, settings)
    assert boxes != tile_boxes(640, 480, "q", 0, settings)
    with pytest.raises(ConfigError, match="one count per divisor"):
        tile_boxes(640, 480, "p", 0, TileSettings(divisors=(1, 2), counts=(1,)))


def test_whole_files_are_copied_byte_identical(tmp_path: Path, sources) -> None:
    manifest = _build(tmp_path / "set", sources)
    assert len(manifest["photos"]) == len(PHOTOS_A) + len(PHOTOS_B) + 2
    for photo in manifest["photos"]:
        source = Path(sources[photo["package"]].root) / photo["path"]
        copy = tmp_path / "set" / photo["whole"]
        assert copy.parent == tmp_path / "set" / photo["part"] / "whole" / "REAL"
        assert copy.read_bytes() == source.read_bytes()
        assert photo["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert photo["bytes"] == source.stat().st_size


def test_exclusions_are_honoured_and_recorded(tmp_path: Path, sources) -> None:
    manifest = _build(tmp_path / "set", sources)
    reasons = {row["path"]: row["reason"] for row in manifest["excluded"]}
    assert reasons[f"{FOLDER}/render.png"] == "render"
    assert reasons[f"{FOLDER}/patterns/p0.jpg"] == "abstract pattern"
    assert reasons[f"{FOLDER}/a0_small.jpg"].startswith("link to another file")
    assert manifest["unreviewed"] == [f"pkg-a/{FOLDER}/new_in_this_version.jpg"]
    written = {p.stem for p in (tmp_path / "set").rglob("*.*")}
    for stem in ("a_render", "a_p0", "a_patterns", "a_new_in_this_version", "a_a0_small", "a_notes"):
        assert not any(name == stem or name.startswith(f"{stem}_s") for name in written), stem
    assert {p["path"] for p in manifest["photos"] if p["package"] == "pkg-a"} == {
        f"{FOLDER}/{name}" for name in PACKAGE_A.kept}
    on_disk = json.loads((tmp_path / "set" / photos.MANIFEST).read_text())
    assert on_disk["excluded"] == manifest["excluded"] and on_disk["builder"]["version"] == photos.BUILDER_VERSION


def test_a_photo_in_two_packages_is_used_once(tmp_path: Path, sources) -> None:
    (Path(sources["pkg-b"].root) / FOLDER / "b0.jpg").write_bytes(
        (Path(sources["pkg-a"].root) / FOLDER / "a0.jpg").read_bytes())
    manifest = _build(tmp_path / "set", sources)
    assert "b_b0" not in {p["id"] for p in manifest["photos"]}
    assert {"package": "pkg-b", "path": f"{FOLDER}/b0.jpg", "reason": "the same bytes as a_a0"} in manifest["excluded"]


def test_rerendered_fakes_are_photo_sized_jpegs_and_deterministic(tmp_path: Path, sources) -> None:
    root = _cifake_root(tmp_path / "cifake")
    first = _build(tmp_path / "one", sources, cifake_root=root, fakes=5, rendering=Rendering(fakes=SMALL_FAKES))
    second = _build(tmp_path / "two", sources, cifake_root=root, fakes=5, rendering=Rendering(fakes=SMALL_FAKES))
    fakes = first[photos.FAKES_FOLDER]
    assert fakes["count"] == first["counts"]["fakes"] == 5
    assert tuple(fakes["settings"]["sides"]) == (64, 96)
    files = sorted((tmp_path / "one" / photos.FAKES_FOLDER / "FAKE").iterdir())
    assert len(files) == 5
    for row in fakes["files"]:
        image = Image.open(tmp_path / "one" / row["file"])
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert image.size == (row["side"], row["side"]) and 64 <= row["side"] <= 96
        assert 85 <= row["quality"] <= 95 and row["filter"] in ("bicubic", "lanczos")
        assert Path(row["file"]).stem == Path(row["source"]).stem
        assert (root / row["source"]).is_file()
    assert fakes["files"] == second[photos.FAKES_FOLDER]["files"]
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    # the sample of 3 is the first 3 of the sample of 5; another seed draws another sample
    listing = photos.cifake_fakes(root)
    assert sample_fakes(listing, 3, 0) == sample_fakes(listing, 5, 0)[:3]
    assert sample_fakes(listing, 5, 0) != sample_fakes(listing, 5, 1)


def test_default_fake_settings_give_photo_sizes(tmp_path: Path) -> None:
    image = Image.fromarray(_picture(np.random.default_rng(0), 32, 32))
    data, choices = photos.rerender(image, "0 (2).jpg", 0, FakeSettings())
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG" and 512 <= decoded.width == decoded.height <= 1024
    assert decoded.width == choices["side"] and 85 <= choices["quality"] <= 95
    assert photos.rerender(image, "0 (2).jpg", 0, FakeSettings()) == (data, choices)


def test_missing_or_empty_sources_are_told_clearly(tmp_path: Path, sources) -> None:
    with pytest.raises(DataError, match="no folder usr/share/backgrounds/test"):
        select_photos(tmp_path / "nowhere", PACKAGE_A)
    (tmp_path / "empty" / FOLDER).mkdir(parents=True)
    with pytest.raises(DataError, match="holds no image file"):
        select_photos(tmp_path / "empty", PACKAGE_A)
    (Path(sources["pkg-b"].root) / FOLDER / "b1.jpg").unlink()
    with pytest.raises(DataError, match="kept photo.*missing.*b1.jpg.*another version"):
        _build(tmp_path / "set", sources)
    assert not (tmp_path / "set").exists() and not (tmp_path / "set.partial").exists()
    with pytest.raises(DataError, match="no source for pkg-b"):
        build_set(tmp_path / "set", {"pkg-a": sources["pkg-a"]},
                  packages=Packages(chosen=(PACKAGE_A, PACKAGE_B), heldout=()))


def test_bad_cifake_and_out_folders_are_told_clearly(tmp_path: Path, sources) -> None:
    with pytest.raises(DataError, match="no test/FAKE folder"):
        _build(tmp_path / "set", sources, cifake_root=tmp_path / "nowhere", fakes=3)
    (tmp_path / "hollow" / "test" / "FAKE").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no image"):
        _build(tmp_path / "set", sources, cifake_root=tmp_path / "hollow", fakes=3)
    with pytest.raises(ConfigError, match="holds only 12 images; pass --fakes 12"):
        _build(tmp_path / "set", sources, cifake_root=_cifake_root(tmp_path / "cifake"), fakes=13)
    with pytest.raises(ConfigError, match="needs CIFAKE"):
        _build(tmp_path / "set", sources, fakes=3)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        _build(tmp_path / "full", sources)
    with pytest.raises(ConfigError, match="inside the checkout.*never be committed"):
        _build(tmp_path / "repo" / "photoset", sources, checkout=tmp_path / "repo")


def test_the_reviewed_lists_hold_together() -> None:
    for package in (*PACKAGES, *EXTRA_PACKAGES):
        assert len(set(package.kept)) == len(package.kept), package.name
        assert all(photos._excluded_reason(package, rel) is None for rel in package.kept), package.name
        assert all(reason.strip() for reason in package.excluded.values()), package.name
    ids = [photo_id(p, rel) for p in (*PACKAGES, *EXTRA_PACKAGES) for rel in p.kept]
    assert len(ids) == len(set(ids))
    assert {p.name for p in PACKAGES} == {"mate-backgrounds", "lomiri-wallpapers-16.04"}


def test_tool_says_how_to_pass_debs(tmp_path: Path, monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        tool.cli(["--out", str(tmp_path / "set"), "--debs", str(tmp_path), "--fakes", "0"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no mate-backgrounds_*.deb")
    monkeypatch.setattr(tool.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get is not available.*--debs"):
        tool.download(["mate-backgrounds"], tmp_path)
    monkeypatch.setattr(tool.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(tool, "_run", lambda *a, **k: subprocess.CompletedProcess(
        a, 100, "", "E: Failed to fetch http://deb.debian.org/... Temporary failure resolving\n"))
    with pytest.raises(DataError, match="apt-get download failed .*Temporary failure resolving.*pass the folder "
                                        "with --debs"):
        tool.download(["mate-backgrounds"], tmp_path)
