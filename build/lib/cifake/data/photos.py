"""The photo set of issue 39: real photographs from outside CIFAKE, and CIFAKE fakes re-rendered as
photos, to measure whether the detector calls real photos FAKE and still calls re-rendered fakes FAKE.

Built by ``python -m cifake.tools.photos`` (which downloads and extracts the Debian packages) into a
folder the user names, never into the checkout. From extracted packages this module:

* picks the real photographs of each package by explicit, reviewed lists (:data:`PACKAGES`): the
  paths kept, and the files left out with a reason each (renders, abstract patterns, illustrations);
* splits them by source photograph into ``choose`` (used for decisions) and ``report`` (only
  reported), half each per package, by a SHA-256 of package and path; a package of
  :data:`EXTRA_PACKAGES` goes whole into ``heldout``;
* writes each photo twice: the file unchanged (``<part>/whole/REAL/<id>.<ext>``, what a user gives
  ``cifake-predict``) and 32x32 PNG tiles cut at several scales (``<part>/tiles/REAL/<id>_s<d>_<k>.png``);
* re-renders a sample of CIFAKE's ``test/FAKE`` as photos (upscaled, saved as JPEG) into
  ``rerendered_fakes/FAKE/``;
* records all of it in ``manifest.json``.

Every random choice (tile positions, the fake sample, each fake's size, filter and quality) is an
integer drawn from a SHA-256 of the seed and a name, so the set is the same on every machine and
Python or NumPy version, and one photo's or fake's choices do not depend on the others.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from cifake.core.atomic import atomic_path, bytes_on_disk, check_space
from cifake.core.digest import file_sha256
from cifake.core.errors import ConfigError, DataError
from cifake.data.scan import IMAGE_SUFFIXES

BUILDER_VERSION = 1
CHOOSE, REPORT, HELDOUT = "choose", "report", "heldout"
REAL_CLASS, FAKE_CLASS = "REAL", "FAKE"
FAKES_FOLDER = "rerendered_fakes"
MANIFEST = "manifest.json"
OUT_SETTING = "--out"


@dataclass(frozen=True)
class SourcePackage:
    """A Debian package of wallpapers: where its images are (``folder``, inside the package), the
    images kept as real photographs (``kept``, paths under ``folder``) and the ones left out
    (``excluded``: a path or ``fnmatch`` pattern under ``folder`` -> why). ``short`` prefixes
    photo ids; ``id_from_folder``: each photo is the one file of its own folder, which names it. An
    image file under ``folder`` that is neither kept nor excluded is "unreviewed": left out, and
    listed in the manifest so that a new package version gets looked at."""

    name: str
    short: str
    folder: str
    kept: tuple[str, ...]
    excluded: Mapping[str, str] = field(default_factory=dict)
    id_from_folder: bool = False


# The two packages of issue 39. Every image was looked at whole and at full resolution; the kept
# ones are camera photographs (some with a camera's EXIF), the excluded ones are not.
PACKAGES: tuple[SourcePackage, ...] = (
    SourcePackage(
        name="mate-backgrounds", short="mate", folder="usr/share/backgrounds/mate/nature",
        kept=("Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg",
              "LadyBird.jpg", "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg"),
        excluded={},
    ),
    SourcePackage(
        name="lomiri-wallpapers-16.04", short="lomiri16", folder="usr/share/backgrounds",
        kept=("Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
              "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
              "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
              "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
              "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg"),
        excluded={
            "umang_by_Abhishek_Mudgal.jpg": "render: computer-drawn colour gradients and a curved sheet, no photograph",
            "analogpattern_by_Peter_Nerlich.jpg": "abstract pattern: a textured surface close up, washed with "
                                                  "purple and green tints (heavily edited)",
        },
    ),
)

_PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                  "Kite", "OneStandsOut", "Path", "summer_1am")
_PLASMA_RENDERS = {
    "Altai": "render: low-poly mountains and lake", "Autumn": "illustration: a painted tree and a figure",
    "Canopee": "render: a 3-D road over hexagons", "Cascade": "render: low-poly terrain",
    "Cluster": "render: hexagons over a star field", "Elarun": "render: abstract curves",
    "Flow": "render: a hexagon map", "FlyingKonqui": "illustration: the KDE mascot",
    "Honeywave": "render: abstract shapes", "IceCold": "render: low-poly ice",
    "Kay": "render: geometric bands", "Kokkini": "render: abstract curves",
    "MilkyWay": "render: particles on a gradient", "Opal": "render: geometric facets",
    "PastelHills": "render: low-poly hills", "Patak": "render: geometric shapes on a grid",
    "SafeLanding": "illustration: a painted landscape with a rocket", "Shell": "render: low-poly folds",
    "Volna": "render: low-poly shore",
}

# Extra held-out photographs (Debian 12's Plasma 5.27 wallpapers): never chosen on, all in ``heldout``.
# Each wallpaper folder holds one real file; its other sizes are symbolic links to it (skipped as links).
EXTRA_PACKAGES: tuple[SourcePackage, ...] = (
    SourcePackage(
        name="plasma-workspace-wallpapers", short="plasma", folder="usr/share/wallpapers", id_from_folder=True,
        kept=tuple(f"{name}/contents/images/2560x1600.jpg" for name in _PLASMA_PHOTOS),
        excluded={
            "*/contents/screenshot.*": "preview thumbnail of the wallpaper in the same folder",
            **{f"{name}/*": reason for name, reason in _PLASMA_RENDERS.items()},
        },
    ),
)


@dataclass(frozen=True)
class TileSettings:
    """How tiles are cut: for each divisor ``d`` of ``divisors``, ``counts[i]`` square crops of side
    short side / d at positions drawn from the seed, each resized to ``size`` x ``size`` with Pillow's
    ``resample`` filter and saved as PNG. Pillow's BICUBIC is antialiased when it shrinks (its kernel
    widens with the factor), like MATLAB's ``imresize`` and torchvision's antialiased resize, and it is
    the filter the detector itself shrinks whole files with (``data.resample``). No ``reducing_gap``:
    its box pre-reduction saves about 30 ms a tile but moves pixels by up to 6 levels, and the tiles of
    the whole set take seconds either way. A scale whose crop would be smaller than ``size`` is skipped
    (that would be an upscale, not how CIFAR-sized images are made)."""

    divisors: tuple[int, ...] = (1, 2, 4)
    counts: tuple[int, ...] = (1, 4, 8)
    size: int = 32
    resample: str = "bicubic"


@dataclass(frozen=True)
class FakeSettings:
    """How CIFAKE fakes are re-rendered as photos: a square ``side`` x ``side`` upscale with ``side``
    uniform in ``sides`` (inclusive; CIFAKE images are square), a filter drawn from ``filters`` per
    image, then JPEG at a quality uniform in ``qualities`` (inclusive), Pillow's default 4:2:0 chroma
    subsampling, as cameras and web pipelines save photographs."""

    sides: tuple[int, int] = (512, 1024)
    filters: tuple[str, ...] = ("bicubic", "lanczos")
    qualities: tuple[int, int] = (85, 95)


@dataclass(frozen=True)
class Packages:
    """The packages a set is built from: ``chosen``, whose photos split into the ``choose`` and ``report``
    parts, and ``heldout``, whose photos are all ``heldout`` (never used for choices)."""

    chosen: Sequence[SourcePackage] = PACKAGES
    heldout: Sequence[SourcePackage] = EXTRA_PACKAGES


@dataclass(frozen=True)
class Rendering:
    """How a set's images are made: the tiles cut from each photo, and the fakes re-rendered as photos."""

    tiles: TileSettings = TileSettings()
    fakes: FakeSettings = FakeSettings()


