"""Build the photo set of issue 39 (docs/photos.md): real photographs from Debian wallpaper packages,
whole and as 32x32 tiles, split into ``choose`` and ``report`` by source photograph, plus CIFAKE
fakes re-rendered as photos. Nothing of it is committed: it goes to ``--out``, outside the checkout.

    python -m cifake.tools.photos --out /tmp/photoset [--cifake ROOT] [--fakes 2000] [--seed 0]
                                  [--debs DIR] [--no-extra]
    python -m cifake.tools.photos --train-extra /tmp/photo_train [--seed 0] [--debs DIR]

``--train-extra`` writes instead the tiles to train on (``data.extra_train``) from other packages
(:mod:`cifake.data.train_photos`).

Without ``--debs`` it downloads the packages with ``apt-get download`` into a temporary folder;
either way it extracts them with ``dpkg -x`` there. The selection, split, tiling and re-rendering
are in :mod:`cifake.data.photos`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cifake.core.errors import ConfigError, DataError, report, user_message
from cifake.data import photos
from cifake.data.photos import EXTRA_PACKAGES, PACKAGES, Source
from cifake.data.train_photos import TRAIN_PACKAGES, build_train_extra

CHECKOUT = Path(__file__).resolve().parents[2]


def _run(command: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def download(names: Sequence[str], folder: Path) -> list[Path]:
    """``apt-get download`` each package of ``names`` into ``folder``; :class:`DataError` saying how to
    pass ``--debs`` when it fails (no network, no apt)."""
    how = (f"download them where there is a network (apt-get download {' '.join(names)}) and pass the folder "
           f"with --debs")
    if shutil.which("apt-get") is None:
        raise DataError(f"apt-get is not available here to download the packages: {how}")
    done = _run(["apt-get", "download", *names], cwd=folder)
    if done.returncode != 0:
        raise DataError(f"apt-get download failed ({_last_line(done.stderr)}): {how}")
    return find_debs(names, folder)


def find_debs(names: Sequence[str], folder: Path) -> list[Path]:
    """The ``<name>_<version>_<arch>.deb`` of each package in ``folder`` (the newest name when there are
    several); :class:`DataError` naming what is missing."""
    found, missing = [], []
    for name in names:
        debs = sorted(Path(folder).glob(f"{name}_*.deb"))
        if not debs:
            missing.append(name)
        else:
            found.append(debs[-1])
    if missing:
        raise DataError(f"no {' or '.join(f'{name}_*.deb' for name in missing)} in {folder}: download with "
                        f"apt-get download {' '.join(missing)}, or pass --no-extra to build without the "
                        f"held-out package")
    return found


def extract(deb: Path, folder: Path) -> Source:
    """``dpkg -x`` ``deb`` into ``folder``, with its version from ``dpkg-deb -f``."""
    if shutil.which("dpkg") is None:
        raise DataError(f"dpkg is not available here to extract {deb.name}: run the tool on Debian or Ubuntu")
    folder.mkdir(parents=True, exist_ok=True)  # dpkg -x creates only the last folder
    done = _run(["dpkg", "-x", str(deb), str(folder)])
    if done.returncode != 0:
        raise DataError(f"dpkg -x {deb} failed ({_last_line(done.stderr)}): download the package again")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip() or "unknown"
    return Source(root=folder, version=version, deb=deb.name)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse the command line, fetch and extract the packages, build the set and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="the photo set: a new folder outside the checkout")
    target.add_argument("--train-extra", type=Path,
                        help="instead, the tiles to train on (data.extra_train): a new folder outside the checkout")
    parser.add_argument("--debs", type=Path, help="a folder with the .deb files already downloaded")
    parser.add_argument("--cifake", type=Path, default=os.environ.get("CIFAKE_ROOT") or None,
                        help="the extracted CIFAKE folder (default: $CIFAKE_ROOT); without it, no re-rendered fakes")
    parser.add_argument("--fakes", type=int, default=2000, help="CIFAKE test/FAKE images to re-render (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the tile positions and the fakes")
    parser.add_argument("--no-extra", action="store_true",
                        help=f"leave out the held-out package ({', '.join(p.name for p in EXTRA_PACKAGES)})")
    args = parser.parse_args(argv)
    if args.train_extra is not None:
        return _train_extra(args)
    fakes = args.fakes
    if args.cifake is None and fakes:
        print("no --cifake and no CIFAKE_ROOT: building without re-rendered fakes")
        fakes = 0
    packages = [*PACKAGES, *([] if args.no_extra else EXTRA_PACKAGES)]
    names = [p.name for p in packages]
    photos.check_out(args.out, CHECKOUT)  # before a download, not after
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cifake-photos-") as tmp:
        if args.debs is not None:
            debs = find_debs(names, args.debs)
        else:
            print(f"downloading {', '.join(names)} ...")
            debs = download(names, Path(tmp))
        fetched = time.perf_counter()
        sources = {name: extract(deb, Path(tmp) / "x" / name) for name, deb in zip(names, debs, strict=True)}
        extracted = time.perf_counter()
        manifest = photos.build_set(args.out, sources, seed=args.seed, cifake_root=args.cifake, fakes=fakes,
                                    checkout=CHECKOUT)
    done = time.perf_counter()
    for name, source in sources.items():
        print(f"{name} {source.version} ({source.deb})")
    print("\n".join(photos.summary_lines(manifest)))
    print(f"wrote {args.out} in {done - start:.1f} s ({'read' if args.debs else 'download'} {fetched - start:.1f} s, "
          f"extract {extracted - fetched:.1f} s, build {done - extracted:.1f} s)")
    return manifest


def _fetch(names: Sequence[str], debs_folder: Path | None, tmp: Path) -> dict[str, Source]:
    """Each package of ``names`` from ``debs_folder`` (or downloaded into ``tmp``), extracted under ``tmp``."""
    if debs_folder is not None:
        debs = find_debs(names, debs_folder)
    else:
        print(f"downloading {', '.join(names)} ...")
        debs = download(names, tmp)
    return {name: extract(deb, tmp / "x" / name) for name, deb in zip(names, debs, strict=True)}


def _train_extra(args: argparse.Namespace) -> dict:
    photos.check_out(args.train_extra, CHECKOUT)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cifake-photos-") as tmp:
        sources = _fetch([p.name for p in TRAIN_PACKAGES], args.debs, Path(tmp))
        manifest = build_train_extra(args.train_extra, sources, seed=args.seed, checkout=CHECKOUT)
    for name, source in sources.items():
        print(f"{name} {source.version} ({source.deb})")
    print(f"wrote {manifest['counts']['tiles']} tiles of {manifest['counts']['photos']} photos to "
          f"{args.train_extra / photos.REAL_CLASS} in {time.perf_counter() - start:.1f} s; train with "
          f"data.extra_train={args.train_extra}")
    return manifest


def cli(argv: Sequence[str] | None = None) -> None:
    """:func:`main`, with a mistake the user can fix told as one ``error:`` line, exit status 2."""
    try:
        main(argv)
    except (ConfigError, DataError, OSError) as err:
        message = user_message(err)
        if message is None:
            raise
        report(message, to_log=False)


if __name__ == "__main__":
    cli(sys.argv[1:])
