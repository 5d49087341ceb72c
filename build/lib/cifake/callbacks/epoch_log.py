"""One log line per epoch: what a run started with ``nohup`` or on a cluster (progress bar off)
shows of its progress, in the run's ``train.log``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``4 min 31 s`` or ``12 s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class EpochSummary(L.Callback):
    """After each training epoch (and its validation), log ``epoch 3/10 in 4 min 31 s (13 min 40 s
    so far, ~31 min 50 s to go): train/loss 0.2101, val/acc 0.9532, ...`` with the ``metrics`` the
    trainer has (missing ones are left out). The time to go assumes the remaining epochs take the
    mean time of those done in this process; a resumed run counts from where it restarted."""

    def __init__(self, metrics: Sequence[str]) -> None:  # conf/callbacks/default.yaml names them
        self.metrics = list(metrics)
        self._fit_start: float | None = None
        self._epoch_start: float | None = None
        self._first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank reads the metrics: computing them may synchronise the processes (DDP), so a
        # read on rank zero alone would wait for the others forever.
        values = trainer.callback_metrics
        if not trainer.is_global_zero or self._fit_start is None or self._epoch_start is None:
            return
        compute = getattr(pl_module, "compute", None)  # the module's own count: logged after this hook
        log.info(self.line(trainer.current_epoch + 1, trainer.max_epochs, time.monotonic() - self._epoch_start,
                           time.monotonic() - self._fit_start, trainer.current_epoch + 1 - self._first_epoch,
                           values, None if compute is None else compute["train_pflop"]))

    def line(self, epoch: int, max_epochs: int | None, epoch_seconds: float, total_seconds: float, done: int,
             values: dict[str, Any], pflop: float | None = None) -> str:
        """The summary of epoch ``epoch`` (1-based) of ``max_epochs`` (``None`` or -1: unbounded),
        ``done`` epochs having taken ``total_seconds`` in this process, ``pflop`` of training so far."""
        bounded = max_epochs is not None and max_epochs > 0
        timing = f"{duration(total_seconds)} so far"
        if bounded and done > 0 and epoch < max_epochs:
            timing += f", ~{duration(total_seconds / done * (max_epochs - epoch))} to go"
        shown = [f"{name} {float(values[name]):.4f}" for name in self.metrics if name in values]
        if pflop is not None:
            timing += f", {pflop:.3f} PFLOP of training"
        head = f"epoch {epoch}/{max_epochs if bounded else '?'} in {duration(epoch_seconds)} ({timing})"
        return head + (": " + ", ".join(shown) if shown else "")
