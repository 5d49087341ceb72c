"""Throughput, side by side on the same data and machine, as one table with ratios:

(a) data path: images/s delivered to the model, shear included: the decode-once cache (the
    DataModule's loader and its on-device shear) against torchvision ``ImageFolder`` + PIL +
    ``RandomAffine`` shear + ``DataLoader`` with one worker per core;
(b) training: ``train.py``'s Lightning path (module, datamodule, default callbacks, logger)
    against a bare PyTorch loop of the same network, batch size and optimizer;
(c) evaluation: ``trainer.predict`` against a bare ``no_grad`` loop;

each at ``data.batch_size`` and at ``--large-batch``; and

(d) precision: training and ``trainer.predict`` through train.py's path in float32 and bf16
    mixed precision, each with NCHW and NHWC (channels_last) convolutions, for the report's VGG
    at its batch of 32 and for ``experiment=cpu_fast``'s network at its batch of 128, against
    float32 NCHW: what ``trainer.precision=auto`` and ``model.channels_last=auto`` choose from;

(e) degradations: train.py's training throughput of ``experiment=cpu_fast`` against
    ``experiment=cpu_robust`` (the same network with ``data.degrade`` on), ``--sections degrade``.

    python -m cifake.bench [--steps 100] [--data-images 32000] [--warmup 10] [--repeats 3]
                           [--large-batch 256] [--sections data,train,eval,precision,degrade]
                           [--out outputs/bench.md] [train.py overrides: data.root=... ...]

Each measurement runs ``warmup`` untimed batches then ``steps`` timed ones (the data path,
``--data-images`` worth of batches), ``repeats`` times with
the paths alternating (drift in the machine hits both alike); the table gives medians. It runs on
CUDA when present (synchronising before reading the clock), else on the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from cifake import schemas  # noqa: F401  (registers the config schemas)
from cifake.configs import CONF_DIR
from cifake.data.augment import random_shear, to_unit_float
from cifake.utils import build_trainer


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rate(batches: Iterator[int], steps: int, warmup: int) -> float:
    """Images per second over ``steps`` batches after ``warmup``; ``batches`` yields batch sizes."""
    images, start = 0, 0.0
    for i, n in enumerate(batches):
        if i == warmup:
            _sync()
            start = time.perf_counter()
        if i >= warmup:
            images += n
        if i + 1 >= warmup + steps:
            break
    _sync()
    return images / (time.perf_counter() - start)


# -- (a) data path ---------------------------------------------------------------------------
def cached_data_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """The project's path: index the decoded uint8 cache, move, scale and shear on the device."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    device, shear = _device(), cfg.data.shear

    def batches() -> Iterator[int]:
        while True:
            for images, _labels, _rows in datamodule.train_dataloader():
                x = random_shear(to_unit_float(images.to(device, non_blocking=True)), shear)
                yield len(x)

    return _rate(batches(), steps, warmup)


def naive_data_rate(cfg: DictConfig, steps: int, warmup: int, workers: int) -> float:
    """The conventional path: decode every JPEG with PIL each time, shear with ``RandomAffine``."""
    from torchvision import datasets, transforms

    datamodule = instantiate(cfg.data, _convert_="all")
    root = datamodule.layout_root() / cfg.data.train_split
    transform = transforms.Compose([transforms.RandomAffine(degrees=0, shear=cfg.data.shear), transforms.ToTensor()])
    loader = DataLoader(datasets.ImageFolder(str(root), transform=transform), batch_size=cfg.data.batch_size,
                        shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=torch.cuda.is_available())
    device = _device()

    def batches() -> Iterator[int]:
        while True:
            for images, _labels in loader:
                yield len(images.to(device, non_blocking=True))

    return _rate(batches(), steps, warmup)


