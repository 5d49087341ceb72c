from pathlib import Path

import pytest

from cifake.core.errors import DataError
from cifake.data.scan import resolve_layout_root, scan_split
from tests.helpers.images import make_cifake_tree

CLASSES = ("FAKE", "REAL")


def test_labels_follow_imagefolder_order(cifake_tree: Path) -> None:
    from torchvision.datasets import ImageFolder

    listing = scan_split(cifake_tree, "train", ("REAL", "FAKE"))  # given order does not matter
    assert listing.classes == ("FAKE", "REAL")
    reference = ImageFolder(str(cifake_tree / "train"))
    assert reference.class_to_idx == {"FAKE": 0, "REAL": 1}
    ours = {f.split("/", 1)[1]: label for f, label in zip(listing.files, listing.labels, strict=False)}
    theirs = {str(Path(p).relative_to(cifake_tree / "train").as_posix()): label for p, label in reference.samples}
    assert ours == theirs
    assert listing.class_counts() == {"FAKE": 6, "REAL": 6}


def test_non_images_are_skipped_and_counted(cifake_tree: Path) -> None:
    (cifake_tree / "train" / "REAL" / ".DS_Store").write_bytes(b"\0\1")
    (cifake_tree / "train" / "FAKE" / "Thumbs.db").write_bytes(b"\0\1")
    (cifake_tree / "train" / "FAKE" / "notes.txt").write_text("hello")
    (cifake_tree / "train" / ".DS_Store").write_bytes(b"\0")  # beside the class folders
    listing = scan_split(cifake_tree, "train", CLASSES)
    assert len(listing.files) == 12
    assert sum(listing.skipped.values()) == 3
    assert all(f.endswith(".jpg") for f in listing.files)


@pytest.mark.parametrize("bad_name", ["real", "REALS", "Real"])
def test_misnamed_class_folder_names_expected_and_found(cifake_tree: Path, bad_name: str) -> None:
    (cifake_tree / "train" / "REAL").rename(cifake_tree / "train" / bad_name)
    with pytest.raises(DataError) as err:
        scan_split(cifake_tree, "train", CLASSES)
    assert "['FAKE', 'REAL']" in str(err.value) and bad_name in str(err.value)


def test_missing_and_extra_class_folders(cifake_tree: Path) -> None:
    import shutil

    shutil.rmtree(cifake_tree / "test" / "FAKE")
    with pytest.raises(DataError, match=r"found \['REAL'\]"):
        scan_split(cifake_tree, "test", CLASSES)
    (cifake_tree / "train" / "OTHER").mkdir()
    with pytest.raises(DataError, match="OTHER"):
        scan_split(cifake_tree, "train", CLASSES)


def test_empty_class_is_an_error(cifake_tree: Path) -> None:
    for f in (cifake_tree / "test" / "REAL").iterdir():
        f.unlink()
    (cifake_tree / "test" / "REAL" / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match="holds no image"):
        scan_split(cifake_tree, "test", CLASSES)


def test_layout_root_finds_one_wrapping_folder(tmp_path: Path) -> None:
    make_cifake_tree(tmp_path / "outer" / "cifake", n_per_class=1)
    assert resolve_layout_root(tmp_path / "outer", ("train", "test")) == tmp_path / "outer" / "cifake"


def test_missing_split_and_missing_root_say_what_to_do(tmp_path: Path) -> None:
    make_cifake_tree(tmp_path / "d", n_per_class=1, splits=("train",))
    with pytest.raises(DataError, match=r"split folders \['train', 'test'\].*found \['train'\]"):
        resolve_layout_root(tmp_path / "d", ("train", "test"))
    with pytest.raises(DataError, match="birdy654/cifake.*experiment=demo"):
        resolve_layout_root(tmp_path / "nowhere", ("train", "test"))
