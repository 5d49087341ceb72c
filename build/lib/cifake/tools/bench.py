"""Throughput, side by side on the same data and machine, as one table with ratios:

(a) data path: images/s delivered to the model, shear included: the decode-once cache (the
    DataModule's loader and its on-device shear) against torchvision ``ImageFolder`` + PIL +
    ``RandomAffine`` shear + ``DataLoader`` with one worker per core;
(b) training: ``train.py``'s Lightning path (module, datamodule, default callbacks, logger)
    against a bare PyTorch loop of the same network, batch size, optimizer and augmentations;
(c) evaluation: ``trainer.predict`` against a bare ``no_grad`` loop;

each at ``data.batch_size`` and at ``--large-batch``, both sides of a pair on the same device, in
the same precision and memory layout (what train.py's path resolves ``trainer.precision`` and
``model.channels_last`` to there; each row names them) and with the data where the DataModule keeps
it (``data.on_device``); and

(d) precision: training and ``trainer.predict`` through train.py's path in float32 and bf16
    mixed precision, each with NCHW and NHWC (channels_last) convolutions, for the report's VGG
    at its batch of 32 and for ``experiment=cpu_fast``'s network at its batch of 128, against
    float32 NCHW: what ``trainer.precision=auto`` and ``model.channels_last=auto`` choose from;

(e) degradations: train.py's training throughput of ``experiment=cpu_fast`` against
    ``experiment=cpu_robust`` (the same network with ``data.degrade`` on), ``--sections degrade``.

Every measurement runs where the command line's ``trainer.accelerator`` (default ``auto``: CUDA
when present) puts it, also for the recipes that pin the CPU (``experiment=cpu_fast``,
``cpu_robust``), so that on a CUDA machine every row is a GPU row.

    python -m cifake.tools.bench [--steps 100] [--data-images 32000] [--warmup 10] [--repeats 3]
                           [--large-batch 256] [--sections data,train,eval,precision,degrade]
                           [--precision-nets vgg,cpu_fast]
                           [--out outputs/bench.md] [train.py overrides: data.root=... ...]

Each measurement runs ``warmup`` untimed batches then ``steps`` timed ones (the data path,
``--data-images`` worth of batches), ``repeats`` times with
the paths alternating (drift in the machine hits both alike); the table gives medians. It runs on
CUDA when present (synchronising before reading the clock), else on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from cifake.core import schemas  # noqa: F401  (registers the config schemas)
from cifake.core.configs import CONF_DIR
from cifake.data.augment import random_shear, to_unit_float
from cifake.data.datamodule import CIFAKEDataModule
from cifake.models.classifier import Classifier
from cifake.models.flops import TRAIN_MULTIPLIER, forward_flops
from cifake.models.networks import build_network
from cifake.models.precision import autocast, channels_last_on, float32_matmul, resolve_precision, uses_cuda
from cifake.training.trainer import build_trainer


def _accelerator(cfg: DictConfig) -> str:
    return str(cfg.trainer.accelerator)


def _device(cfg: DictConfig) -> torch.device:
    """Where train.py's path runs ``cfg``: the bare loops must run there too."""
    return torch.device("cuda" if uses_cuda(_accelerator(cfg)) else "cpu")


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
    datamodule = CIFAKEDataModule.from_config(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    device, shear = _device(cfg), cfg.data.shear

    def batches() -> Iterator[int]:
        while True:
            for images, _labels, _rows in datamodule.train_dataloader():
                x = random_shear(to_unit_float(images.to(device, non_blocking=True)), shear)
                yield len(x)

    return _rate(batches(), steps, warmup)


def naive_data_rate(cfg: DictConfig, steps: int, warmup: int, workers: int) -> float:
    """The conventional path: decode every JPEG with PIL each time, shear with ``RandomAffine``."""
    from torchvision import datasets, transforms

    datamodule = CIFAKEDataModule.from_config(cfg.data)
    root = datamodule.layout_root() / cfg.data.train_split
    transform = transforms.Compose([transforms.RandomAffine(degrees=0, shear=cfg.data.shear), transforms.ToTensor()])
    loader = DataLoader(datasets.ImageFolder(str(root), transform=transform), batch_size=cfg.data.batch_size,
                        shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=torch.cuda.is_available())
    device = _device(cfg)

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
    with _float32_arithmetic(cfg):
        trainer.fit(Classifier.from_config(cfg.model), datamodule=CIFAKEDataModule.from_config(cfg.data))
    return timer.rate()


# Lightning's spellings of the precisions the bare loops reproduce.
_PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def numerics(cfg: DictConfig) -> tuple[str, bool]:
    """The precision and memory layout train.py's path runs ``cfg`` in on its device: what
    ``trainer.precision`` and ``model.channels_last`` resolve to there (``auto`` included)."""
    precision = str(resolve_precision(cfg.trainer.precision, _accelerator(cfg)))
    channels_last = channels_last_on(cfg.model.channels_last, _device(cfg))
    return _PRECISION_ALIASES.get(precision, precision), channels_last


def numerics_label(cfg: DictConfig) -> str:
    """``bf16-mixed, NHWC`` (``32-true with TF32, NCHW``): how a row of ``cfg`` computed, for the table."""
    precision, channels_last = numerics(cfg)
    tf32 = " with TF32" if _device(cfg).type == "cuda" and _float32_matmul_precision(cfg) != "highest" else ""
    return f"{precision}{tf32}, {'NHWC' if channels_last else 'NCHW'}"


def _float32_matmul_precision(cfg: DictConfig) -> str:
    return str(cfg.float32_matmul_precision)


def _float32_arithmetic(cfg: DictConfig) -> contextlib.AbstractContextManager:
    """float32 products as train.py fits ``cfg`` (``float32_matmul_precision``: TF32 or not), for both paths."""
    return float32_matmul(_float32_matmul_precision(cfg))


class _BareData:
    """The decoded split as the DataModule serves it: on the device once (``data.on_device``) or
    indexed from the memory-mapped cache and moved batch by batch."""

    def __init__(self, cfg: DictConfig, split_name: str) -> None:
        datamodule = CIFAKEDataModule.from_config(cfg.data)
        datamodule.prepare_data()
        self.datamodule, self.device = datamodule, _device(cfg)
        self.split = datamodule.decoded(split_name)
        on_device = cfg.data.on_device
        resident = self.device.type == "cuda" if on_device == "auto" else bool(on_device)
        self.images = torch.from_numpy(np.array(self.split.images)).to(self.device) if resident else None
        self.labels = torch.from_numpy(self.split.labels).to(self.device)
        # where batch indices are made: beside resident data no step waits for a host-to-device copy
        self.index_device = self.device if resident else torch.device("cpu")

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of ``rows`` (indices on ``index_device``), on the device."""
        if self.images is not None:
            return self.images[rows], self.labels[rows]
        images = torch.from_numpy(np.asarray(self.split.images[rows.numpy()]))
        return images.to(self.device, non_blocking=True), self.labels[rows.to(self.device)]

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """The DataModule's training transform on the device (:meth:`CIFAKEDataModule.augment`)."""
        return self.datamodule.augment(images)


def _bare_net(cfg: DictConfig) -> torch.nn.Module:
    L.seed_everything(0)
    net = build_network(cfg.model.net).to(_device(cfg))
    return net.to(memory_format=torch.channels_last) if numerics(cfg)[1] else net


def image_flops(cfg: DictConfig, training: bool = False) -> float:
    """Forward FLOPs of one image through the config's network (cifake.models.flops): a whole image,
    or with ``training`` what one training image costs (its ``data.crop``, if set)."""
    size = cfg.data.crop if training and cfg.data.crop is not None else cfg.data.image_size
    return float(forward_flops(build_network(cfg.model.net), int(size)))  # counted on the CPU


def _layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def bare_train_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """A plain loop in train.py's precision and layout: index the data, augment as the DataModule
    does, forward, BCE, backward, optimizer step."""
    data, net = _BareData(cfg, cfg.data.train_split), _bare_net(cfg)
    net.train()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    precision, channels_last = numerics(cfg)
    device, batch = _device(cfg), cfg.data.batch_size
    loss_fn = torch.nn.BCEWithLogitsLoss()
    # float16 needs loss scaling, as Lightning's 16-mixed does; bf16 and float32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

    def batches() -> Iterator[int]:
        while True:
            images, labels = data.batch(torch.randint(len(data), (batch,), device=data.index_device))
            images = _layout(data.augment(images), channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                logits = net(images)
            scaler.scale(loss_fn(logits.float(), labels.float())).backward()
            scaler.step(optimizer)
            scaler.update()
            yield batch

    with _float32_arithmetic(cfg):  # the generator runs inside: forward and backward alike
        return _rate(batches(), steps, warmup)


# -- (c) evaluation ----------------------------------------------------------------------------
def lightning_eval_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Images per second through ``trainer.predict`` on the test split."""
    L.seed_everything(0)
    timer = _StepTimer(warmup)
    trainer = build_trainer(cfg, [timer], limit_predict_batches=warmup + steps)
    with _float32_arithmetic(cfg):
        trainer.predict(Classifier.from_config(cfg.model), datamodule=CIFAKEDataModule.from_config(cfg.data))
    return timer.rate()


@torch.no_grad()
def bare_eval_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """A plain ``no_grad`` loop over the test split at the evaluation batch size, in train.py's
    precision and layout."""
    data, net = _BareData(cfg, cfg.data.test_split), _bare_net(cfg)
    net.eval()
    precision, channels_last = numerics(cfg)
    device, batch = _device(cfg), min(data.datamodule.eval_batch, len(data))

    def batches() -> Iterator[int]:
        while True:
            for start in range(0, len(data) - batch + 1, batch):
                images, _labels = data.batch(torch.arange(start, start + batch, device=data.index_device))
                with autocast(precision, device):
                    torch.sigmoid(net(_layout(to_unit_float(images), channels_last)).float())
                yield batch

    with _float32_arithmetic(cfg):
        return _rate(batches(), steps, warmup)


# -- (d) precision -----------------------------------------------------------------------------
# The networks compared (--precision-nets picks among them): name -> (label, train.py overrides on top of the
# command line's). An override of one network's keys (model.net.filters) fails on the other: pick that one alone.
# Each row names the training batch the composed config ended with (32 and 128 unless the command line says).
PRECISION_NETS = {"vgg": ("report VGG", ["model=vgg", "data.batch_size=32"]),
                  "cpu_fast": ("cpu_fast network", ["experiment=cpu_fast"])}
PRECISIONS = {"float32 NCHW": ["trainer.precision=32-true", "model.channels_last=false"],
              "float32 NHWC": ["trainer.precision=32-true", "model.channels_last=true"],
              "bf16-mixed NCHW": ["trainer.precision=bf16-mixed", "model.channels_last=false"],
              "bf16-mixed NHWC": ["trainer.precision=bf16-mixed", "model.channels_last=true"]}


@dataclass(frozen=True)
class Timing:
    """How each path of a measurement is timed: ``steps`` timed batches after ``warmup`` untimed ones, in
    ``repeats`` alternating runs per path (the command line's ``--steps``, ``--warmup``, ``--repeats``)."""

    steps: int
    warmup: int
    repeats: int


def precision_rows(rows: list[str], runs_log: list[str], overrides: list[str], tmp: str, timing: Timing,
                   flush: Callable[[], None] | None = None, nets: Sequence[str] = tuple(PRECISION_NETS)) -> None:
    """Section (d): the ``nets`` of ``PRECISION_NETS`` at every setting of ``PRECISIONS``, on the
    command line's device (``overrides`` start with its ``trainer.accelerator``)."""
    steps, warmup, repeats = timing.steps, timing.warmup, timing.repeats
    for label, net_overrides in (PRECISION_NETS[name] for name in nets):
        configs = {name: _compose([*net_overrides, *overrides, *extra], tmp) for name, extra in PRECISIONS.items()}
        reference = next(iter(PRECISIONS))
        net = f"{label}, batch {configs[reference].data.batch_size}"
        for title, measure, cost in (
                ("training", lightning_train_rate, TRAIN_MULTIPLIER * image_flops(configs[reference], training=True)),
                ("evaluation", lightning_eval_rate, image_flops(configs[reference]))):
            _compare(rows, f"(d) {net}, {title}", {name: lambda c=c, m=measure: m(c, steps, warmup)
                                                   for name, c in configs.items()}, reference, repeats, runs_log,
                     flush, cost)


# -- (e) training-time degradations ------------------------------------------------------------
DEGRADE_RECIPES = {"cpu_fast (clean)": ["experiment=cpu_fast"],
                   "cpu_robust (data.degrade on)": ["experiment=cpu_robust"]}


def degrade_rows(rows: list[str], runs_log: list[str], overrides: list[str], tmp: str, timing: Timing,
                 flush: Callable[[], None] | None = None) -> None:
    """Section (e): train.py's training throughput of the same network without and with the
    training-time degradations (``data.degrade``) of ``experiment=cpu_robust``."""
    steps, warmup, repeats = timing.steps, timing.warmup, timing.repeats
    configs = {name: _compose([*extra, *overrides], tmp) for name, extra in DEGRADE_RECIPES.items()}
    _compare(rows, "(e) training, degradations off vs on", {
        name: lambda c=c: lightning_train_rate(c, steps, warmup) for name, c in configs.items()
    }, next(iter(DEGRADE_RECIPES)), repeats, runs_log, flush,
        TRAIN_MULTIPLIER * image_flops(configs[next(iter(DEGRADE_RECIPES))], training=True))


# -- the table ---------------------------------------------------------------------------------
def _compare(rows: list[str], title: str, paths: dict[str, Callable[[], float]], reference: str,
             repeats: int, runs_log: list[str], flush: Callable[[], None] | None = None,
             flops: float | None = None) -> None:
    """Measure every path ``repeats`` times, alternating, and add their medians and ratios to
    ``rows`` (with the GFLOP/s achieved, given the ``flops`` one image costs the measured work);
    then ``flush`` (write the table so far: a run stopped later keeps these rows)."""
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, measure in paths.items():
            runs[name].append(measure())
    ref = statistics.median(runs[reference])
    for name, values in runs.items():
        mid = statistics.median(values)
        achieved = "—" if flops is None else f"{mid * flops / 1e9:,.1f}"
        rows.append(f"| {title} | {name} | {mid:,.1f} | {mid / ref:.2f} | {achieved} |")
        runs_log.append(f"{title} / {name}: " + ", ".join(f"{v:.1f}" for v in values))
    if flush is not None:
        flush()


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
    parser.add_argument("--precision-nets", default=",".join(PRECISION_NETS),
                        help=f"which networks section (d) measures: some of {','.join(PRECISION_NETS)}")
    args, overrides = parser.parse_known_args(argv)
    sections = set(args.sections.split(","))
    nets = args.precision_nets.split(",")
    unknown = [name for name in nets if name not in PRECISION_NETS]
    if unknown:
        parser.error(f"--precision-nets: no network {', '.join(unknown)}; choose among {', '.join(PRECISION_NETS)}")
    rows = ["| measurement | path | median images/s | ratio | GFLOP/s |", "|---|---|---:|---:|---:|"]
    runs_log: list[str] = []
    s, w, r = args.steps, args.warmup, args.repeats
    naive = f"torchvision ImageFolder + PIL + RandomAffine, {args.workers} workers"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose(overrides, tmp)
        device = _device(cfg)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"CPU, {torch.get_num_threads()} threads"

        def table(partial: bool = False) -> str:
            return "\n".join([
                f"Throughput on {where} (torch {torch.__version__}): {s} timed batches per training and evaluation "
                f"measurement and {args.data_images:,} timed images per data-path one, after {w} warm-up batches, "
                f"{r} alternating runs per path; ratio against the first path of each measurement"
                + (" (partial: the run is still going or was stopped)" if partial else ""),
                "", *rows, "", "All runs (images/s):", *(f"- {line}" for line in runs_log),
            ])

        def flush() -> None:
            args.out.write_text(table(partial=True) + "\n")

        # every measurement at the configured batch size and at the large one (evaluation too)
        configs = {batch: _compose([*overrides, f"data.batch_size={batch}", f"data.eval_batch_size={batch}"], tmp)
                   for batch in dict.fromkeys((cfg.data.batch_size, args.large_batch))}
        if "data" in sections:
            for batch, c in configs.items():
                d = max(1, args.data_images // batch)
                _compare(rows, f"(a) data path, batch {batch}", {
                    naive: lambda c=c, d=d: naive_data_rate(c, d, w, args.workers),
                    "decode-once cache, shear on the device": lambda c=c, d=d: cached_data_rate(c, d, w),
                }, naive, r, runs_log, flush)
        if "train" in sections:
            for batch, c in configs.items():
                bare, how = "bare PyTorch loop", numerics_label(c)
                _compare(rows, f"(b) training, batch {batch}", {
                    f"{bare} ({how})": lambda c=c: bare_train_rate(c, s, w),
                    f"Lightning (train.py's module, datamodule, callbacks, logger; {how})":
                        lambda c=c: lightning_train_rate(c, s, w),
                }, f"{bare} ({how})", r, runs_log, flush, TRAIN_MULTIPLIER * image_flops(c, training=True))
        if "eval" in sections:
            for batch, c in configs.items():
                bare, how = "bare no_grad loop", numerics_label(c)
                _compare(rows, f"(c) evaluation, batch {batch}", {
                    f"{bare} ({how})": lambda c=c: bare_eval_rate(c, s, w),
                    f"Lightning trainer.predict ({how})": lambda c=c: lightning_eval_rate(c, s, w),
                }, f"{bare} ({how})", r, runs_log, flush, image_flops(c))
        # The recipes below pin trainer.accelerator=cpu (cpu_fast, cpu_robust): run them where the
        # command line runs (its own trainer.accelerator, given later, still wins).
        on_device = [f"trainer.accelerator={_accelerator(cfg)}", *overrides]
        if "precision" in sections:
            precision_rows(rows, runs_log, on_device, tmp, Timing(steps=s, warmup=w, repeats=r), flush, nets)
        if "degrade" in sections:
            degrade_rows(rows, runs_log, on_device, tmp, Timing(steps=s, warmup=w, repeats=r), flush)
    text = table()
    args.out.write_text(text + "\n")
    print(text)
    return text

if __name__ == "__main__":
    main()
