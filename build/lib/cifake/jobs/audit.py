"""The audit job behind ``audit.py``: counts, exact and near duplicates, and train/test leaks of
the data set, written to the run folder (``audit.json``, ``duplicates.csv``, ``leaks.csv``,
``summary.txt``) and printed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cifake.audit.duplicates import (
    Corpus,
    content_groups,
    corpus_leaks,
    repeat_counts,
)
from cifake.audit.hashes import HASHES_VERSION, split_hashes
from cifake.audit.report import (
    HASH_NOTES,
    check_settings,
    duplicate_rows,
    format_summary,
    leak_counts,
    near_section,
    split_counts,
    write_csv,
)
from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.errors import ConfigError
from cifake.data.datamodule import CIFAKEDataModule

log = logging.getLogger(__name__)

def run(cfg: DictConfig) -> dict[str, Any]:
    """Audit ``cfg.data`` (see the module's doc); return what ``audit.json`` holds."""
    settings = check_settings(cfg.audit)
    started = time.perf_counter()
    # Undecodable files are listed in the report instead of stopping the audit at them.
    datamodule = CIFAKEDataModule.from_config(cfg.data, skip_bad_files=True)
    hp = datamodule.hparams
    names = (hp.train_split, hp.test_split)
    if names[0] == names[1]:
        raise ConfigError(f"data.train_split and data.test_split are both {names[0]!r}; the audit compares two splits")
    splits = {name: datamodule.decoded(name) for name in names}
    decoded = time.perf_counter()
    hashes = {name: split_hashes(split, settings["chunk_size"]) for name, split in splits.items()}
    hashed = time.perf_counter()
    corpus = Corpus.of(*((name, splits[name], hashes[name]) for name in names))
    root = datamodule.layout_root()

    exact = content_groups(corpus.sha256)
    exact_section = repeat_counts(exact, corpus)
    exact_section["test_leaks"] = leak_counts(corpus_leaks(corpus, None, settings["max_candidates"]), corpus)
    near, near_ids, leaks = near_section(corpus, settings["near_distance"], exact, settings["max_candidates"])
    near_at = {str(d): near_section(corpus, d, exact, settings["max_candidates"])[0]
               for d in settings["also_distances"]}
    out = Path(cfg.paths.output_dir)
    report = {
        "root": str(root),
        "train_split": names[0],
        "test_split": names[1],
        "splits": {name: split_counts(split) for name, split in splits.items()},
        "files": len(corpus),
        "hashes": {**HASH_NOTES, "version": HASHES_VERSION},
        "exact": exact_section,
        "near": near,
        "near_at": near_at,
        "output_dir": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "duplicates.csv", ["kind", "group", "size", "path", "sha256", "phash"],
              duplicate_rows(corpus, exact, near_ids))
    write_csv(out / "leaks.csv", ["path", "kind", "train_file", "distance"],
              [[leak.path, leak.kind, leak.train_file, leak.distance] for leak in leaks])
    done = time.perf_counter()
    report["seconds"] = {"decode": round(decoded - started, 2), "hash": round(hashed - decoded, 2),
                         "duplicates": round(done - hashed, 2), "total": round(done - started, 2)}
    (out / "audit.json").write_text(json.dumps(report, indent=2))
    summary = format_summary(report)
    (out / "summary.txt").write_text(summary + "\n")
    log.info("Audit written to %s", out)
    print(summary)
    return report
