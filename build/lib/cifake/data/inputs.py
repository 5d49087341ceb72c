"""The image files a user names (``predict.py inputs=...``): every file under the paths given, each once,
with why some cannot even be opened (:func:`find_files`), and their decoding, where a file that is no image
becomes a reason instead of stopping the run (:func:`decode_all`)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import UnidentifiedImageError

from cifake.core.errors import ConfigError, DataError
from cifake.data.decode import decode_image
from cifake.data.scan import is_hidden


def _walk(folder: Path, problems: dict[Path, str]) -> Iterator[Path]:
    """The files under ``folder``; a sub-folder that cannot be listed goes into ``problems`` instead of
    stopping the walk (``os.walk`` would skip it silently)."""
    def unlisted(err: OSError) -> None:
        path = Path(err.filename)
        problems[path] = f"folder cannot be listed ({type(err).__name__}: {err.strerror}): nothing under it was read"

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        yield from (Path(dirpath) / f for f in filenames if not is_hidden(f))


def entry_problem(path: Path) -> str | None:
    """Why ``path`` cannot even be opened as an image file (``None``: it can be tried): a symbolic-link
    loop, a broken link, or a socket, FIFO or device (opening a FIFO would wait for a writer forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself): not a file"
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"
        return f"{type(err).__name__}: {err.strerror}"
    if not stat.S_ISREG(mode):
        kind = ("socket" if stat.S_ISSOCK(mode) else "FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode)
                else "special file")
        return f"a {kind}, not a regular file"
    return None


def _key(path: Path) -> Path:
    """What ``path`` is, to list each file once: its resolved path (itself where it cannot be resolved, as a loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's symlink loop
        return path.absolute()


class Found(NamedTuple):
    """What :func:`find_files` found: the ``files``, and why some of them cannot be read (``problems``)."""

    files: list[Path]
    problems: dict[Path, str]


def find_files(inputs: str | Sequence[str]) -> Found:
    """Every file named in ``inputs`` or under a folder named there (recursively; hidden files and
    folders such as ``.DS_Store`` left out), each folder's files sorted, each file once; and why some
    of them cannot be read at all (:func:`entry_problem`; folders that cannot be listed are listed
    with the reason). A bad entry never stops the search: it becomes one line of the output."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise ConfigError("inputs is empty; pass inputs=<file or folder> or inputs=[a.jpg,photos/]")
    files: list[Path] = []
    problems: dict[Path, str] = {}
    seen: set[Path] = set()
    for item in items:
        path = Path(str(item)).expanduser()
        walked: dict[Path, str] = {}
        if path.is_dir():
            found = list(_walk(path, walked))
            found = sorted([*found, *walked])  # the folders that could not be listed, in their place
        elif path.exists() or path.is_symlink():  # a file, or a link that a line of the output explains
            found = [path]
        else:
            raise ConfigError(f"input {str(path)!r} does not exist; pass image files or folders, e.g. "
                              "inputs=photos/ or inputs=[a.jpg,b.png] (relative to the folder you run from)")
        for file in found:
            if (key := _key(file)) not in seen:
                seen.add(key)
                files.append(file)
                problem = walked.get(file) or entry_problem(file)
                if problem is not None:
                    problems[file] = problem
    if not files:
        raise DataError(f"no file found under {[str(i) for i in items]}; put the images to classify there "
                        "(JPEG, PNG, WebP, GIF, ... of any size)")
    return Found(files, problems)


def unreadable_reason(err: Exception, path: Path) -> str:
    """Why ``path`` could not be used, in one line."""
    empty = False
    with contextlib.suppress(OSError):  # gone or unreachable meanwhile: the error says why
        empty = path.is_file() and path.stat().st_size == 0
    if empty:
        return "empty file (0 bytes)"
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or not an image at all)"
    return f"{type(err).__name__}: {err}".strip()


def decode_all(files: Sequence[Path], size: int, resample: str,
               problems: Mapping[Path, str] | None = None) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode ``files`` to ``(n_ok, 3, size, size)`` uint8; the positions that decoded, and the
    reason for each that did not (``problems``: files known to be unreadable, with the reason, never opened)."""
    images, ok, bad = [], [], {}
    for i, path in enumerate(files):
        if problems and path in problems:
            bad[i] = problems[path]
            continue
        try:
            images.append(decode_image(path, size, resample)[0])
            ok.append(i)
        # Any file may turn up, and Pillow raises many kinds of error on hostile ones (SyntaxError,
        # struct.error, DecompressionBombError...): one bad file must not stop the run.
        except Exception as err:
            bad[i] = unreadable_reason(err, path)
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    return stacked, ok, bad
