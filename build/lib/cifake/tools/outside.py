"""Models compared where the choices of issue 39 are made: CIFAKE's validation split, its validation fakes
re-rendered as photographs, and folders of real photographs from outside CIFAKE (the photo set's
``choose`` part). Never the test split.

    python -m cifake.tools.outside --data <cifake root> --models bundled /tmp/runs/x/checkpoints/best.ckpt
        --photos /tmp/photoset/choose/whole/REAL /tmp/photoset/choose/tiles/REAL [--fakes 800] [--seed 0]

For each model, at the configured threshold (conf/scoring: 0.5) with no band and no out-of-scope answer
(the model's raw call), and then
answered four ways with what the model stores (band, temperature, out-of-scope score) as every scorer
answers: validation accuracy; the share of re-rendered validation fakes answered FAKE (the same path as
the photo set's re-rendered test fakes: :func:`cifake.data.photos.rerender`); for each photo folder the
shares answered FAKE and REAL. One markdown table, one row per model and set.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.configs import CONF_DIR
from cifake.core.errors import ConfigError, DataError, report, user_message
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.decode import decode_image, to_model_input
from cifake.data.photos import FakeSettings, rerender
from cifake.data.scan import folder_files
from cifake.scoring import model_or_bundled, open_scorer
from cifake.scoring.scorer import Scorer, resolve_band, resolve_scope, verdicts


def rerendered_validation_fakes(datamodule, n: int, seed: int, size: int, resample: str) -> np.ndarray:
    """The first ``n`` FAKE validation images (in the split's fixed order), each re-rendered as a photo
    and shrunk back as ``cifake-predict`` shrinks a file."""
    split, rows = datamodule.val_set.split, np.sort(np.asarray(datamodule.val_set.indices))
    fakes = rows[split.labels[rows] == datamodule.classes.index("FAKE")][:n]
    out = []
    for row in fakes:
        data, _ = rerender(Image.fromarray(split.images[row].transpose(1, 2, 0)), f"val{row}", seed, FakeSettings())
        with Image.open(io.BytesIO(data)) as im:
            out.append(to_model_input(im.convert("RGB"), size, resample)[0])
    return np.stack(out)


def shares(scorer: Scorer, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
           threshold: float) -> dict[str, float]:
    """Raw call at ``threshold`` and the four-way answers with what the model stores."""
    p = scorer.p_real(images)
    raw = np.where(p > threshold, "REAL", "FAKE")
    band = resolve_band("auto", scorer, threshold)
    scoped = resolve_scope("auto", scorer)
    oos = scoped.out_of_scope(images)
    answers = np.asarray(verdicts(p, classes, threshold, band, oos, scoped.scope_threshold))
    truth = np.asarray(classes)[labels]
    answered = np.isin(answers, classes)
    return {"raw_acc": float(np.mean(raw == truth)), "raw_fake": float(np.mean(raw == "FAKE")),
            "fake": float(np.mean(answers == "FAKE")), "real": float(np.mean(answers == "REAL")),
            "answered_acc": float(np.mean(answers[answered] == truth[answered])) if answered.any() else float("nan")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the CIFAKE root (train/ and test/)")
    parser.add_argument("--models", nargs="+", required=True, help="'bundled', .ckpt files or safetensors folders")
    parser.add_argument("--photos", nargs="*", default=[], help="folders of real photographs (one class: REAL)")
    parser.add_argument("--fakes", type=int, default=800, help="validation fakes to re-render")
    parser.add_argument("--seed", type=int, default=0, help="seeds the re-rendering")
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={args.data}"])
    datamodule = CIFAKEDataModule.from_config(cfg.data)  # CIFAKE alone: the split every model validated on
    datamodule.setup("fit")
    classes = datamodule.classes
    val = datamodule.val_set
    rows = np.sort(np.asarray(val.indices))
    print("| model | set | images | raw acc | raw FAKE | answered FAKE | answered REAL | acc answered |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        scorer = open_scorer(model_or_bundled(None if name == "bundled" else name), precision="32-true",
                             device="cpu", allowed=("checkpoint", "safetensors"))
        size, resample = int(scorer.image_size), str(scorer.resample)
        sets = {"validation": (val.split.images[rows], val.split.labels[rows])}
        fakes = rerendered_validation_fakes(datamodule, args.fakes, args.seed, size, resample)
        sets["re-rendered validation fakes"] = (fakes, np.zeros(len(fakes), dtype=np.int64))
        for folder in args.photos:
            images = np.stack([decode_image(p, size, resample)[0] for p in folder_files(Path(folder))])
            sets[folder] = (images, np.full(len(images), classes.index("REAL")))
        for label, (images, labels) in sets.items():
            s = shares(scorer, images, labels, classes, float(cfg.threshold))  # conf/scoring: 0.5
            print(f"| {name} | {label} | {len(images)} | {s['raw_acc']:.4f} | {100 * s['raw_fake']:.1f}% | "
                  f"{100 * s['fake']:.1f}% | {100 * s['real']:.1f}% | {s['answered_acc']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, DataError, OSError) as err:
        message = user_message(err)
        if message is None:
            raise
        report(message, to_log=False)