_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}


def draw_int(key: str, low: int, high: int) -> int:
    """An integer uniform in ``[low, high]`` drawn from the SHA-256 of ``key``: the same on every
    machine and Python version (``hash()`` is salted per process), independent of other draws."""
    if high < low:
        raise ValueError(f"empty range [{low}, {high}]")
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return low + digest % (high - low + 1)  # bias below 1e-13 for the ranges used here


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def photo_id(package: SourcePackage, rel: str) -> str:
    """A file-name-safe id for a kept photo: the package's short name and ``rel`` without its suffix
    (folders joined by ``-``), or only its first folder with ``id_from_folder`` (Plasma's
    ``Path/contents/images/2560x1600.jpg`` is ``plasma_Path``)."""
    path = Path(rel)
    name = path.parts[0] if package.id_from_folder else path.with_suffix("").as_posix()
    return f"{package.short}_{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}"


def split_parts(keys: Sequence[str]) -> dict[str, str]:
    """``choose`` or ``report`` for each key (``package/path``): the keys ranked by their SHA-256, the
    first half (rounded down) ``choose``, the rest ``report``. Per package, so each package is
    split evenly; a photo added to a package moves at most one other across."""
    ranked = sorted(keys, key=lambda key: (_digest(key), key))
    half = len(ranked) // 2
    return {key: CHOOSE if i < half else REPORT for i, key in enumerate(ranked)}


