"""The audit's report (``audit.py``): the checked settings, the counts per split, the exact and near
sections, the leaks, the CSV rows and the printed summary."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from cifake.audit.duplicates import (
    Corpus,
    Leak,
    corpus_leaks,
    first_of_group,
    near_groups,
    repeat_counts,
)
from cifake.audit.near import check_distance
from cifake.core.errors import ConfigError
from cifake.data.cache import DecodedSplit

HASH_NOTES = {
    "content": "sha256 of the file bytes",
    "perceptual": "pHash: 8x8 lowest frequencies of the luma's 2-D DCT, bit = coefficient > their median (64 bits)",
}


def check_settings(settings: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The ``audit`` config group, checked: distances in 0..63, positive sizes."""
    also = settings["also_distances"]
    resolved = {
        "near_distance": check_distance(settings["near_distance"]),
        "also_distances": sorted({check_distance(d, "audit.also_distances") for d in also}),
    }
    for key in ("chunk_size", "max_candidates"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"audit.{key} must be an integer >= 1, got {value!r}")
        resolved[key] = value
    return resolved


def split_counts(split: DecodedSplit) -> dict[str, Any]:
    """Images per class, and what the split's decode-cache records: the files skipped as not images
    when it was scanned (another scan would cost seconds on CIFAKE), and those it could not decode or
    had to convert."""
    meta = json.loads((Path(split.cache_dir) / "meta.json").read_text())
    counts = np.bincount(split.labels, minlength=len(split.classes))
    return {
        "images": {c: int(n) for c, n in zip(split.classes, counts, strict=True)},
        "not_images": meta.get("skipped_not_images", {}),
        "undecodable": meta.get("skipped_undecodable", {}),
        "converted": meta.get("converted", {}),
    }


def leak_counts(leaks: list[Leak], corpus: Corpus) -> dict[str, Any]:
    """Leaking test files by kind and by the split/class they lie in."""
    row = {f: i for i, f in enumerate(corpus.files)}
    where = Counter(corpus.locations[corpus.location[row[leak.path]]] for leak in leaks)
    kinds = Counter(leak.kind for leak in leaks)
    return {"exact": kinds["exact"], "near": kinds["near"], "total": len(leaks),
            "by_location": dict(sorted(where.items()))}


def near_section(corpus: Corpus, distance: int, exact: np.ndarray,
                 max_candidates: int) -> tuple[dict[str, Any], np.ndarray, list[Leak]]:
    """Near-duplicate counts at ``distance`` beyond the exact duplicates (groups ``exact``), the near
    group of each file, and the leaks at that distance."""
    groups, pairs = near_groups(corpus.phash, distance, max_candidates)
    exact_repeat = first_of_group(exact) != np.arange(len(corpus))
    counts = repeat_counts(groups, corpus, exclude=exact_repeat)
    sizes = np.bincount(exact)
    leaks = corpus_leaks(corpus, distance, max_candidates)
    section = {
        "distance": distance,
        "groups": counts["distinct"],
        "largest_group": int(np.bincount(groups).max(initial=0)),
        "repeats_not_exact": counts["repeats"],
        "pairs_not_exact": pairs - int((sizes * (sizes - 1) // 2).sum()),
        "test_leaks": leak_counts(leaks, corpus),
    }
    return section, groups, leaks


def duplicate_rows(corpus: Corpus, exact: np.ndarray, near: np.ndarray) -> list[list[Any]]:
    """``duplicates.csv``: each exact group of two files or more, then each near group holding two
    contents or more; groups numbered from 1 by their first file, files in corpus order."""
    rows: list[list[Any]] = []
    contents = np.unique(np.stack([near, exact], axis=1), axis=0)[:, 0]  # one row per (near group, content)
    distinct_contents = np.bincount(contents, minlength=near.max(initial=-1) + 1)
    for kind, groups, keep in (("exact", exact, np.bincount(exact)[exact] > 1),
                               ("near", near, distinct_contents[near] > 1)):
        first = first_of_group(groups)
        members = np.flatnonzero(keep)
        _, number, size = np.unique(first[members], return_inverse=True, return_counts=True)
        number = number.reshape(-1)
        for k in np.lexsort((members, number)):
            r = members[k]
            rows.append([kind, int(number[k]) + 1, int(size[number[k]]), corpus.files[r],
                         corpus.sha256[r].tobytes().hex(), f"{int(corpus.phash[r]):016x}"])
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _where(breakdown: dict[str, Any]) -> str:
    parts = [f"{k} {v}" for k, v in breakdown["within"].items() if v]
    parts += [f"{k} {v}" for k, v in breakdown["across"].items()]
    return ", ".join(parts) or "none"


def format_summary(report: dict[str, Any]) -> str:
    """The readable summary printed at the end of the run."""
    exact, near = report["exact"], report["near"]
    lines = [f"CIFAKE audit of {report['root']}"]
    for name, s in report["splits"].items():
        images = ", ".join(f"{c} {n}" for c, n in s["images"].items())
        lines.append(f"  {name}: {images}; not images {sum(s['not_images'].values())}, "
                     f"undecodable {len(s['undecodable'])}, converted {sum(s['converted'].values())}")
    lines += [
        f"Exact duplicates (sha256): {report['files']} files, {exact['distinct']} distinct, "
        f"{exact['repeats']['total']} repeat another ({_where(exact['repeats'])})",
        f"  test files identical to a train file: {exact['test_leaks']['total']}",
        f"Near duplicates (pHash within {near['distance']} bits), beyond the exact ones: "
        f"{near['repeats_not_exact']['total']} files repeat another ({_where(near['repeats_not_exact'])}); "
        f"{near['pairs_not_exact']} pairs; {near['groups']} groups, the largest of {near['largest_group']}",
        f"  test files near a train file (not identical): {near['test_leaks']['near']}; leaking in all: "
        f"{near['test_leaks']['total']} of {sum(report['splits'][report['test_split']]['images'].values())}",
    ]
    for d, s in report["near_at"].items():
        lines.append(f"  at distance {d}: {s['repeats_not_exact']['total']} near repeats, "
                     f"{s['pairs_not_exact']} pairs, {s['test_leaks']['near']} near leaks")
    lines.append(f"Took {report['seconds']['total']:.1f} s; written to {report['output_dir']}")
    return "\n".join(lines)


