"""Regenerate the figures under docs/ that show what an evaluation draws, copied unchanged from the run
folders of the commands that write them:

- docs/gradcam.png and docs/predictions.png: ``python train.py experiment=demo`` (built-in generated
  data, never CIFAKE's own images, which must not be committed);
- docs/reliability.png: ``python evaluate.py data.root=<CIFAKE> tta.mode=flip`` with the bundled model (its
  model card's setting), an aggregate plot of the 20,000 test predictions.

    python scripts/docs_figures.py --cifake <CIFAKE folder or archive>   # both runs, about 15 min on 2 cores
    python scripts/docs_figures.py --demo-run <run> --cifake-run <run>   # the figures of runs already made
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FROM_DEMO = ("gradcam.png", "predictions.png")
FROM_CIFAKE = ("reliability.png",)


def run(script: str, folder: Path, *overrides: str) -> Path:
    """``python <script> <overrides>`` with its run folder at ``folder``; the folder."""
    subprocess.run([sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={folder}"], check=True)
    return folder


def copy(run_folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        source = run_folder / name
        if not source.is_file():
            sys.exit(f"error: {source} is missing: pass the folder of a run that evaluated (metrics.json beside it)")
        shutil.copyfile(source, DOCS / name)
        print(f"{DOCS / name} <- {source}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-run", type=Path, help="a finished `train.py experiment=demo` run folder")
    parser.add_argument("--cifake-run", type=Path,
                        help="a finished `evaluate.py data.root=<CIFAKE> tta.mode=flip` run folder")
    parser.add_argument("--cifake", help="CIFAKE (folder or archive), to evaluate the bundled model on")
    args = parser.parse_args()
    if args.cifake_run is None and args.cifake is None:
        parser.error("give --cifake <CIFAKE> or --cifake-run <an evaluate.py run on it>")
    with tempfile.TemporaryDirectory(prefix="docs_figures_") as scratch:
        demo = args.demo_run or run("train.py", Path(scratch) / "demo", "experiment=demo")
        # Flip TTA, as the model card's figures were measured (docs/model_card.md).
        cifake = args.cifake_run or run("evaluate.py", Path(scratch) / "cifake", f"data.root={args.cifake}",
                                        "tta.mode=flip")
        copy(demo, FROM_DEMO)
        copy(cifake, FROM_CIFAKE)


if __name__ == "__main__":
    main()
