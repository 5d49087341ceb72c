"""Real photographs from outside CIFAR-10 to train on (``data.extra_train``, issue 39): 32x32 tiles cut
from the camera photographs of Debian packages that the photo set (:mod:`cifake.data.photos`) does not
use, so that no photograph is both trained on and measured on.

CIFAKE's REAL class is CIFAR-10 alone; a network trained on it learns CIFAR-10's content and its one path
to 32x32, and calls other photographs of smooth skies or saturated colours FAKE. These tiles show it
other real photographs reaching 32x32 the way CIFAR-sized images are made (a square crop, shrunk with an
antialiasing filter), at more scales and positions than the photo set cuts, since they are training data.
Each photo also gives whole views, squashed to 32x32 as a whole file given to ``cifake-predict`` is
(:func:`whole_boxes`). Built by ``python -m cifake.tools.photos --train-extra <folder>``; written as
``<folder>/REAL/<id>_s<d>_<k>.png`` (tiles) and ``<id>_w_<k>.png`` (whole views) with a manifest, never into the
checkout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cifake.core.atomic import bytes_on_disk, check_space
from cifake.core.digest import file_sha256
from cifake.core.errors import DataError
from cifake.data.photos import (
    REAL_CLASS,
    Source,
    SourcePackage,
    TileSettings,
    check_out,
    cut_tile,
    draw_int,
    open_photo,
    photo_id,
    select_photos,
    tile_boxes,
    write_manifest,
    written_whole,
)

BUILDER_VERSION = 2
TRAIN_SETTING = "--train-extra"
TILE_BYTES = 3_400

# Every image under each folder was looked at; the kept ones are camera photographs in colour. The
# photo set's packages (mate-backgrounds, lomiri-wallpapers-16.04, plasma-workspace-wallpapers) are not
# among these, and no kept file has the bytes of one of theirs (checked when the set was made).
TRAIN_PACKAGES: tuple[SourcePackage, ...] = (
    SourcePackage(
        name="opencv-doc", short="opencv", folder="usr/share/doc/opencv-doc/examples",
        kept=("alphamat/input_images/plant.jpg", "data/aero1.jpg", "data/aero3.jpg", "data/aloeL.jpg",
              "data/apple.jpg", "data/baboon.jpg", "data/board.jpg", "data/building.jpg", "data/butterfly.jpg",
              "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png", "data/home.jpg", "data/left.jpg",
              "data/leuvenA.jpg", "data/messi5.jpg", "data/orange.jpg", "data/right.jpg", "data/rubberwhale1.png",
              "data/squirrel_cls.jpg", "data/stuff.jpg", "dnn_superres/butterfly.png", "hfs/data/000.jpg",
              "hfs/data/001.jpg", "hfs/data/002.jpg", "reg/home.png", "text/scenetext01.jpg",
              "text/scenetext02.jpg", "text/scenetext03.jpg", "text/scenetext04.jpg", "text/scenetext05.jpg",
              "text/scenetext06.jpg", "text/scenetext_segmented_word01.jpg", "text/scenetext_segmented_word02.jpg",
              "text/scenetext_segmented_word03.jpg", "text/scenetext_segmented_word04.jpg",
              "text/scenetext_segmented_word05.jpg"),
        excluded={
            "data/aloeR.jpg": "the other view of a stereo pair (aloeL is kept)",
            "data/leuvenB.jpg": "the same street as leuvenA, moved a step",
            "data/rubberwhale2.png": "the next frame of rubberwhale1",
            "data/ela_modified.jpg": "ela_original with a figure pasted in",
            "data/graf3.png": "graf1 seen from another angle",
            "data/licenseplate_motion.jpg": "synthetic motion blur",
            "*": "not a colour camera photograph (renders, logos, drawings, test patterns, grey-level and chessboard "
                 "calibration images, pages of text, tutorial figures), or smaller than 200 px",
        },
    ),
    SourcePackage(
        name="lomiri-wallpapers-20.04", short="lomiri20", folder="usr/share/backgrounds",
        kept=("Kleiber_by_Lukas_Baubkus.jpg",),
        excluded={
            "Fossa_by_Jasper_Roks.jpg": "render: a drawn fox over gradients",
            "Infinite-Sea_by_Aury88.jpg": "a heavily edited night-sky composite",
            "Painting-Colors_by__herobrine7gamer.jpg": "render: coloured bands",
        },
    ),
)

# Many crops per photo at six scales: about 230 tiles from a large photo, 8.6k from these 38.
TRAIN_TILES = TileSettings(divisors=(1, 2, 3, 4, 6, 8), counts=(1, 8, 16, 32, 64, 96))
# Whole files as cifake-predict sees them: the full frame squashed to 32x32 (cifake.data.decode resizes a
# file whole, keeping no aspect ratio), then near-whole views of it, each side WHOLE_LEAST to all of the
# photo's at a drawn position, squashed the same way. Square tiles never show the network that path: the
# 1-epoch fine-tune on tiles alone moved the photo set's tiles and left its whole files where they were.
WHOLE_VIEWS = 24
WHOLE_LEAST = 0.7


def whole_boxes(width: int, height: int, key: str, seed: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(k, (left, top, right, bottom))`` of the :data:`WHOLE_VIEWS` whole views of a photo: ``k=0`` the
    full frame, the others near-whole boxes drawn from ``seed`` and ``key`` (the photo id)."""
    boxes = [(0, (0, 0, width, height))]
    for k in range(1, WHOLE_VIEWS):
        w = draw_int(f"{seed}:{key}:w{k}:w", math.ceil(WHOLE_LEAST * width), width)
        h = draw_int(f"{seed}:{key}:w{k}:h", math.ceil(WHOLE_LEAST * height), height)
        left, top = draw_int(f"{seed}:{key}:w{k}:x", 0, width - w), draw_int(f"{seed}:{key}:w{k}:y", 0, height - h)
        boxes.append((k, (left, top, left + w, top + h)))
    return boxes


