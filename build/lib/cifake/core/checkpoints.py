"""Training checkpoints written whole or not at all, and checked before a run resumes from one."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from cifake.core.atomic import atomic_path
from cifake.core.errors import ModelFileError

# The temporary file's name must not start with "last": Lightning's ckpt_path="last" takes the newest
# file of the checkpoint folder that does, and a write cut short leaves its temporary file behind.
PARTIAL_PREFIX = ".writing-"


class WholeFileCheckpointIO(TorchCheckpointIO):
    """Lightning's :class:`TorchCheckpointIO`, with each checkpoint written to a temporary file in
    its own folder, flushed to disk and renamed over the old one: a kill or a full disk at any
    moment leaves the previous file whole. (Lightning's own writes through a temporary file in the
    system's temporary folder, then *copies* it into place when that is another file system, as a
    node's ``/tmp`` is for a cluster's shared disk: a kill during the copy truncates the checkpoint.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to the local ``path`` whole; remote URLs go to Lightning's writer."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, prefix=PARTIAL_PREFIX) as tmp, tmp.open("wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would create it, not mkstemp's owner-only 0600
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash of the machine cannot leave it empty


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere only setting it tells it; set back at once
    os.umask(mask)
    return mask


def checkpoint_problem(path: Path) -> str | None:
    """What makes the checkpoint at ``path`` unreadable, in words (missing, empty, truncated, damaged),
    or ``None`` when it is a whole zip archive (``torch.save``'s format) whose every entry
    matches its checksum. It reads the file once; nothing in it is unpickled."""
    if not path.is_file():
        return "is not a file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return f"is truncated or not a checkpoint ({size:,} bytes that are not a complete zip archive)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"is damaged ({err})"
    return f"is damaged (its entry {bad} fails its checksum)" if bad else None


def check_resumable(path: Path, setting: str, best_name: str | None) -> None:
    """Refuse to resume from a missing or damaged checkpoint with a :class:`ModelFileError` that names
    ``path`` and the way on: the ``best_name`` checkpoint beside it when that one is whole, else
    starting over. ``setting`` is how the user asked for it (``ckpt_path=last``)."""
    problem = checkpoint_problem(path)
    if problem is None:
        return
    best = path.parent / best_name if best_name else None
    if best is not None and best != path and checkpoint_problem(best) is None:
        way_on = (f"{best} is whole: pass ckpt_path={best} instead to continue from the end of the best epoch "
                  "(keep hydra.run.dir and the run's other overrides), or leave ckpt_path out to start over")
    else:
        way_on = "no whole best checkpoint is beside it: leave ckpt_path out to start over"
    raise ModelFileError(f"{setting}: {path} {problem}, so training cannot resume from it; {way_on}")
