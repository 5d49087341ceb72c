"""Locks for the shared caches (demo data, extractions, decoded arrays), so that many runs on one
machine share them safely.

- :func:`build_lock`: one builder at a time, so that jobs started together, as in a sweep, build
  each version once instead of racing on the same folder.
- :func:`hold`: a run marks each version it reads as in use for as long as it lives; pruning
  (:mod:`cifake.data.prune`) deletes only versions that no process holds and none is building.

Both are ``flock`` locks: the operating system lets go of them when their holder dies, so a killed
run never leaves the others waiting, nor a version marked in use. The lock files stay, empty: a
lock file deleted while another process opens it would let two processes each hold "the" lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

BUILD_SUFFIX = ".lock"
USE_SUFFIX = ".use"

try:
    import fcntl
except ImportError:  # Windows: no shared locks; versions are not marked in use and pruning there is the user's call
    fcntl = None  # type: ignore[assignment]

_HELD: dict[Path, int] = {}  # folder -> the descriptor whose shared lock marks it in use, for the process's life


@contextmanager
def build_lock(target: Path, what: str) -> Iterator[None]:
    """Hold an inter-process lock named after ``target`` (``<target>.lock``) while it is built;
    callers check again inside the lock whether another process has built it meanwhile.

    When another process holds it, say so (``what`` names the work, e.g. ``decoding the train
    cache <folder>``) before waiting: a run that stands still for minutes says why.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + BUILD_SUFFIX)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("Waiting for another process that is %s (it holds %s); this one goes on when that one is done",
                 what, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def hold(folder: Path) -> None:
    """Mark ``folder`` (a cache version this process reads) in use until this process ends: a shared
    lock on ``<folder>.use``, whose modification time also records when it was last used. Taken before
    the version is checked or built: while a pruner deletes it, this waits, then finds it gone."""
    folder = Path(folder)
    if fcntl is None or folder in _HELD:
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(folder) + USE_SUFFIX, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.utime(fd)  # last used: pruning with an age keeps what ran recently
    except BaseException:
        os.close(fd)
        raise
    _HELD[folder] = fd


def release(folder: Path) -> None:
    """Let go of :func:`hold`'s mark on ``folder`` before this process ends (tests, long-lived servers)."""
    fd = _HELD.pop(Path(folder), None)
    if fd is not None:
        os.close(fd)


@contextmanager
def unused(folder: Path) -> Iterator[bool]:
    """Whether no process holds ``folder`` in use or is building it; while the block runs, none can
    start to (their :func:`hold` and :func:`build_lock` wait). ``.partial`` folders go by their
    target's build lock."""
    folder = Path(folder)
    target = folder.with_name(folder.name.removesuffix(".partial"))
    if fcntl is None:
        yield False  # no way to know who reads it
        return
    fd = os.open(str(target) + USE_SUFFIX, os.O_RDWR | os.O_CREAT, 0o666)
    build = FileLock(str(target) + BUILD_SUFFIX)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            build.acquire(blocking=False)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            build.release()
    finally:
        os.close(fd)


def last_used(folder: Path) -> float:
    """When a run last took ``folder`` in use (or, never held, when it was written), seconds since the epoch."""
    for path in (Path(str(folder) + USE_SUFFIX), Path(folder)):
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0
