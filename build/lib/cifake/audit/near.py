"""Pairs of 64-bit hashes within a Hamming distance, found by multi-index hashing rather than by
comparing every pair.

Pigeonhole: cut the 64 bits into ``d + 1`` chunks; two hashes that differ in at most ``d`` bits
agree exactly on at least one chunk. So every such pair meets in the bucket of some chunk value,
and only hashes that share a bucket are compared (vectorised), never all N^2 pairs. Each pair is
kept only from the first chunk it agrees on, so none is reported twice.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cifake.core.errors import ConfigError

HASH_BITS = 64
MAX_DISTANCE = HASH_BITS - 1  # d + 1 chunks of at least one bit each
_BYTE_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def check_distance(distance: object, name: str = "audit.near_distance") -> int:
    """``distance`` as an int in ``0..63``, or :class:`ConfigError`."""
    if isinstance(distance, bool) or not isinstance(distance, (int, np.integer)) or not 0 <= distance <= MAX_DISTANCE:
        raise ConfigError(f"{name} is a Hamming distance between 64-bit hashes: an integer in 0..{MAX_DISTANCE}, "
                          f"got {distance!r}")
    return int(distance)


def popcount(values: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 (``np.bitwise_count`` where numpy has it)."""
    values = np.asarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    return _BYTE_POPCOUNT[values.view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1, dtype=np.uint8)


def chunk_spans(parts: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``parts`` chunks that tile the 64 bits, widths differing by at most one;
    the wider chunks are the high ones, since a pHash's top bit (its DC term) is almost always set
    and so tells the buckets of its chunk nothing."""
    base, extra = divmod(HASH_BITS, parts)
    widths = [base] * (parts - extra) + [base + 1] * extra
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths, strict=True)]


def _chunk(values: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def _blocks(counts: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges whose candidate counts add up to about ``budget`` (at least one row
    each), so that no step materialises more than that many candidate pairs at once."""
    cum = np.cumsum(counts)
    start = 0
    while start < len(counts):
        before = int(cum[start - 1]) if start else 0
        stop = max(int(np.searchsorted(cum, before + budget, side="right")), start + 1)
        yield start, stop
        start = stop


def near_pairs(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = 4,
               max_candidates: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes at Hamming distance ``<= max_distance``.

    With ``b`` None: pairs ``i < j`` of rows of ``a``; otherwise pairs ``(i, j)`` of a row of ``a``
    and a row of ``b``. Returns ``(i, j, distance)`` as int64 arrays sorted by ``(i, j)``.
    ``max_candidates`` bounds the candidate pairs held in memory at once (memory, not results).
    Cost grows with the bucket sizes: fine for distances up to ~8 on 10^5 hashes; larger distances
    mean shorter chunks, fuller buckets, and eventually every pair.
    """
    d = check_distance(max_distance, "max_distance")
    if max_candidates < 1:
        raise ConfigError(f"max_candidates must be at least 1, got {max_candidates}")
    a = np.ascontiguousarray(a, dtype=np.uint64).ravel()
    self_join = b is None
    b = a if self_join else np.ascontiguousarray(b, dtype=np.uint64).ravel()
    spans = chunk_spans(d + 1)
    keys_a = [_chunk(a, s, w) for s, w in spans]
    keys_b = keys_a if self_join else [_chunk(b, s, w) for s, w in spans]
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for k in range(len(spans)):
        order = np.argsort(keys_b[k], kind="stable")
        sorted_keys = keys_b[k][order]
        if self_join:  # each row against the rows after it in its bucket: every pair once
            rows = order
            first = np.arange(1, len(b) + 1)
            counts = np.searchsorted(sorted_keys, sorted_keys, side="right") - first
        else:
            rows = np.arange(len(a))
            first = np.searchsorted(sorted_keys, keys_a[k], side="left")
            counts = np.searchsorted(sorted_keys, keys_a[k], side="right") - first
        for start, stop in _blocks(counts, max_candidates):
            c = counts[start:stop]
            total = int(c.sum())
            if total == 0:
                continue
            # Each row against the c rows of its bucket (sorted positions first, first + 1, ...),
            # without a Python loop.
            ia = np.repeat(rows[start:stop], c)
            jb = order[np.repeat(first[start:stop] - np.cumsum(c) + c, c) + np.arange(total)]
            close = popcount(a[ia] ^ b[jb]) <= d
            ia, jb = ia[close], jb[close]
            for earlier in range(k):  # found already through an earlier chunk
                fresh = keys_a[earlier][ia] != keys_b[earlier][jb]
                ia, jb = ia[fresh], jb[fresh]
            found_i.append(np.minimum(ia, jb) if self_join else ia)
            found_j.append(np.maximum(ia, jb) if self_join else jb)
    i = np.concatenate(found_i).astype(np.int64) if found_i else np.zeros(0, dtype=np.int64)
    j = np.concatenate(found_j).astype(np.int64) if found_j else np.zeros(0, dtype=np.int64)
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    return i, j, popcount(a[i] ^ b[j]).astype(np.int64)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by edges ``(i[k], j[k])``: each node's label is
    the smallest node of its component (vectorised min-label propagation with pointer jumping)."""
    labels = np.arange(n)
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    while len(i):
        low = np.minimum(labels[i], labels[j])
        new = labels.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        while True:  # follow labels to their roots: chains shrink by half per step
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):  # every edge joins equal labels
            break
        labels = new
    return labels
