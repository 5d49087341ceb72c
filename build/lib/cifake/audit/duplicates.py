"""Exact and near duplicates among the images of the train and test splits, and the test images
that leak from train.

- exact: byte-identical files (equal sha256).
- near: perceptual hashes (:mod:`cifake.audit.hashes`) at most ``near_distance`` bits apart.
  Near groups are the connected components of that relation, so they contain the exact groups
  (identical bytes give identical hashes) and may chain pictures further apart than the distance.

A file *repeats* another when an earlier file (train before test, FAKE before REAL, then by
path) is in its group; it is counted where that first file lies: within its own split/class, or
across (``"train/FAKE -> test/FAKE"``). Files minus repeats = distinct groups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifake.audit.hashes import SplitHashes, split_hashes
from cifake.audit.near import check_distance, components, near_pairs
from cifake.data.cache import DecodedSplit

log = logging.getLogger(__name__)

DEFAULT_MAX_CANDIDATES = 1 << 22  # candidate pairs held at once by the near-duplicate search


@dataclass(frozen=True)
class Corpus:
    """Every image of the audited splits in one order (train before test): ``files[i]``, relative
    to the data root, lies in ``locations[location[i]]`` (``"<split>/<class>"``)."""

    files: tuple[str, ...]
    location: np.ndarray  # (N,) int64
    locations: tuple[str, ...]
    is_test: np.ndarray  # (N,) bool
    sha256: np.ndarray  # (N, 32) uint8
    phash: np.ndarray  # (N,) uint64

    @classmethod
    def of(cls, train: tuple[str, DecodedSplit, SplitHashes], test: tuple[str, DecodedSplit, SplitHashes]) -> Corpus:
        """From ``(split name, decoded split, its hashes)`` of train and of test."""
        locations = tuple(f"{name}/{c}" for name, split, _ in (train, test) for c in split.classes)
        location, offset = [], 0
        for _, split, _ in (train, test):
            location.append(offset + np.asarray(split.labels, dtype=np.int64))
            offset += len(split.classes)
        return cls(
            files=train[1].files + test[1].files,
            location=np.concatenate(location),
            locations=locations,
            is_test=np.arange(len(train[1]) + len(test[1])) >= len(train[1]),
            sha256=np.concatenate([train[2].sha256, test[2].sha256]),
            phash=np.concatenate([train[2].phash, test[2].phash]),
        )

    def __len__(self) -> int:
        return len(self.files)


def content_groups(sha256: np.ndarray) -> np.ndarray:
    """``(N,)`` group id per file: equal ids for equal digests (ids numbered by sorted digest)."""
    if len(sha256) == 0:
        return np.zeros(0, dtype=np.int64)
    words = np.ascontiguousarray(sha256, dtype=np.uint8).view(np.uint64)  # (N, 4): compares as rows
    _, inverse = np.unique(words, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def near_groups(phash: np.ndarray, max_distance: int,
                max_candidates: int = DEFAULT_MAX_CANDIDATES) -> tuple[np.ndarray, int]:
    """Group id per file (the connected components of "pHash within ``max_distance``") and the
    number of file pairs within the distance, counting pairs of equal hashes too."""
    values, inverse, counts = np.unique(phash, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # Search the distinct hashes only: copies share a hash and would only fill the buckets.
    i, j, _ = near_pairs(values, None, max_distance, max_candidates)
    labels = components(len(values), i, j)
    pairs = int((counts * (counts - 1) // 2).sum() + (counts[i] * counts[j]).sum())
    return labels[inverse], pairs


def first_of_group(groups: np.ndarray) -> np.ndarray:
    """For each file, the index of the first file of its group."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def breakdown(repeat: np.ndarray, origin: np.ndarray, corpus: Corpus) -> dict[str, Any]:
    """Count the files flagged in ``repeat`` by where they lie and where their group's first file
    (``origin``, an index) lies: ``within`` each split/class, ``across`` pairs of them."""
    here, there = corpus.location[repeat], corpus.location[origin[repeat]]
    names = corpus.locations
    within = np.bincount(here[here == there], minlength=len(names))
    across = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(across, (there[here != there], here[here != there]), 1)
    return {
        "total": int(repeat.sum()),
        "within": {name: int(n) for name, n in zip(names, within, strict=True)},
        "across": {f"{names[a]} -> {names[b]}": int(across[a, b]) for a, b in zip(*np.nonzero(across), strict=True)},
    }


