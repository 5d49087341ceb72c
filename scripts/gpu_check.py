"""The GPU check, for a session that is lent one CUDA GPU: one command, under 8 minutes on an
H100/H200, one Markdown table.

    python scripts/gpu_check.py data.root=<cifake> [--out outputs/gpu_check.md] [--best-epochs 12]

It runs, through the project's own entry points:
1. ``python -m cifake.bench --sections train,eval,precision`` (the benchmark's GPU rows);
2. ``train.py experiment=reference`` for two epochs: the time of one epoch at batch 32 (the second
   one, so start-up and cuDNN's autotuning are not counted);
3. ``train.py experiment=best`` for ``--best-epochs`` epochs, validating on the test split after
   every epoch with the final weights evaluated (no checkpoint chosen on test): its wall time,
   its test accuracy, and the time at which the per-epoch test accuracy first reached 0.95.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.95


def run(args: list[str], log: Path) -> float:
    """Run ``python <args>`` from the checkout; its output goes to ``log``; returns the wall seconds."""
    start = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(args[:3])} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def epoch_scalars(run_dir: Path, tag: str) -> list[tuple[float, float]]:
    """``(wall time, value)`` of every epoch-level ``tag`` in the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.wall_time, e.value) for e in events.Scalars(tag)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check.md")
    parser.add_argument("--best-epochs", type=int, default=12, help="epochs of experiment=best (budget: ~4 min)")
    args, overrides = parser.parse_known_args()
    work = args.out.parent / "gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    common = ["trainer.enable_progress_bar=false", *overrides]

    bench_md = work / "bench.md"
    run(["-m", "cifake.bench", "--sections", "train,eval,precision", "--steps", "50", "--warmup", "10",
         "--repeats", "1", "--out", str(bench_md), *overrides], work / "bench.log")

    ref = work / "reference"
    run(["train.py", "experiment=reference", "trainer.max_epochs=2", "evaluate=false", f"hydra.run.dir={ref}",
         *common], work / "reference.log")
    (t0, _), (t1, _) = epoch_scalars(ref, "train/loss")[:2]

    best = work / "best"
    wall = run(["train.py", "experiment=best", f"trainer.max_epochs={args.best_epochs}", "data.validate_on=test",
                "callbacks.model_checkpoint.monitor=null", f"hydra.run.dir={best}", *common], work / "best.log")
    curve = epoch_scalars(best, "val/acc")  # validated on test after every epoch
    start = epoch_scalars(best, "train_step/loss")[0][0]
    reached = next(((w - start, i + 1) for i, (w, acc) in enumerate(curve) if acc >= TARGET), None)
    test = json.loads((best / "metrics.json").read_text())
    leak_free = test.get("leak_free", {}).get("accuracy", float("nan"))

    import torch

    lines = [f"# GPU check on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}", "",
             "| measurement | value |", "|---|---|",
             f"| experiment=reference, one epoch at batch 32 (second epoch, with validation) | {t1 - t0:.1f} s |",
             f"| experiment=best, {args.best_epochs} epochs, wall time of train.py (with evaluation) | {wall:.0f} s |",
             f"| experiment=best, test accuracy (final weights, TTA {test['tta']['mode']}) | {test['accuracy']:.4f} |",
             f"| experiment=best, leak-free test accuracy | {leak_free:.4f} |",
             f"| time to {TARGET} test accuracy (per-epoch test curve, no TTA) | "
             + (f"{reached[0]:.0f} s (epoch {reached[1]}) |" if reached else "not reached |"),
             "", "Per-epoch test accuracy of experiment=best: " + ", ".join(f"{acc:.4f}" for _, acc in curve),
             "", "## Benchmark", "", bench_md.read_text()]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