def _excluded_reason(package: SourcePackage, rel: str) -> str | None:
    for pattern, reason in package.excluded.items():
        if rel == pattern or fnmatch.fnmatchcase(rel, pattern):
            return reason
    return None


@dataclass
class Selection:
    """What :func:`select_photos` found in one extracted package."""

    kept: list[str]
    excluded: list[dict[str, str]]
    unreviewed: list[str]


def select_photos(root: Path, package: SourcePackage) -> Selection:
    """The kept, excluded and unreviewed images of ``package`` extracted under ``root`` (paths
    relative to ``package.folder``). Raises :class:`DataError` when the folder is missing or holds no
    image, and when a kept file is missing (another version of the package: the lists need a look)."""
    folder = Path(root) / package.folder
    if not folder.is_dir():
        raise DataError(f"{package.name}: no folder {package.folder} under {root}: pass the package extracted "
                        f"with dpkg -x (or its .deb with --debs)")
    images = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                    if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir())
    if not images:
        raise DataError(f"{package.name}: {folder} holds no image file: pass the package extracted with dpkg -x "
                        f"(or its .deb with --debs)")
    missing = [rel for rel in package.kept if not (folder / rel).is_file()]
    if missing:
        raise DataError(f"{package.name}: {len(missing)} kept photo(s) missing from {folder} ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}): this is another version of the package; pass the "
                        f"version the lists in cifake/data/photos.py were made from with --debs, or review the lists")
    kept_set = set(package.kept)
    excluded, unreviewed = [], []
    for rel in images:
        if rel in kept_set:
            continue
        reason = _excluded_reason(package, rel)
        if reason is None and (folder / rel).is_symlink():
            reason = "link to another file of the package (another size of the same wallpaper)"
        if reason is None:
            unreviewed.append(rel)
        else:
            excluded.append({"package": package.name, "path": f"{package.folder}/{rel}", "reason": reason})
    return Selection(kept=list(package.kept), excluded=excluded, unreviewed=unreviewed)


def tile_boxes(width: int, height: int, key: str, seed: int,
               settings: TileSettings) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """``(divisor, k, (left, top, right, bottom))`` for each tile of a ``width`` x ``height`` photo:
    squares of side short side / divisor at positions drawn from ``seed`` and ``key`` (the photo id);
    scales whose side would be under ``settings.size`` are left out."""
    if len(settings.divisors) != len(settings.counts):
        raise ConfigError(f"tile divisors {settings.divisors} and counts {settings.counts} differ in length: "
                          f"give one count per divisor")
    short = min(width, height)
    boxes = []
    for divisor, count in zip(settings.divisors, settings.counts, strict=True):
        side = short // divisor
        if side < settings.size:
            continue
        for k in range(count):
            left = draw_int(f"{seed}:{key}:s{divisor}:{k}:x", 0, width - side)
            top = draw_int(f"{seed}:{key}:s{divisor}:{k}:y", 0, height - side)
            boxes.append((divisor, k, (left, top, left + side, top + side)))
    return boxes


def cut_tile(image: Image.Image, box: tuple[int, int, int, int], settings: TileSettings) -> Image.Image:
    """One tile: ``box`` of an RGB image, shrunk to ``settings.size`` square with ``settings.resample``."""
    return image.crop(box).resize((settings.size, settings.size), _FILTERS[settings.resample])


