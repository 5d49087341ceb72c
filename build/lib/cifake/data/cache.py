"""Decode a split once into a memory-mapped ``(N, 3, H, W)`` uint8 array, keyed by a
fingerprint of its file list, and reuse it on every later run.

A cache folder holds ``images.npy``, ``labels.npy`` and ``meta.json``, the record of what they
hold (fingerprint, files, shapes and dtypes). Before a cache is mapped, its files' headers and
sizes are checked against that record: a damaged or incomplete cache is reported in one warning
and decoded again, never mapped. Space for a new one is checked, and reserved, before decoding.
Runs started together decode a split once: one holds its build lock (:mod:`cifake.data.locking`)
while the others wait, saying so, then reuse what it renamed into place. Versions for other files or
settings (image size, resampling) live side by side, each in its own folder: a run never deletes one,
and marks those it reads in use; ``python -m cifake.data.prune`` deletes the versions no run holds.
"""

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

from cifake.core.atomic import bytes_on_disk, check_space, human, reserve, space_errors
from cifake.core.errors import ConfigError, DataError
from cifake.data.decode import RESAMPLING, decode_into
from cifake.data.locking import build_lock, hold
from cifake.data.scan import SplitListing

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cache's format or decoding changes (2: meta.json records shapes)
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
    try:  # stats every file: the sources must all be there to build the cache, or to trust it
        fingerprint = listing.fingerprint(CACHE_VERSION, image_size, resample)
    except FileNotFoundError as err:
        raise DataError(f"{err.filename} is gone: it was listed a moment ago, so the data set under data.root changed "
                        f"while this run read it; its {listing.split} cache cannot be checked or built. Run again "
                        "once data.root holds the whole data set") from None
    root_key = hashlib.sha256(str(listing.root.resolve()).encode()).hexdigest()[:8]
    prefix = f"{root_key}-{listing.split}-"
    folder = cache_dir / "decoded" / f"{prefix}{fingerprint[:16]}"
    meta_path = folder / "meta.json"
    hold(folder)  # before it is checked: a pruner deleting it now finishes first, and this run rebuilds it
    if cache_problem(folder, fingerprint, image_size) is None:
        log.info("Reusing the decoded %s cache %s (the files have not changed)", listing.split, folder)
    else:
        with build_lock(folder, f"decoding the {listing.split} cache {folder}"):
            problem = cache_problem(folder, fingerprint, image_size)
            if problem is None:
                log.info("Reusing the decoded %s cache %s (another process decoded it meanwhile)", listing.split,
                         folder)
            else:
                if folder.exists():
                    log.warning("The decoded %s cache %s is damaged (%s): decoding it again", listing.split, folder,
                                problem)
                    shutil.rmtree(folder)  # before decoding: its space may be needed for the new one
                _build(listing, folder, fingerprint, image_size, resample, skip_bad_files,
                       workers or os.cpu_count() or 1)
    log_usage(folder.parent)
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


def cache_usage(decoded: Path) -> tuple[int, int]:
    """Bytes on disk and number of the decoded versions (whole or half-built) in the folder ``decoded``."""
    total, versions = 0, 0
    for folder in decoded.glob("*") if decoded.is_dir() else ():
        if not folder.is_dir():
            continue
        versions += 1
        for file in folder.iterdir():
            try:
                total += file.stat().st_blocks * 512
            except (FileNotFoundError, AttributeError):  # deleted meanwhile; no st_blocks on Windows
                continue
    return total, versions


def log_usage(decoded: Path) -> None:
    """Say how much disk the decoded versions hold, and how to delete those no run uses."""
    total, versions = cache_usage(decoded)
    log.info("The decoded cache %s holds %d version(s), %s; python -m cifake.data.prune %s deletes those no running "
             "job holds", decoded, versions, human(total), decoded.parent)


