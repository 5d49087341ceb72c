"""Decode a split once into a memory-mapped ``(N, 3, H, W)`` uint8 array, keyed by a
fingerprint of its file list, and reuse it on every later run."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cifake.data.decode import RESAMPLING, decode_into
from cifake.data.locking import build_lock
from cifake.data.scan import SplitListing
from cifake.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cache's format or decoding changes
_CHUNK = 2048  # files per decoder task: large enough to amortise the task, small for the bar


@dataclass(frozen=True)
class DecodedSplit:
    """A decoded split: ``images[i]`` is ``files[i]`` (relative to ``root``) with label ``labels[i]``."""

    images: np.ndarray  # (N, 3, H, W) uint8, a read-only view of the memory-mapped cache
    labels: np.ndarray  # (N,) int64
    files: tuple[str, ...]
    classes: tuple[str, ...]
    root: Path
    cache_dir: Path

    def __len__(self) -> int:
        return len(self.labels)


def _run_chunks(chunks: list[tuple], workers: int) -> Iterator[tuple[int, list[tuple[int, str]], Counter]]:
    """Results of ``decode_into`` for each chunk, in this process or in ``workers`` processes."""
    if workers <= 1 or len(chunks) == 1:
        yield from (decode_into(*c) for c in chunks)
        return
    # spawn: decoders import only numpy and PIL, and never inherit torch's thread pools.
    # An executor (unlike mp.Pool) fails loudly if a worker dies instead of respawning it.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield from (done.result() for done in as_completed([pool.submit(decode_into, *c) for c in chunks]))


def _decode_all(
    listing: SplitListing, npy: Path, size: int, resample: str, workers: int
) -> tuple[list[tuple[int, str]], Counter]:
    files = list(listing.files)
    chunks = [(str(listing.root), files[i : i + _CHUNK], i, str(npy), size, resample)
              for i in range(0, len(files), _CHUNK)]
    bad: list[tuple[int, str]] = []
    converted: Counter = Counter()
    with tqdm(total=len(files), desc=f"Decoding {listing.split}", unit="img", mininterval=1) as bar:
        for n, chunk_bad, chunk_conv in _run_chunks(chunks, workers):
            bad += chunk_bad
            converted += chunk_conv
            bar.update(n)
    return sorted(bad), converted


def load_or_decode(
    listing: SplitListing,
    cache_dir: Path,
    image_size: int,
    resample: str = "bicubic",
    skip_bad_files: bool = False,
    workers: int | None = None,
) -> DecodedSplit:
    """Return the decoded split, decoding it first unless a cache with the same fingerprint exists.

    Images that cannot be decoded stop the run with one message listing each of them, unless
    ``skip_bad_files`` is set, in which case they are left out with a warning. Images of another
    mode or size are converted (``resample`` names the PIL filter) and counted in the log.
    """
    if resample not in RESAMPLING:
        raise ConfigError(f"data.resample={resample!r}; choose one of {sorted(RESAMPLING)}")
    fingerprint = listing.fingerprint(CACHE_VERSION, image_size, resample)
    root_key = hashlib.sha256(str(listing.root.resolve()).encode()).hexdigest()[:8]
    prefix = f"{root_key}-{listing.split}-"
    folder = cache_dir / "decoded" / f"{prefix}{fingerprint[:16]}"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        log.info("Reusing the decoded %s cache %s (the files have not changed)", listing.split, folder)
    else:
        with build_lock(folder):
            if not meta_path.exists():  # another process may have built it while we waited
                _build(listing, folder, image_size, resample, skip_bad_files, workers or os.cpu_count() or 1)
                for stale in folder.parent.glob(f"{prefix}*"):  # older versions of the same split
                    if stale != folder and not stale.name.endswith(".lock"):
                        shutil.rmtree(stale, ignore_errors=True)
    meta = json.loads(meta_path.read_text())
    skipped = meta.get("skipped_undecodable") or {}
    if skipped and not skip_bad_files:  # the cache was built leaving them out; this run did not ask to
        lines = "\n".join(f"  {listing.root / name}: {why}" for name, why in skipped.items())
        raise DataError(
            f"{len(skipped)} file(s) in {listing.split} cannot be decoded:\n{lines}\n"
            "Replace or delete them, or set data.skip_bad_files=true to leave them out."
        )
    return DecodedSplit(
        # a plain read-only ndarray over the mapping: indexing np.memmap costs a Python-level
        # __getitem__ per batch, a fifth of the loader's time at batch 32
        images=np.load(folder / "images.npy", mmap_mode="r").view(np.ndarray),
        labels=np.load(folder / "labels.npy"),
        files=tuple(meta["files"]),
        classes=tuple(meta["classes"]),
        root=listing.root,
        cache_dir=folder,
    )


def _build(
    listing: SplitListing, folder: Path, size: int, resample: str, skip_bad: bool, workers: int
) -> None:
    n = len(listing.files)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("Decoding %d %s images into %s (once; later runs reuse it)", n, listing.split, folder)
    try:
        npy = tmp / "all.npy"
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(n, 3, size, size)).flush()
        bad, converted = _decode_all(listing, npy, size, resample, workers)
        if bad and not skip_bad:
            lines = "\n".join(f"  {listing.root / listing.files[i]}: {why}" for i, why in bad)
            raise DataError(
                f"{len(bad)} file(s) in the {listing.split!r} split cannot be decoded:\n{lines}\n"
                "Replace or delete them, or set data.skip_bad_files=true to leave them out."
            )
        keep = np.setdiff1d(np.arange(n), [i for i, _ in bad])
        if bad:
            log.warning(
                "Skipping %d undecodable file(s) in %s (data.skip_bad_files=true): %s",
                len(bad), listing.split, ", ".join(listing.files[i] for i, _ in bad),
            )
            full = np.load(npy, mmap_mode="r")
            out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(keep), 3, size, size))
            out[:] = full[keep]
            out.flush()
            del full, out
            npy.unlink()
        else:
            npy.rename(tmp / "images.npy")
        labels = np.asarray(listing.labels, dtype=np.int64)[keep]
        np.save(tmp / "labels.npy", labels)
        meta = {
            "version": CACHE_VERSION,
            "split": listing.split,
            "root": str(listing.root),
            "classes": list(listing.classes),
            "files": [listing.files[i] for i in keep],
            "skipped_not_images": dict(listing.skipped),
            "skipped_undecodable": {listing.files[i]: why for i, why in bad},
            "converted": dict(converted),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if converted:
        log.info("Converted in %s: %s", listing.split, ", ".join(f"{k}: {v}" for k, v in converted.items()))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