def open_photo(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            # upright as a viewer shows it, as the photos behind CIFAR were; a no-op without EXIF orientation
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(f"{path} cannot be decoded ({type(err).__name__}: {err}): re-extract its package") from err


@dataclass(frozen=True)
class Source:
    """An extracted package: its folder (what ``dpkg -x`` wrote), and where it came from."""

    root: Path
    version: str = "unknown"
    deb: str = ""


def _write_photos(out: Path, packages: Sequence[tuple[SourcePackage, Source, bool]], seed: int,
                  tiles: TileSettings) -> dict[str, Any]:
    """Select, split, copy and tile the photos of ``packages`` (each: package, source, held out?)."""
    selections = {pkg.name: select_photos(src.root, pkg) for pkg, src, _ in packages}
    photos: list[dict[str, Any]] = []
    excluded: list[dict[str, str]] = [row for sel in selections.values() for row in sel.excluded]
    unreviewed = [f"{pkg.name}/{pkg.folder}/{rel}" for pkg, _, _ in packages for rel in selections[pkg.name].unreviewed]
    jobs: list[tuple[SourcePackage, Source, str, str]] = []
    for pkg, src, heldout in packages:
        keys = [f"{pkg.name}/{pkg.folder}/{rel}" for rel in selections[pkg.name].kept]
        parts = {key: HELDOUT for key in keys} if heldout else split_parts(keys)
        jobs += [(pkg, src, rel, parts[key]) for rel, key in zip(selections[pkg.name].kept, keys, strict=True)]
    ids = [photo_id(pkg, rel) for pkg, _, rel, _ in jobs]
    clashes = [i for i, n in Counter(ids).items() if n > 1]
    if clashes:
        raise ValueError(f"photo ids {clashes} are not unique: give the packages different short names")
    seen: dict[str, str] = {}
    for (pkg, src, rel, part), pid in zip(tqdm(jobs, desc="photos", unit="photo", mininterval=1), ids, strict=True):
        path = Path(src.root) / pkg.folder / rel
        digest = file_sha256(path)
        if digest in seen:  # the same photo twice would put it on both sides of the split
            excluded.append({"package": pkg.name, "path": f"{pkg.folder}/{rel}",
                             "reason": f"the same bytes as {seen[digest]}"})
            continue
        seen[digest] = pid
        image = open_photo(path)
        whole = Path(part) / "whole" / REAL_CLASS / f"{pid}{path.suffix.lower()}"
        (out / whole).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / whole)  # unchanged: bytes, metadata and all, as a user would pass it
        tile_rows = []
        for divisor, k, box in tile_boxes(image.width, image.height, pid, seed, tiles):
            tile = Path(part) / "tiles" / REAL_CLASS / f"{pid}_s{divisor}_{k}.png"
            (out / tile).parent.mkdir(parents=True, exist_ok=True)
            cut_tile(image, box, tiles).save(out / tile, format="PNG")
            tile_rows.append({"file": tile.as_posix(), "divisor": divisor, "box": list(box)})
        photos.append({
            "id": pid, "package": pkg.name, "package_version": src.version, "path": f"{pkg.folder}/{rel}",
            "sha256": digest, "bytes": path.stat().st_size, "width": image.width, "height": image.height,
            "part": part, "whole": whole.as_posix(), "tiles": tile_rows,
        })
    return {"photos": photos, "excluded": excluded, "unreviewed": unreviewed}


def cifake_fakes(cifake_root: Path) -> list[Path]:
    """The images of ``<cifake_root>/test/FAKE``, sorted by name; :class:`DataError` when there are none."""
    folder = Path(cifake_root) / "test" / FAKE_CLASS
    if not folder.is_dir():
        raise DataError(f"no test/{FAKE_CLASS} folder under {cifake_root}: pass --cifake the extracted CIFAKE folder "
                        f"(Kaggle layout: train/ and test/, each with FAKE/ and REAL/)")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise DataError(f"{folder} holds no image: pass --cifake the extracted CIFAKE folder")
    return files


def sample_fakes(files: Sequence[Path], n: int, seed: int) -> list[Path]:
    """``n`` of ``files`` ranked by the SHA-256 of seed and name: the same on every machine, and the
    sample of ``n`` is the first ``n`` of any larger one."""
    if n > len(files):
        raise ConfigError(f"--fakes {n}: the folder holds only {len(files)} images; pass --fakes {len(files)} "
                          f"or fewer")
    return sorted(files, key=lambda p: (_digest(f"{seed}:fake:{p.name}"), p.name))[:n]


