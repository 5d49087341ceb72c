"""Training throughput of the Lightning path (``train.py``'s module, datamodule and callbacks)
against a bare PyTorch loop of the same network, batch size and optimizer.

    python -m cifake.bench [--steps 100] [--warmup 10] [--out bench.md] [hydra overrides ...]

The overrides are those of ``train.py`` (``data.root=...``, ``data.batch_size=256``, ...); both
paths read the same decoded cache. Each path runs ``warmup`` steps, then ``steps`` timed ones, ``repeats``
times in alternation; the table gives the median and the best run of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from cifake import schemas  # noqa: F401  (registers the config schemas)
from cifake.data.augment import to_unit_float
from cifake.utils import build_trainer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class _StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.end = time.perf_counter()


def lightning_throughput(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images per second through ``trainer.fit`` with the configured callbacks and logger."""
    L.seed_everything(0)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    timer = _StepTimer(warmup)
    trainer = build_trainer(cfg, [timer], max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    return timer.images / (timer.end - timer.start)


def bare_throughput(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images per second of a plain loop: index the cache, scale, forward, BCE, backward, Adam."""
    L.seed_everything(0)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    split = datamodule.decoded(cfg.data.train_split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = instantiate(cfg.model.net).to(device).train()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    loss_fn = torch.nn.BCEWithLogitsLoss()
    labels_all = torch.from_numpy(split.labels)
    batch = cfg.data.batch_size
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        rows = torch.randint(len(split), (batch,)).numpy()
        images = to_unit_float(torch.from_numpy(split.images[rows]).to(device))
        labels = labels_all[rows].to(device).float()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(images), labels).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path; the best counts")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench.md"), help="where the table is written")
    args, overrides = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.output_dir={tmp}", "trainer.enable_progress_bar=false",
                                              "trainer.enable_model_summary=false", *overrides])
        with open_dict(cfg):
            cfg.pop("hydra", None)
        runs: dict[str, list[float]] = {"bare": [], "lightning": []}
        for _ in range(args.repeats):  # alternate, so drift in the machine hits both paths alike
            runs["bare"].append(bare_throughput(cfg, args.steps, args.warmup))
            runs["lightning"].append(lightning_throughput(cfg, args.steps, args.warmup))
        best = {k: max(v) for k, v in runs.items()}
        mid = {k: statistics.median(v) for k, v in runs.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    table = "\n".join([
        f"Training throughput, batch {cfg.data.batch_size}, {args.steps} steps after {args.warmup} warm-up, "
        f"{args.repeats} alternating runs ({device}; torch {torch.__version__})",
        "all runs (images/s): " + "; ".join(f"{k} " + ", ".join(f"{v:.1f}" for v in vs) for k, vs in runs.items()),
        "",
        "| path | median images/s | ratio | best images/s | ratio |",
        "|---|---:|---:|---:|---:|",
        *(f"| {label} | {mid[k]:.1f} | {mid[k] / mid['bare']:.2f} | {best[k]:.1f} | {best[k] / best['bare']:.2f} |"
          for k, label in (("bare", "bare PyTorch loop (no augmentation)"),
                           ("lightning", "Lightning: train.py's module, datamodule (shear on), callbacks, logger"))),
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
