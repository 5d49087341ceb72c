"""Writing a file whole or not at all: an interrupted run never leaves half a cache or model, and
a write that cannot fit on its disk stops before it starts, saying how much it needs, how much is
free and which folder to move."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cifake.core.errors import DiskSpaceError

# Kept free beyond the blocks a write itself needs: 16 blocks of 4 KiB for directory entries and
# lock files. Negligible next to a cache (369 MB for CIFAKE); not a user choice.
SPACE_HEADROOM = 64 << 10
CACHE_SETTING = "paths.cache_dir (or the CIFAKE_CACHE_DIR environment variable)"


@contextmanager
def atomic_path(path: str | Path, prefix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    without an error, deleted when it raises (a full disk, a kill signal's KeyboardInterrupt).
    Its name starts with ``prefix`` (default: ``path``'s name) and ends in ``.partial``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name if prefix is None else prefix, suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (where a folder not yet created will live)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(folder: str | Path) -> int:
    """Bytes this process may still write on the file system that holds (or will hold) ``folder``."""
    return shutil.disk_usage(_existing(Path(folder))).free


def block_size(folder: str | Path) -> int:
    """The allocation unit of ``folder``'s file system: every file takes a whole number of them."""
    try:
        return os.statvfs(_existing(Path(folder))).f_frsize or 4096
    except (AttributeError, OSError):  # no statvfs (Windows): the common 4 KiB
        return 4096


def bytes_on_disk(sizes: Iterable[int], folder: str | Path) -> int:
    """What files of these ``sizes`` take on ``folder``'s file system, each rounded up to whole
    blocks, plus :data:`SPACE_HEADROOM`."""
    block = block_size(folder)
    return sum(-(-int(size) // block) * block for size in sizes) + SPACE_HEADROOM


def human(n: float) -> str:
    """``n`` bytes for people: ``369.0 MiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _no_space(folder: Path, needed: int, free: int, what: str, setting: str) -> DiskSpaceError:
    return DiskSpaceError(
        f"not enough space for {what} in {folder}: it needs {human(needed)}, the disk there has {human(free)} free; "
        f"free some space, or point {setting} at a folder on a larger disk"
    )


def free_files(folder: str | Path) -> int | None:
    """How many more files (inodes) ``folder``'s file system takes; ``None`` where it does not say."""
    try:
        st = os.statvfs(_existing(Path(folder)))
    except (AttributeError, OSError):
        return None
    return st.f_favail if st.f_files else None  # some file systems report no inode counts at all


def check_space(folder: str | Path, needed: int, what: str, setting: str = CACHE_SETTING, files: int = 0) -> None:
    """Raise :class:`DiskSpaceError` when ``needed`` bytes (see :func:`bytes_on_disk`), or
    ``files`` new files, are more than ``folder``'s file system has free; ``what`` names them in
    the message, ``setting`` the config key that moves them."""
    folder = Path(folder)
    free = free_bytes(folder)
    if needed > free:
        raise _no_space(folder, needed, free, what, setting)
    room = free_files(folder)
    if room is not None and files > room:
        raise DiskSpaceError(
            f"not enough space for {what} in {folder}: it needs {files:,} files, the file system there has room "
            f"for {room:,} more; point {setting} at a folder on another disk"
        )


def reserve(path: str | Path, folder: str | Path, what: str, setting: str = CACHE_SETTING) -> None:
    """Allocate every block of the file at ``path`` now (``posix_fallocate``), so that writing
    into it later, through a memory map, cannot meet a full disk: there that is a SIGBUS that kills
    the writer, not an error. File systems without it keep :func:`check_space`'s answer. The
    message names ``folder``, the one the user knows (``path`` may be in a temporary one)."""
    path = Path(path)
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    with path.open("r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as err:
            if err.errno == errno.ENOSPC:  # what this file holds already counts as free: it goes
                free = free_bytes(path.parent) + _allocated(path)
                raise _no_space(Path(folder), size, free, what, setting) from None
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _allocated(path: Path) -> int:
    """Bytes the file at ``path`` already holds on disk (a sparse file holds fewer than its size)."""
    st = path.stat()
    return getattr(st, "st_blocks", 0) * 512


@contextmanager
def space_errors(folder: str | Path, needed: int, what: str, setting: str = CACHE_SETTING) -> Iterator[None]:
    """Turn "no space left on device" raised inside the block into the same
    :class:`DiskSpaceError` as :func:`check_space`'s (with the space free when the block began):
    the free space can shrink between the check and the write."""
    free = free_bytes(folder)
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise _no_space(Path(folder), needed, free, what, setting) from err