def rerender(image: Image.Image, key: str, seed: int, settings: FakeSettings) -> tuple[bytes, dict[str, Any]]:
    """``image`` as a photo-sized JPEG (bytes) and the choices made for it, drawn from ``seed`` and ``key``."""
    side = draw_int(f"{seed}:{key}:side", *settings.sides)
    name = settings.filters[draw_int(f"{seed}:{key}:filter", 0, len(settings.filters) - 1)]
    quality = draw_int(f"{seed}:{key}:quality", *settings.qualities)
    big = image.convert("RGB").resize((side, side), _FILTERS[name])
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), {"side": side, "filter": name, "quality": quality}


def _write_fakes(out: Path, cifake_root: Path, n: int, seed: int, settings: FakeSettings) -> dict[str, Any]:
    chosen = sample_fakes(cifake_fakes(cifake_root), n, seed)
    folder = out / FAKES_FOLDER / FAKE_CLASS
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in tqdm(chosen, desc="re-rendered fakes", unit="image", mininterval=1):
        try:
            with Image.open(path) as im:
                im.load()
                data, choices = rerender(im, path.name, seed, settings)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{path} cannot be decoded ({type(err).__name__}: {err}): re-extract CIFAKE") from err
        target = folder / f"{path.stem}.jpg"
        target.write_bytes(data)
        rows.append({"file": target.relative_to(out).as_posix(), "source": f"test/{FAKE_CLASS}/{path.name}",
                     **choices})
    return {"cifake_root": str(cifake_root), "count": len(rows), "settings": asdict(settings), "files": rows}


