"""One builder at a time for the shared caches (demo data, extractions, decoded arrays), so that
jobs started together, as in a sweep, build each once instead of racing on the same folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


@contextmanager
def build_lock(target: Path, what: str) -> Iterator[None]:
    """Hold an inter-process lock named after ``target`` (``<target>.lock``) while it is built;
    callers check again inside the lock whether another process has built it meanwhile.

    When another process holds it, say so (``what`` names the work, e.g. ``decoding the train
    cache <folder>``) before waiting: a run that stands still for minutes says why.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # flock: the operating system lets go of it when its holder dies, so a killed run never
    # leaves the others waiting; the lock file stays, empty, for the next waiters to share.
    lock = FileLock(str(target) + ".lock")
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
