"""Delete the cache versions that no running job holds: ``python -m cifake.data.prune [CACHE_DIR]``.

Runs never delete each other's caches: versions for other files or settings (decoded arrays per
image size, demo data per setting, extracted archives) live side by side until this command removes
them. It skips every version a running job reads (:func:`cifake.data.locking.hold`) or builds (its
build lock, ``.partial`` folders included), and with ``--days N`` also those used in the last N days.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

from cifake.core.atomic import human
from cifake.data.locking import BUILD_SUFFIX, USE_SUFFIX, last_used, unused

log = logging.getLogger(__name__)

KINDS = ("decoded", "extracted", "demo")  # the folders under the cache folder that hold versions


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except (FileNotFoundError, AttributeError):
                continue
    return total


def versions(cache_dir: Path) -> list[Path]:
    """Every version folder (whole or half-built) under ``cache_dir``'s ``decoded/``, ``extracted/`` and ``demo/``."""
    found = []
    for kind in KINDS:
        parent = Path(cache_dir) / kind
        if parent.is_dir():
            found += sorted(p for p in parent.iterdir()  # demo/'s earlier layout kept its splits there, unversioned
                            if p.is_dir() and not p.name.endswith((BUILD_SUFFIX, USE_SUFFIX))
                            and p.name not in ("train", "test"))
    return found


def prune(cache_dir: Path, days: float = 0.0, dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """Delete the versions under ``cache_dir`` that no process holds or builds and that were last used
    more than ``days`` days ago. Returns (deleted, kept); ``dry_run`` deletes nothing."""
    deleted, kept = [], []
    cutoff = time.time() - days * 86400
    for folder in versions(cache_dir):
        if last_used(folder) > cutoff:
            kept.append(folder)
            continue
        with unused(folder) as free:
            if not free:
                kept.append(folder)
                continue
            if not dry_run:
                shutil.rmtree(folder)
            deleted.append(folder)
    return deleted, kept


def main(argv: list[str] | None = None) -> int:
    """The command line: prune ``CACHE_DIR`` (default: ``CIFAKE_CACHE_DIR``, else ``.cache/cifake``)."""
    parser = argparse.ArgumentParser(prog="python -m cifake.data.prune", description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", nargs="?", default=os.environ.get("CIFAKE_CACHE_DIR", ".cache/cifake"),
                        help="the cache folder (paths.cache_dir); default: CIFAKE_CACHE_DIR, else .cache/cifake")
    parser.add_argument("--days", type=float, default=0.0, help="keep versions used in the last DAYS days")
    parser.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache_dir).expanduser()
    if not cache_dir.is_dir():
        parser.error(f"{cache_dir} is not a folder; pass the cache folder (paths.cache_dir, CIFAKE_CACHE_DIR)")
    sizes = {folder: _size(folder) for folder in versions(cache_dir)}
    deleted, kept = prune(cache_dir, args.days, args.dry_run)
    for folder in deleted:
        print(f"{'would delete' if args.dry_run else 'deleted'} {folder} ({human(sizes.get(folder, 0))})")
    for folder in kept:
        print(f"kept {folder} ({human(sizes.get(folder, 0))}): in use, being built or used in the last {args.days:g} "
              "days")
    print(f"{'would free' if args.dry_run else 'freed'} {human(sum(sizes.get(f, 0) for f in deleted))}; "
          f"{len(kept)} version(s) kept, {human(sum(sizes.get(f, 0) for f in kept))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