def npy_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> str | None:
    """Why the ``.npy`` file at ``path`` is not a whole C-ordered array of ``shape`` and ``dtype``
    (``None`` when it is), from its header and size alone: nothing is mapped or read beyond them."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return f"{path.name} has an unknown .npy header version {version}"
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            found_shape, fortran, found_dtype = read_header(f)
            data_start, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as err:  # truncated inside the header, not an .npy file
        return f"{path.name} has no readable .npy header ({err})"
    if tuple(found_shape) != tuple(shape) or found_dtype != np.dtype(dtype) or fortran:
        return (f"{path.name} holds {'Fortran-ordered ' if fortran else ''}{found_dtype} {tuple(found_shape)}, "
                f"its record says {np.dtype(dtype)} {tuple(shape)}")
    expected = data_start + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size != expected:
        return f"{path.name} is {size:,} bytes, {expected:,} for what its header and record say"
    return None


def cache_problem(folder: Path, fingerprint: str, image_size: int) -> str | None:
    """What is wrong with the decoded cache in ``folder`` (``None``: whole): its record
    (``meta.json``) missing, unreadable or of other files, or an array file whose header or size
    disagrees with the record (a crash, an interrupted copy, a full disk)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        n = len(meta["files"])
        recorded = {name: (tuple(meta[name]["shape"]), meta[name]["dtype"]) for name in ("images", "labels")}
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"meta.json is unreadable ({type(err).__name__}: {err})"
    if meta.get("fingerprint") != fingerprint:
        return "meta.json records other files"
    expected = {"images": ((n, 3, image_size, image_size), "uint8"), "labels": ((n,), "int64")}
    for name, (shape, dtype) in expected.items():
        if recorded[name] != (shape, dtype):
            return f"meta.json records {name} as {recorded[name][1]} {recorded[name][0]}, not {dtype} {shape}"
        problem = npy_problem(folder / f"{name}.npy", shape, dtype)
        if problem is not None:
            return problem
    return None


def _build(
    listing: SplitListing, folder: Path, fingerprint: str, size: int, resample: str, skip_bad: bool, workers: int
) -> None:
    n = len(listing.files)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    row = 3 * size * size
    meta_bytes = sum(len(name) + 4 for name in listing.files) + 4096  # meta.json: the file list, quoted
    needed = bytes_on_disk([n * row + 128, n * 8 + 128, meta_bytes], folder.parent)
    what = f"the decoded {listing.split} cache ({n} images of {size}x{size})"
    check_space(folder.parent, needed, what)
    tmp.mkdir(parents=True)
    log.info("Decoding %d %s images into %s (once; later runs reuse it)", n, listing.split, folder)
    try:
        npy = tmp / "all.npy"
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(n, 3, size, size)).flush()
        reserve(npy, folder.parent, what)  # the decoders write through memory maps: a full disk there is a SIGBUS
        with space_errors(folder.parent, needed, what):
            bad, converted = _decode_all(listing, npy, size, resample, workers)
            _finish(listing, tmp, fingerprint, size, bad, converted, skip_bad, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if converted:
        log.info("Converted in %s: %s", listing.split, ", ".join(f"{k}: {v}" for k, v in converted.items()))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _finish(listing: SplitListing, tmp: Path, fingerprint: str, size: int, bad: list[tuple[int, str]],
            converted: Counter, skip_bad: bool, what: str) -> None:
    """Write ``images.npy`` (the rows decoded into ``tmp/all.npy``, less the bad ones), ``labels.npy`` and the
    record."""
    n, npy = len(listing.files), tmp / "all.npy"
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
        row = 3 * size * size
        # a second array, beside the first
        check_space(tmp.parent, bytes_on_disk([len(keep) * row + 128], tmp), what)
        full = np.load(npy, mmap_mode="r")
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(keep), 3, size, size))
        reserve(tmp / "images.npy", tmp.parent, what)
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
        "fingerprint": fingerprint,
        "split": listing.split,
        "root": str(listing.root),
        "classes": list(listing.classes),
        "images": {"shape": [len(keep), 3, size, size], "dtype": "uint8"},
        "labels": {"shape": [len(keep)], "dtype": "int64"},
        "files": [listing.files[i] for i in keep],
        "skipped_not_images": dict(listing.skipped),
        "skipped_undecodable": {listing.files[i]: why for i, why in bad},
        "converted": dict(converted),
    }
    # Written last: the folder is renamed into place only once its record is complete.
    (tmp / "meta.json").write_text(json.dumps(meta))
