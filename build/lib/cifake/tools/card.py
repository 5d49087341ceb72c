"""The model card of a safetensors export written again from an evaluation run folder, for a model whose
training run is gone (the bundled model, after ``evaluate.py ckpt_path=cifake/bundled ... store=true``
gave it an out-of-scope score):

    python -m cifake.tools.card --model cifake/bundled --run <evaluate.py run folder> --out docs/model_card.md

The run folder is read as export.py reads a training run's: ``metrics.json``, ``robustness.md`` (when
there is one) and ``folders/<name>/folder.json`` (``evaluate.py folder=... hydra.run.dir=<run>/folders/<name>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifake.export.safetensors import card_text
from cifake.scoring.weights import CONFIG_FILE, WEIGHTS_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a safetensors export folder (model.safetensors, config.json)")
    parser.add_argument("--run", required=True, help="the evaluate.py run folder holding its metrics.json")
    parser.add_argument("--out", required=True, help="where the card goes (e.g. docs/model_card.md)")
    args = parser.parse_args(argv)
    model, run = Path(args.model), Path(args.run)
    try:
        config = json.loads((model / CONFIG_FILE).read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        print(f"error: {err}; pass --model <safetensors folder> and --run <an evaluate.py run folder>", file=sys.stderr)
        return 2
    from safetensors import safe_open

    with safe_open(str(model / WEIGHTS_FILE), "pt") as handle:  # the network's parameters, not the score's
        parameters = sum(_count(handle.get_slice(name).get_shape()) for name in handle.keys()  # noqa: SIM118
                         if not name.startswith("out_of_scope.")
                         and not name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    robustness = run / "robustness.md"
    folders = [json.loads(path.read_text()) for path in sorted(run.glob("folders/*/folder.json"))]
    Path(args.out).write_text(card_text(config, metrics, robustness.read_text() if robustness.is_file() else None,
                                        parameters, folders))
    print(f"Wrote {args.out}: {len(folders)} folder(s) from outside CIFAKE, figures from {run / 'metrics.json'}")
    return 0


def _count(shape: list[int]) -> int:
    total = 1
    for side in shape:
        total *= int(side)
    return total


if __name__ == "__main__":
    sys.exit(main())
