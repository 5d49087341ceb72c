"""Find the images of one CIFAKE split (``<root>/<split>/<CLASS>/*``) and check the layout.

Class indices follow torchvision's ``ImageFolder``: class folders sorted by name, so
FAKE=0 and REAL=1.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cifake.core.errors import ConfigError, DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
KAGGLE_HINT = (
    "CIFAKE is the Kaggle dataset 'birdy654/cifake-real-and-ai-generated-synthetic-images': "
    "download it and pass data.root=<the extracted folder or the .zip>. "
    "To try the tool without it, run: python train.py experiment=demo"
)


@dataclass(frozen=True)
class SplitListing:
    """The files of one split, in a fixed order (class, then path), with their labels."""

    root: Path
    split: str
    classes: tuple[str, ...]
    files: tuple[str, ...]  # paths relative to ``root``, POSIX separators
    labels: tuple[int, ...]
    skipped: Counter = field(default_factory=Counter)  # non-image files, by reason

    def fingerprint(self, *extra: object) -> str:
        """A hash of every file's name, size and mtime (plus ``extra``), to key caches."""
        h = hashlib.sha256()
        for item in extra:
            h.update(repr(item).encode())
        for rel in self.files:
            st = (self.root / rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts[i] for i, name in enumerate(self.classes)}


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in {"__MACOSX", "Thumbs.db", "desktop.ini"}


def resolve_layout_root(root: Path, splits: tuple[str, ...]) -> Path:
    """Return the folder that holds the split folders: ``root`` itself, or its only subfolder
    (archives often wrap everything in one top folder)."""
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist or is not a folder. {KAGGLE_HINT}")
    if all((root / s).is_dir() for s in splits):
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name)]
    if len(subdirs) == 1 and all((subdirs[0] / s).is_dir() for s in splits):
        return subdirs[0]
    found = sorted(p.name for p in root.iterdir() if not is_hidden(p.name))
    raise DataError(
        f"{root} should contain the split folders {list(splits)} (the Kaggle layout "
        f"train/{{REAL,FAKE}}, test/{{REAL,FAKE}}); found {found or 'nothing'}. {KAGGLE_HINT}"
    )


def scan_split(root: Path, split: str, classes: tuple[str, ...]) -> SplitListing:
    """List ``root/split/<class>/`` for each expected class.

    Files whose suffix is not an image format (``.DS_Store``, ``Thumbs.db``, notes) are skipped and
    counted. A missing, extra or misnamed class folder, or a class with no image, is an error
    that names what was expected and what was found.
    """
    split_dir = root / split
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p.name))
    if found != sorted(classes):
        raise DataError(
            f"{split_dir}: expected exactly the class folders {sorted(classes)}, found {found}. "
            "Folder names are case-sensitive; rename or remove the others."
        )
    files: list[str] = []
    labels: list[int] = []
    skipped: Counter = Counter()
    for label, name in enumerate(sorted(classes)):
        class_files = []
        for dirpath, dirnames, filenames in os.walk(split_dir / name):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for fname in filenames:
                path = Path(dirpath) / fname
                if is_hidden(fname) or path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped[f"not an image ({path.suffix or fname})"] += 1
                    continue
                class_files.append(path.relative_to(root).as_posix())
        if not class_files:
            raise DataError(f"{split_dir / name} holds no image; the {split!r} split cannot be empty.")
        class_files.sort()
        files += class_files
        labels += [label] * len(class_files)
    return SplitListing(root, split, tuple(sorted(classes)), tuple(files), tuple(labels), skipped)


def folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, hidden files and folders left out), sorted."""
    if not folder.is_dir():
        raise ConfigError(f"folder={str(folder)!r} is not a folder; pass a folder of images of one class, e.g. "
                          "folder=/tmp/photoset/report/whole/REAL folder_class=REAL")
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        files += [Path(dirpath) / f for f in sorted(filenames) if not is_hidden(f)]
    if not files:
        raise DataError(f"no file under {folder}; put the images of one class there")
    return files
