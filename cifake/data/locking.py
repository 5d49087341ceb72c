"""One builder at a time for the shared caches (demo data, extractions, decoded arrays), so that
jobs started together, as in a sweep, build each once instead of racing on the same folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold an inter-process lock named after ``target`` (``<target>.lock``) while it is built;
    callers check again inside the lock whether another process has built it meanwhile."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        yield
