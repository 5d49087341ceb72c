"""What a multirun leaves in its sweep folder: ``summary.csv`` and ``summary.md``, one row per job
with its overrides and final metrics (read from each job's ``results.json``)."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
# Shown first in the Markdown table, when present; the CSV holds every metric.
KEY_METRICS = ("best/val/acc", "val/acc", "val/auroc", "val/loss", "train/acc", "test/acc", "test/auroc",
               "test/leak_free/acc", "test/leak_free/auroc")


def _job_order(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job of ``sweep_dir``: ``job``, each ``key=value`` override, then the
    job's final metrics."""
    rows = []
    for results in sorted(sweep_dir.glob(f"*/{RESULTS_FILE}"), key=_job_order):
        job = results.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": job.name}
        row.update(dict(o.split("=", 1) for o in overrides or [] if "=" in o))
        row.update(json.loads(results.read_text())["metrics"])
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def seed_groups(rows: list[dict[str, Any]], override_names: list[str],
                metric_names: list[str]) -> list[dict[str, Any]]:
    """Jobs that differ only by ``seed``, pooled: one entry per group of two or more, with the
    shared overrides, the seeds, and each metric's ``(mean, sample std, n)`` over the group."""
    shared = [k for k in override_names if k != "seed"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if "seed" in row:
            groups.setdefault(tuple(str(row.get(k)) for k in shared), []).append(row)
    pooled = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        stats = {}
        for name in metric_names:
            values = [float(r[name]) for r in members if isinstance(r.get(name), (int, float))]
            if len(values) >= 2:
                stats[name] = (statistics.fmean(values), statistics.stdev(values), len(values))
        pooled.append({"overrides": dict(zip(shared, key, strict=True)),
                       "seeds": [r["seed"] for r in members], "stats": stats})
    return pooled


def _seed_markdown(pooled: list[dict[str, Any]], shown: list[str]) -> str:
    lines = ["", "## Over seeds", "",
             "Mean ± sample standard deviation over the jobs that differ only by `seed`.", ""]
    for group in pooled:
        varying = ", ".join(f"{k}={v}" for k, v in group["overrides"].items() if v != "None") or "(no other override)"
        lines.append(f"{varying}; seeds {', '.join(map(str, group['seeds']))}")
        lines.append("")
        names = [m for m in shown if m in group["stats"]] + [m for m in group["stats"] if m not in shown]
        lines += ["| metric | mean | std | jobs |", "|---|---|---|---|"]
        lines += [f"| {m} | {group['stats'][m][0]:.4f} | {group['stats'][m][1]:.4f} | {group['stats'][m][2]} |"
                  for m in names]
        lines.append("")
    return "\n".join(lines)


def write_summary(sweep_dir: Path) -> Path | None:
    """Write ``summary.csv`` (every override and metric) and ``summary.md`` (the overrides that vary
    between jobs and the key metrics) into ``sweep_dir``; returns the Markdown path."""
    rows = collect(sweep_dir)
    if not rows:
        log.warning("No job of %s wrote %s: no summary", sweep_dir, RESULTS_FILE)
        return None
    metric_names = list(dict.fromkeys(k for r in rows for k in json.loads(
        (sweep_dir / r["job"] / RESULTS_FILE).read_text())["metrics"]))
    override_names = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "job" and k not in metric_names]
    columns = ["job", *override_names, *metric_names]
    with (sweep_dir / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    varying = [k for k in override_names if len({str(r.get(k)) for r in rows}) > 1] or override_names
    shown = [m for m in KEY_METRICS if m in metric_names] or metric_names
    md = sweep_dir / "summary.md"
    text = f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n" + _markdown(rows, ["job", *varying, *shown])
    pooled = seed_groups(rows, override_names, metric_names)
    if pooled:
        text += _seed_markdown(pooled, shown)
        # The seed statistics also as a CSV, for scripts: one row per group and metric.
        with (sweep_dir / "summary_seeds.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["group", "seeds", "metric", "mean", "std", "jobs"])
            for i, group in enumerate(pooled):
                for m, (mean, std, n) in group["stats"].items():
                    writer.writerow([i, " ".join(map(str, group["seeds"])), m, mean, std, n])
    md.write_text(text)
    log.info("Sweep summary: %s\n%s", md, md.read_text())
    return md


class SweepSummary(Callback):
    """Hydra callback: after a multirun, summarise its jobs (see :func:`write_summary`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
