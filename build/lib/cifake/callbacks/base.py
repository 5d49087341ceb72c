"""What the figure callbacks share: when to draw, where figures go, which images to show."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from cifake.core.errors import ConfigError


def dataset_examples(dataset: Dataset, count: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The first ``count`` items of a dataset that yields ``(uint8 images, labels, rows)``:
    ``(images, labels, rows)``, on the host (the dataset may keep them on the GPU). The evaluation
    sets are in a fixed shuffled order, so the first items cover both classes and are the same
    every epoch."""
    positions = list(range(min(count, len(dataset))))
    if hasattr(dataset, "__getitems__"):
        images, labels, rows = dataset.__getitems__(positions)
    else:
        items = [dataset[p] for p in positions]
        images, labels, rows = (torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(3))
    return images.cpu(), labels.cpu().numpy(), rows.cpu().numpy()


class FigureCallback(L.Callback):
    """Base of the callbacks that draw at the end of validation (every ``every_n_epochs`` epochs
    and at the last one) and of testing (``on_test``).

    Drawing happens on rank zero only; the time spent is logged as ``perf/<name>_seconds`` so the
    cost of a dashboard is visible next to what it shows.
    """

    name = "figures"

    def __init__(self, every_n_epochs: int, on_test: bool) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.{self.name}.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.on_test = on_test

    def due(self, trainer: L.Trainer, stage: str) -> bool:
        """Whether this stage's epoch gets figures."""
        if stage == "test":
            return self.on_test
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    @staticmethod
    def stage_of(trainer: L.Trainer) -> str:
        return "test" if trainer.testing else "val"

    @staticmethod
    def stage_dataset(trainer: L.Trainer, stage: str) -> Dataset:
        loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return loader.dataset

    @contextmanager
    def timed(self, trainer: L.Trainer) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        for lg in trainer.loggers:
            lg.log_metrics({f"perf/{self.name}_seconds": seconds}, step=trainer.global_step)