def repeat_counts(groups: np.ndarray, corpus: Corpus, exclude: np.ndarray | None = None) -> dict[str, Any]:
    """Distinct groups, and the files that repeat another (see the module's doc), leaving out
    the files flagged in ``exclude`` from the repeats (e.g. those already exact repeats)."""
    first = first_of_group(groups)
    repeat = first != np.arange(len(groups))
    if exclude is not None:
        repeat &= ~exclude
    return {"distinct": int(len(np.unique(groups))), "repeats": breakdown(repeat, first, corpus)}


@dataclass(frozen=True)
class Leak:
    """A test file identical (``kind="exact"``) or near (``"near"``) to the train file ``train_file``;
    ``distance`` is the Hamming distance of their pHashes (0 for exact ones)."""

    path: str
    kind: str
    train_file: str
    distance: int


def corpus_leaks(corpus: Corpus, near_distance: int | None = None,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES) -> list[Leak]:
    """Test files identical to a train file, then (with ``near_distance``) the other test files
    whose pHash lies within that distance of a train file's; each with its first identical or
    nearest train file (ties: the first). In corpus order."""
    test_rows = np.flatnonzero(corpus.is_test)
    train_rows = np.flatnonzero(~corpus.is_test)
    groups = content_groups(corpus.sha256)
    first_train = np.full(groups.max(initial=-1) + 1, -1, dtype=np.int64)
    train_groups, first = np.unique(groups[train_rows], return_index=True)
    first_train[train_groups] = train_rows[first]  # the first train file of each content
    match = first_train[groups[test_rows]]
    leaks = {int(t): Leak(corpus.files[t], "exact", corpus.files[m], 0)
             for t, m in zip(test_rows[match >= 0], match[match >= 0], strict=True)}
    if near_distance is not None and len(train_rows):
        rest = test_rows[match < 0]
        test_values, test_inverse = np.unique(corpus.phash[rest], return_inverse=True)
        train_values, train_first = np.unique(corpus.phash[train_rows], return_index=True)
        i, j, dist = near_pairs(test_values, train_values, check_distance(near_distance), max_candidates)
        train_file = train_rows[train_first[j]]
        order = np.lexsort((train_file, dist, i))  # per test hash: nearest, then first train file
        _, best = np.unique(i[order], return_index=True)
        nearest = np.full(len(test_values), -1, dtype=np.int64)
        nearest_dist = np.zeros(len(test_values), dtype=np.int64)
        nearest[i[order][best]] = train_file[order][best]
        nearest_dist[i[order][best]] = dist[order][best]
        for t, u in zip(rest, test_inverse.reshape(-1), strict=True):
            if nearest[u] >= 0:
                leaks[int(t)] = Leak(corpus.files[t], "near", corpus.files[nearest[u]], int(nearest_dist[u]))
    return [leaks[t] for t in sorted(leaks)]


def find_leaks(train: DecodedSplit, test: DecodedSplit, near_distance: int | None = None, chunk_size: int = 4096,
               max_candidates: int = DEFAULT_MAX_CANDIDATES) -> list[Leak]:
    """The test files of ``test`` that leak from ``train`` (see :func:`corpus_leaks`); hashes are
    read from (or computed into) each split's cache folder."""
    corpus = Corpus.of(("train", train, split_hashes(train, chunk_size)),
                       ("test", test, split_hashes(test, chunk_size)))
    return corpus_leaks(corpus, near_distance, max_candidates)


def leaked_test_files(datamodule: Any, near_distance: int | None = None) -> set[str]:
    """Paths (relative to the data root, e.g. ``test/FAKE/123.jpg``) of the test files of
    ``datamodule`` (a :class:`~cifake.data.datamodule.CIFAKEDataModule`) identical to a train file,
    plus those within ``near_distance`` pHash bits of one when it is given.

    The first call decodes (if no run has yet) and hashes both splits into their cache folders;
    later calls only list the files and read those caches.
    """
    hp = datamodule.hparams
    train, test = datamodule.decoded(hp.train_split), datamodule.decoded(hp.test_split)
    leaks = {leak.path for leak in find_leaks(train, test, near_distance)}
    log.info("%d test images leak from train (exact copies%s)", len(leaks),
             f" and pHash within {near_distance} bits" if near_distance is not None else "")
    return leaks
