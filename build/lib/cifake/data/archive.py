"""Extract a downloaded dataset archive once, safely, into a cache folder."""

from __future__ import annotations

import hashlib
import logging
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from cifake.core.atomic import bytes_on_disk, check_space, space_errors
from cifake.core.errors import DataError
from cifake.data.locking import build_lock, hold

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
_DONE = ".extracted"
# Where Python has it (3.10.12+), the "data" filter re-checks paths and drops ownership bits.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a file in one of the archive formats we extract."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(name: str, kind_ok: bool, archive: Path) -> None:
    """Refuse absolute paths, ``..`` escapes and anything that is not a file or folder."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not kind_ok:
        raise DataError(f"{archive}: refusing entry {name!r}: links and special files are not extracted.")
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise DataError(
            f"{archive}: refusing entry {name!r}: it would be written outside the extraction folder."
        )


def _check_room(archive: Path, dest: Path, listed: list[tuple[str, int]]) -> int:
    """Raise :class:`~cifake.core.errors.DiskSpaceError` unless the entries ``listed`` (name, size)
    fit beside ``dest``: every file rounded up to whole blocks, plus one block per folder (the
    archive's own and those implied by its paths). Returns the bytes needed."""
    folders = {str(parent) for name, _ in listed for parent in PurePosixPath(name.replace("\\", "/")).parents}
    sizes = [size for name, size in listed if not name.endswith("/")] + [1] * len(folders)
    needed = bytes_on_disk(sizes, dest.parent)
    check_space(dest.parent, needed, f"the extraction of {archive.name} ({len(listed):,} entries)",
                files=len(sizes))
    return needed


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            mode = info.external_attr >> 16
            _check_member(info.filename, not stat.S_ISLNK(mode), archive)
        needed = _check_room(archive, dest, [(i.filename, i.file_size) for i in infos])
        with space_errors(dest.parent, needed, f"the extraction of {archive.name}"):
            for info in tqdm(infos, desc=f"Extracting {archive.name}", unit="file", mininterval=1):
                zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_member(m.name, m.isfile() or m.isdir(), archive)
        needed = _check_room(archive, dest, [(m.name + "/" if m.isdir() else m.name, m.size) for m in members])
        with space_errors(dest.parent, needed, f"the extraction of {archive.name}"):
            for m in tqdm(members, desc=f"Extracting {archive.name}", unit="file", mininterval=1):
                tf.extract(m, dest, **_TAR_FILTER)


def extraction_folder(archive: Path, cache_dir: Path) -> Path:
    """Where :func:`extract_archive` puts ``archive``: keyed by its path, size and mtime."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir / "extracted" / f"{archive.name.split('.')[0]}-{key[:12]}"


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` under ``cache_dir/extracted/`` and return that folder.

    The folder is keyed by the archive's name, size and mtime, so a second run reuses it and a
    changed archive is extracted afresh. Every entry is checked before anything is written; an
    entry that is a link or would land outside the folder refuses the whole archive, and so does
    a disk without room for the sizes the archive lists.
    """
    dest = extraction_folder(archive, cache_dir)
    hold(dest)  # in use while this run lives: pruning skips it
    if (dest / _DONE).exists():
        log.info("Reusing the extraction of %s in %s", archive, dest)
        return dest
    with build_lock(dest, f"extracting {archive} into {dest}"):
        if (dest / _DONE).exists():
            log.info("Reusing the extraction of %s in %s (another process extracted it meanwhile)", archive, dest)
        else:
            _extract(archive, dest)
    return dest


def _extract(archive: Path, dest: Path) -> None:
    if dest.exists():  # an earlier extraction was interrupted
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("Extracting %s into %s (once; later runs reuse it)", archive, dest)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive} is not a readable archive ({err}); download it again.") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / _DONE).touch()
    tmp.rename(dest)
