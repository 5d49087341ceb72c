import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from cifake.core.errors import DataError
from cifake.data.archive import extract_archive
from cifake.data.datamodule import CIFAKEDataModule
from tests.helpers.config import conf_args
from tests.helpers.images import make_cifake_tree


def _tar(path: Path, src: Path, mode: str) -> Path:
    with tarfile.open(path, mode) as tf:
        tf.add(src, arcname="cifake")
    return path


def _zip(path: Path, src: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, Path("cifake") / f.relative_to(src))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.xz"])
def test_archives_are_extracted_once_and_used_as_root(tmp_path: Path, kind: str) -> None:
    src = make_cifake_tree(tmp_path / "src", n_per_class=3)
    path = tmp_path / f"cifake.{kind}"
    if kind == "zip":
        _zip(path, src)
    else:
        _tar(path, src, {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[kind])
    cache = tmp_path / "cache"
    dm = CIFAKEDataModule(**conf_args("data", root=str(path), cache_dir=str(cache), val_fraction=0.5,
                                        decode_workers=1))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 6
    first = extract_archive(path, cache)
    marker = next(first.rglob("0 (FAKE).jpg"))
    mtime = marker.stat().st_mtime_ns
    assert extract_archive(path, cache) == first and marker.stat().st_mtime_ns == mtime  # reused


def _evil_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("cifake/train/REAL/1.jpg")
        ok.size = 3
        tf.addfile(ok, io.BytesIO(b"abc"))
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("name", ["../evil.jpg", "/tmp/evil.jpg", "cifake/../../evil.jpg"])
def test_tar_entries_outside_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 4
    path = _evil_tar(tmp_path / "evil.tar", info, b"evil")
    with pytest.raises(DataError, match="outside the extraction folder"):
        extract_archive(path, tmp_path / "cache")
    assert not (tmp_path / "evil.jpg").exists()
    assert not list((tmp_path / "cache" / "extracted").glob("*/cifake"))  # nothing was extracted


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("cifake/train/REAL/link.jpg")
    info.type = kind
    info.linkname = "/etc/passwd"
    with pytest.raises(DataError, match="links"):
        extract_archive(_evil_tar(tmp_path / "evil.tar", info), tmp_path / "cache")


def test_zip_traversal_and_symlinks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../evil.jpg", b"evil")
    with pytest.raises(DataError, match="outside"):
        extract_archive(path, tmp_path / "cache")
    with zipfile.ZipFile(path, "w") as zf:
        link = zipfile.ZipInfo("cifake/link.jpg")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="links"):
        extract_archive(path, tmp_path / "cache")
    assert not (tmp_path / "evil.jpg").exists()


def test_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\3\4 not really a zip")
    with pytest.raises(DataError, match="not a readable archive"):
        extract_archive(path, tmp_path / "cache")
