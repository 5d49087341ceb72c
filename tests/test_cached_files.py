"""The files cached beside a decoded split (the forest's features, the audit's hashes): a damaged or
foreign one is computed again with one warning, never read; one that cannot be computed again
because the data set's files are gone is an error naming both. (The decoded arrays themselves:
tests/test_cache.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cifake.audit.hashes import cache_path as hashes_path
from cifake.audit.hashes import split_hashes
from cifake.core.errors import DataError
from cifake.data.cache import DecodedSplit, load_or_decode
from cifake.data.scan import scan_split
from cifake.models.forest.features import cache_path as features_path
from cifake.models.forest.features import cached_features


@pytest.fixture
def split(cifake_tree: Path, tmp_path: Path) -> DecodedSplit:
    return load_or_decode(scan_split(cifake_tree, "train", ("FAKE", "REAL")), tmp_path / "c", 32, workers=1)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def only_warning(caplog) -> str:
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, caplog.text
    return warnings[0]


@pytest.mark.parametrize("damage", ["truncated", "garbled", "other rows"])
def test_damaged_features_are_computed_again(split: DecodedSplit, caplog, damage: str) -> None:
    clean = cached_features(split, "rich")
    path = features_path(split, "rich")
    if damage == "truncated":
        truncate(path)
    elif damage == "garbled":
        path.write_bytes(b"\x00" * path.stat().st_size)
    else:
        np.save(path, clean[:5])
    with caplog.at_level(logging.INFO):
        again = cached_features(split, "rich")
    assert "Recomputing the 'rich' features" in only_warning(caplog)
    assert np.array_equal(again, clean)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cached_features(split, "rich")
    assert "Reusing" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "other rows"])
def test_damaged_hashes_are_computed_again(split: DecodedSplit, caplog, damage: str) -> None:
    clean = split_hashes(split)
    path = hashes_path(split)
    if damage == "truncated":
        truncate(path)
    elif damage == "not a zip":
        path.write_bytes(b"not a zip archive")
    else:
        np.savez(path, sha256=clean.sha256[:3], phash=clean.phash[:3])
    with caplog.at_level(logging.INFO):
        again = split_hashes(split)
    assert "Recomputing the hashes" in only_warning(caplog)
    assert np.array_equal(again.sha256, clean.sha256) and np.array_equal(again.phash, clean.phash)


def test_hashes_that_cannot_be_computed_again_name_the_cache_and_the_missing_file(split: DecodedSplit) -> None:
    split_hashes(split)
    truncate(hashes_path(split))
    gone = Path(split.root) / split.files[7]
    gone.unlink()
    with pytest.raises(DataError) as err:
        split_hashes(split)
    assert str(hashes_path(split)) in str(err.value) and str(gone) in str(err.value)
