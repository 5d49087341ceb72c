"""Out-of-scope scores compared: how well each of the field's methods tells CIFAKE's validation images
(in scope) from a folder of images from elsewhere (out of scope), on one network's features.

    python -m cifake.tools.scope [--model <.ckpt or safetensors folder; default: the bundled model>]
        --data <cifake root> --outside /tmp/photoset/choose/whole/REAL /tmp/photoset/choose/tiles/REAL
        [--fit-images N] [--flagged share] [--knn 50]   (defaults: conf's out_of_scope_fit)

Methods (all on the penultimate features, fitted on the same seeded sample of training images):
``mahalanobis`` (class means and a Ledoit-Wolf shared precision, Lee et al. 2018: what the package
ships, :mod:`cifake.models.scope`), ``knn`` (distance to the k-th nearest training feature after L2
normalisation, Sun et al. 2022) and ``energy`` (the free energy of the logits, Liu et al. 2020; with
one logit z it is a function of |z| alone, so it measures the model's confidence, as the unsure band
does). Printed: AUROC (in scope against each outside folder) and the share of each outside folder
above the threshold that flags ``--flagged`` of the validation images. Choose on a ``choose`` part,
report on a ``report`` part (docs/photos.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from sklearn.metrics import roc_auc_score

from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.configs import CONF_DIR
from cifake.data.datamodule import CIFAKEDataModule
from cifake.data.scan import folder_files
from cifake.models.scope import fit_mahalanobis, fit_rows, threshold_for
from cifake.scoring import model_or_bundled, open_scorer
from cifake.scoring.network import network_features


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative free energy of the two-class logits (-z/2, z/2): higher is further out of scope."""
    half = np.abs(logits) / 2
    return -(half + np.log1p(np.exp(-2 * half)))


def knn_distance(train: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Distance to the ``k``-th nearest of ``train`` after L2 normalisation (Sun et al. 2022)."""
    from sklearn.neighbors import NearestNeighbors

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    index = NearestNeighbors(n_neighbors=k).fit(unit(train))
    return index.kneighbors(unit(query))[0][:, -1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a .ckpt or safetensors folder (default: the bundled model)")
    parser.add_argument("--data", required=True, help="the CIFAKE root (train/ and test/)")
    parser.add_argument("--outside", nargs="+", required=True, help="folders of images from outside CIFAKE")
    parser.add_argument("--fit-images", type=int, default=None, help="default: out_of_scope_fit.images")
    parser.add_argument("--flagged", type=float, default=None, help="default: out_of_scope_fit.flagged")
    parser.add_argument("--knn", type=int, default=50)
    args = parser.parse_args(argv)

    scorer = open_scorer(model_or_bundled(args.model), precision="32-true", device="cpu",
                         allowed=("checkpoint", "safetensors"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={args.data}"])
    fit = cfg.out_of_scope_fit  # conf/evaluation/default.yaml, as train.py fits the shipped score
    flagged = args.flagged or fit.flagged
    datamodule = CIFAKEDataModule.from_config(cfg.data)
    datamodule.setup("fit")
    embed = network_features(scorer.model, scorer.device)
    head_weights = scorer.model.net.head[-1]

    def features(images: np.ndarray) -> np.ndarray:
        return np.concatenate([embed(images[i:i + 512]) for i in range(0, len(images), 512)])

    def logits(f: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return head_weights(torch.from_numpy(f)).squeeze(1).numpy()

    train = datamodule.train_set
    rows = fit_rows(train.indices, args.fit_images or fit.images)
    train_f = features(train.split.images[rows])
    head = fit_mahalanobis(train_f, train.split.labels[rows])
    val_f = features(datamodule.val_set.split.images[np.sort(np.asarray(datamodule.val_set.indices))])

    def scores(f: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            maha = head(torch.from_numpy(f)).numpy()
        return {"mahalanobis": maha, "knn": knn_distance(train_f, f, args.knn), "energy": energy(logits(f))}

    inside = scores(val_f)
    from cifake.data.decode import decode_image

    size, resample = int(scorer.image_size), str(scorer.resample)
    print(f"{len(val_f)} validation images in scope; fitted on {len(rows)} training images; threshold flags "
          f"{100 * flagged:g}% of validation")
    print("| outside folder | images | method | AUROC | flagged |")
    print("|---|---:|---|---:|---:|")
    for folder in args.outside:
        images = np.stack([decode_image(path, size, resample)[0] for path in folder_files(Path(folder))])
        outside = scores(features(images))
        for method, values in outside.items():
            auroc = roc_auc_score(np.r_[np.zeros(len(inside[method])), np.ones(len(values))],
                                  np.r_[inside[method], values])
            flagged = float(np.mean(values > threshold_for(inside[method], flagged)))
            print(f"| {folder} | {len(values)} | {method} | {auroc:.3f} | {100 * flagged:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