# -- (b) training ------------------------------------------------------------------------------
class _StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch (train or predict)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, 0.0, 0.0, 0

    def _start(self, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            _sync()
            self.start = time.perf_counter()

    def _end(self, batch, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            _sync()
            self.images += len(batch[1])
            self.end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start(batch_idx)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._end(batch, batch_idx)

    def on_predict_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self._start(batch_idx)

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._end(batch, batch_idx)

    def rate(self) -> float:
        if not self.images:
            raise ValueError(f"the split has no batches after the {self.warmup} warm-up ones; lower --warmup")
        return self.images / (self.end - self.start)


def lightning_train_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images per second through ``trainer.fit`` with the configured callbacks and logger."""
    L.seed_everything(0)
    timer = _StepTimer(warmup)
    trainer = build_trainer(cfg, [timer], max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0)
    trainer.fit(instantiate(cfg.model, _convert_="all"), datamodule=instantiate(cfg.data, _convert_="all"))
    return timer.rate()


def _bare_setup(cfg: DictConfig) -> tuple:
    L.seed_everything(0)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    split = datamodule.decoded(cfg.data.train_split)
    net = instantiate(cfg.model.net).to(_device())
    return split, net, torch.from_numpy(split.labels), datamodule.eval_batch


def bare_train_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """A plain loop: index the cache, scale, forward, BCE, backward, optimizer step."""
    split, net, labels_all, _ = _bare_setup(cfg)
    net.train()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    loss_fn, device, batch = torch.nn.BCEWithLogitsLoss(), _device(), cfg.data.batch_size

    def batches() -> Iterator[int]:
        while True:
            rows = torch.randint(len(split), (batch,)).numpy()
            images = to_unit_float(torch.from_numpy(split.images[rows]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(images), labels_all[rows].to(device).float()).backward()
            optimizer.step()
            yield batch

    return _rate(batches(), steps, warmup)


# -- (c) evaluation ----------------------------------------------------------------------------
def lightning_eval_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images per second through ``trainer.predict`` on the test split."""
    L.seed_everything(0)
    timer = _StepTimer(warmup)
    trainer = build_trainer(cfg, [timer], limit_predict_batches=warmup + steps)
    trainer.predict(instantiate(cfg.model, _convert_="all"), datamodule=instantiate(cfg.data, _convert_="all"))
    return timer.rate()


@torch.no_grad()
def bare_eval_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """A plain ``no_grad`` loop over the cache at the evaluation batch size."""
    split, net, _, eval_batch = _bare_setup(cfg)
    net.eval()
    device, batch = _device(), min(eval_batch, len(split))

    def batches() -> Iterator[int]:
        while True:
            for start in range(0, len(split) - batch + 1, batch):
                images = torch.from_numpy(np.array(split.images[start:start + batch]))  # a writable copy
                torch.sigmoid(net(to_unit_float(images.to(device))))
                yield batch

    return _rate(batches(), steps, warmup)


# -- (d) precision -----------------------------------------------------------------------------
# The networks compared, as train.py overrides on top of the command line's.
PRECISION_NETS = {"report VGG, batch 32": ["model=vgg", "data.batch_size=32"],
                  "cpu_fast network, batch 128": ["experiment=cpu_fast"]}
PRECISIONS = {"float32 NCHW": ["trainer.precision=32-true", "model.channels_last=false"],
              "float32 NHWC": ["trainer.precision=32-true", "model.channels_last=true"],
              "bf16-mixed NCHW": ["trainer.precision=bf16-mixed", "model.channels_last=false"],
              "bf16-mixed NHWC": ["trainer.precision=bf16-mixed", "model.channels_last=true"]}


def precision_rows(rows: list[str], runs_log: list[str], overrides: list[str], tmp: str, steps: int,
                   warmup: int, repeats: int) -> None:
    """Section (d): every network of ``PRECISION_NETS`` at every setting of ``PRECISIONS``."""
    for net, net_overrides in PRECISION_NETS.items():
        configs = {name: _compose([*net_overrides, *overrides, *extra], tmp) for name, extra in PRECISIONS.items()}
        reference = next(iter(PRECISIONS))
        for title, measure in (("training", lightning_train_rate), ("evaluation", lightning_eval_rate)):
            _compare(rows, f"(d) {net}, {title}", {name: lambda c=c, m=measure: m(c, steps, warmup)
                                                   for name, c in configs.items()}, reference, repeats, runs_log)


# -- (e) training-time degradations ------------------------------------------------------------
DEGRADE_RECIPES = {"cpu_fast (clean)": ["experiment=cpu_fast"],
                   "cpu_robust (data.degrade on)": ["experiment=cpu_robust"]}


def degrade_rows(rows: list[str], runs_log: list[str], overrides: list[str], tmp: str, steps: int, warmup: int,
                 repeats: int) -> None:
    """Section (e): train.py's training throughput of the same network without and with the
    training-time degradations (``data.degrade``) of ``experiment=cpu_robust``."""
    configs = {name: _compose([*extra, *overrides], tmp) for name, extra in DEGRADE_RECIPES.items()}
    _compare(rows, "(e) training, degradations off vs on", {
        name: lambda c=c: lightning_train_rate(c, steps, warmup) for name, c in configs.items()
    }, next(iter(DEGRADE_RECIPES)), repeats, runs_log)


# -- the table ---------------------------------------------------------------------------------
def _compare(rows: list[str], title: str, paths: dict[str, Callable[[], float]], reference: str,
             repeats: int, runs_log: list[str]) -> None:
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, measure in paths.items():
            runs[name].append(measure())
    ref = statistics.median(runs[reference])
    for name, values in runs.items():
        mid = statistics.median(values)
        rows.append(f"| {title} | {name} | {mid:,.1f} | {mid / ref:.2f} |")
        runs_log.append(f"{title} / {name}: " + ", ".join(f"{v:.1f}" for v in values))


def _compose(overrides: list[str], tmp: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp}", "trainer.enable_progress_bar=false",
                                          "trainer.enable_model_summary=false", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed batches per training/evaluation measurement")
    parser.add_argument("--data-images", type=int, default=32_000,
                        help="timed images per data-path measurement (it is fast, so it needs more)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per path; the median counts")
    parser.add_argument("--large-batch", type=int, default=256, help="the second batch size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="naive loader's worker processes")
    parser.add_argument("--sections", default="data,train,eval,precision",
                        help="which of data,train,eval,precision,degrade to run")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench.md"), help="where the table is written")
    args, overrides = parser.parse_known_args(argv)
    sections = set(args.sections.split(","))
    rows = ["| measurement | path | median images/s | ratio |", "|---|---|---:|---:|"]
    runs_log: list[str] = []
    s, w, r = args.steps, args.warmup, args.repeats
    naive = f"torchvision ImageFolder + PIL + RandomAffine, {args.workers} workers"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose(overrides, tmp)
        # every measurement at the configured batch size and at the large one (evaluation too)
        configs = {batch: _compose([*overrides, f"data.batch_size={batch}", f"data.eval_batch_size={batch}"], tmp)
                   for batch in dict.fromkeys((cfg.data.batch_size, args.large_batch))}
        if "data" in sections:
            for batch, c in configs.items():
                d = max(1, args.data_images // batch)
                _compare(rows, f"(a) data path, batch {batch}", {
                    naive: lambda c=c, d=d: naive_data_rate(c, d, w, args.workers),
                    "decode-once cache, shear on the device": lambda c=c, d=d: cached_data_rate(c, d, w),
                }, naive, r, runs_log)
        if "train" in sections:
            for batch, c in configs.items():
                _compare(rows, f"(b) training, batch {batch}", {
                    "bare PyTorch loop": lambda c=c: bare_train_rate(c, s, w),
                    "Lightning (train.py's module, datamodule, callbacks, logger)":
                        lambda c=c: lightning_train_rate(c, s, w),
                }, "bare PyTorch loop", r, runs_log)
        if "eval" in sections:
            for batch, c in configs.items():
                _compare(rows, f"(c) evaluation, batch {batch}", {
                    "bare no_grad loop": lambda c=c: bare_eval_rate(c, s, w),
                    "Lightning trainer.predict": lambda c=c: lightning_eval_rate(c, s, w),
                }, "bare no_grad loop", r, runs_log)
        if "precision" in sections:
            precision_rows(rows, runs_log, overrides, tmp, s, w, r)
        if "degrade" in sections:
            degrade_rows(rows, runs_log, overrides, tmp, s, w, r)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    table = "\n".join([
        f"Throughput on {device} (torch {torch.__version__}): {s} timed batches per training and evaluation "
        f"measurement and {args.data_images:,} timed images per data-path one, after {w} warm-up batches, "
        f"{r} alternating runs per path; ratio against the first path of each measurement",
        "", *rows, "", "All runs (images/s):", *(f"- {line}" for line in runs_log),
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