def build_train_extra(out: Path, sources: Mapping[str, Source], *, seed: int,
                      checkout: Path | None = None) -> dict[str, Any]:
    """Write the tiles of :data:`TRAIN_PACKAGES` (``sources``: each package's extracted folder) into
    ``out/REAL/`` (whole: into ``<out>.partial``, renamed at the end) and return the manifest."""
    out = Path(out)
    check_out(out, checkout)
    missing = [pkg.name for pkg in TRAIN_PACKAGES if pkg.name not in sources]
    if missing:
        raise DataError(f"no source for {', '.join(missing)}: pass its .deb with --debs, or let the tool download it")
    with written_whole(out) as partial:
        (partial / REAL_CLASS).mkdir()
        photos, excluded, unreviewed = [], [], []
        jobs = []
        for pkg in TRAIN_PACKAGES:
            selection = select_photos(sources[pkg.name].root, pkg)
            excluded += selection.excluded
            unreviewed += [f"{pkg.name}/{pkg.folder}/{rel}" for rel in selection.unreviewed]
            jobs += [(pkg, rel) for rel in selection.kept]
        # at most every scale's tiles of every photo, each a 32x32 RGB PNG of at most 3 kB of pixels plus headers
        tiles_at_most = len(jobs) * (sum(TRAIN_TILES.counts) + WHOLE_VIEWS)
        check_space(partial, bytes_on_disk([TILE_BYTES] * tiles_at_most, partial), "the training tiles", TRAIN_SETTING,
                    files=tiles_at_most)
        for pkg, rel in tqdm(jobs, desc="photos", unit="photo", mininterval=1):
            path = Path(sources[pkg.name].root) / pkg.folder / rel
            pid = photo_id(pkg, rel)
            image = open_photo(path)
            tiles = tile_boxes(image.width, image.height, pid, seed, TRAIN_TILES)
            for divisor, k, box in tiles:
                cut_tile(image, box, TRAIN_TILES).save(partial / REAL_CLASS / f"{pid}_s{divisor}_{k}.png", format="PNG")
            views = whole_boxes(image.width, image.height, pid, seed)
            for k, box in views:
                cut_tile(image, box, TRAIN_TILES).save(partial / REAL_CLASS / f"{pid}_w_{k}.png", format="PNG")
            photos.append({"id": pid, "package": pkg.name, "path": f"{pkg.folder}/{rel}", "sha256": file_sha256(path),
                           "width": image.width, "height": image.height, "tiles": len(tiles) + len(views)})
        manifest = {
            "builder": {"module": __name__, "version": BUILDER_VERSION, "seed": seed, "tiles": asdict(TRAIN_TILES),
                        "whole_views": {"count": WHOLE_VIEWS, "least": WHOLE_LEAST}},
            "packages": {pkg.name: {"version": sources[pkg.name].version, "deb": sources[pkg.name].deb}
                         for pkg in TRAIN_PACKAGES},
            "photos": photos, "excluded": excluded, "unreviewed": unreviewed,
            "counts": {"photos": len(photos), "tiles": sum(p["tiles"] for p in photos)},
        }
        write_manifest(partial, manifest)
    return manifest
