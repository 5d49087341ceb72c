"""What a multirun leaves in its sweep folder: ``summary.csv`` and ``summary.md``, one row per job
with its overrides and final metrics (read from each job's ``results.json``)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
# Shown first in the Markdown table, when present; the CSV holds every metric.
KEY_METRICS = ("best/val/acc", "val/acc", "val/auroc", "val/loss", "train/acc", "test/acc", "test/auroc")


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
    md.write_text(f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n" + _markdown(rows, ["job", *varying, *shown]))
    log.info("Sweep summary: %s\n%s", md, md.read_text())
    return md


class SweepSummary(Callback):
    """Hydra callback: after a multirun, summarise its jobs (see :func:`write_summary`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