def _estimate_bytes(packages: Iterable[tuple[SourcePackage, Source, bool]], fakes: int, tiles: TileSettings,
                    settings: FakeSettings) -> list[int]:
    """File sizes to check space for, on the high side: each kept photo, its tiles at 4 KiB (an RGB
    32x32 PNG of noise is 3.1 KiB), each fake at the largest side and 2 bits a pixel (an upscaled
    32x32 image is smooth: JPEG at quality 95 takes well under that)."""
    sizes = []
    for pkg, src, _ in packages:
        folder = Path(src.root) / pkg.folder
        sizes += [(folder / rel).stat().st_size for rel in pkg.kept if (folder / rel).is_file()]
        sizes += [4096] * (sum(tiles.counts) * len(pkg.kept))
    sizes += [settings.sides[1] ** 2 // 4] * fakes
    return sizes


def check_out(out: Path, checkout: Path | None) -> None:
    """Refuse an output folder that already holds files, or one inside ``checkout`` (the set must
    never be committed)."""
    out = Path(out).absolute()
    if checkout is not None and out.is_relative_to(Path(checkout).absolute()):
        raise ConfigError(f"--out {out} is inside the checkout {checkout}: the photo set must never be committed; "
                          f"pass a folder outside it (for example /tmp/photoset)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty: pass a new folder or remove it")


@contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A folder written whole: built in ``<out>.partial`` (one left by an interrupted build is removed
    first), renamed to ``out`` (absent or empty: :func:`check_out`) when the block ends, removed when it fails."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """``folder/manifest.json``, written atomically."""
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


def build_set(out: Path, sources: Mapping[str, Source], *, seed: int = 0, cifake_root: Path | None = None,
              fakes: int = 0, packages: Packages = Packages(), rendering: Rendering = Rendering(),
              checkout: Path | None = None) -> dict[str, Any]:
    """Build the photo set into ``out`` (written whole: into ``<out>.partial``, renamed at the end) and
    return its manifest. ``sources`` maps each package name of ``packages`` (chosen and held out) to its
    extracted folder; a held-out package not in ``sources`` is left out. ``fakes`` CIFAKE
    ``test/FAKE`` images of ``cifake_root`` are re-rendered (none when 0 or no root), as ``rendering.fakes``
    says; tiles are cut as ``rendering.tiles`` says."""
    tiles, fake_settings = rendering.tiles, rendering.fakes
    out = Path(out)
    check_out(out, checkout)
    missing = [pkg.name for pkg in packages.chosen if pkg.name not in sources]
    if missing:
        raise DataError(f"no source for {', '.join(missing)}: pass its .deb with --debs, or let the tool download it")
    if fakes < 0:
        raise ConfigError(f"--fakes {fakes}: pass 0 (no re-rendered fakes) or more")
    if fakes and cifake_root is None:
        raise ConfigError(f"--fakes {fakes} needs CIFAKE: pass --cifake <the extracted folder> (or --fakes 0)")
    chosen = [(pkg, sources[pkg.name], False) for pkg in packages.chosen]
    chosen += [(pkg, sources[pkg.name], True) for pkg in packages.heldout if pkg.name in sources]
    if fakes:
        cifake_fakes(cifake_root)  # a wrong --cifake fails now, not after the photos
    with written_whole(out) as partial:
        sizes = _estimate_bytes(chosen, fakes, tiles, fake_settings)
        check_space(partial, bytes_on_disk(sizes, partial), "the photo set", OUT_SETTING, files=len(sizes))
        manifest: dict[str, Any] = {
            "builder": {"module": __name__, "version": BUILDER_VERSION, "seed": seed, "tiles": asdict(tiles),
                        "split": "per package: paths ranked by the SHA-256 of package/path, the first half "
                                 "(rounded down) choose, the rest report; held-out packages all heldout"},
            "packages": {pkg.name: {"version": sources[pkg.name].version, "deb": sources[pkg.name].deb,
                                    "folder": pkg.folder, "kept": list(pkg.kept), "heldout": heldout}
                         for pkg, _, heldout in chosen},
        }
        started = time.perf_counter()
        manifest.update(_write_photos(partial, chosen, seed, tiles))
        seconds = {"photos": round(time.perf_counter() - started, 1)}
        if fakes:
            started = time.perf_counter()
            manifest[FAKES_FOLDER] = _write_fakes(partial, Path(cifake_root), fakes, seed, fake_settings)
            seconds["fakes"] = round(time.perf_counter() - started, 1)
        manifest["seconds"] = seconds
        manifest["counts"] = counts(manifest)
        write_manifest(partial, manifest)
    return manifest


def counts(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Photos per package and part, tiles per part, excluded and unreviewed files, fakes."""
    photos: dict[str, Counter] = {}
    tiles: Counter = Counter()
    for photo in manifest["photos"]:
        photos.setdefault(photo["package"], Counter())[photo["part"]] += 1
        tiles[photo["part"]] += len(photo["tiles"])
    return {
        "photos": {name: dict(sorted(c.items())) for name, c in photos.items()},
        "tiles": dict(sorted(tiles.items())),
        "excluded": len(manifest["excluded"]),
        "unreviewed": len(manifest["unreviewed"]),
        "fakes": manifest.get(FAKES_FOLDER, {}).get("count", 0),
    }


def summary_lines(manifest: Mapping[str, Any]) -> list[str]:
    """The manifest's counts for people: one line per package, then tiles, exclusions and fakes."""
    c = manifest["counts"]
    lines = []
    for name, parts in c["photos"].items():
        total = sum(parts.values())
        lines.append(f"{name}: {total} photos kept ({', '.join(f'{n} {part}' for part, n in parts.items())})")
    lines.append(f"tiles: {', '.join(f'{n} {part}' for part, n in c['tiles'].items())}")
    lines.append(f"excluded: {c['excluded']} files")
    folders = {name: row["folder"] for name, row in manifest["packages"].items()}
    groups: dict[tuple[str, str], list[str]] = {}
    for row in manifest["excluded"]:
        rel = Path(row["path"]).relative_to(folders[row["package"]]).as_posix()
        groups.setdefault((row["package"], row["reason"]), []).append(rel)
    for (package, reason), names in groups.items():
        shown = ", ".join(names[:2]) + (f", ... ({len(names)} files)" if len(names) > 2 else "")
        lines.append(f"  {package}: {reason}: {shown}")
    if c["unreviewed"]:
        lines.append(f"unreviewed, left out (review them in cifake/data/photos.py): "
                     f"{', '.join(manifest['unreviewed'])}")
    lines.append(f"re-rendered fakes: {c['fakes']}")
    seconds = manifest.get("seconds", {})
    if seconds:
        lines.append(f"seconds: {', '.join(f'{what} {s:.1f}' for what, s in seconds.items())}")
    return lines
