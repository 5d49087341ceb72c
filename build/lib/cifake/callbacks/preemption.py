"""Stopping cleanly when the machine is taken back: a checkpoint of where training stands, mid-epoch
included, so that ``ckpt_path=last`` continues from there."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cifake.core.errors import ConfigError
from cifake.core.signals import parse_signals


@dataclass(frozen=True)
class Stop:
    """Where a stop signal ended training: the signal, the checkpoint saved (``None`` when no step
    was trained since the run started or resumed, so the checkpoint already there still holds),
    the epochs done, whether one was under way and how many of its ``batches`` were, and the global step."""

    signal: signal.Signals
    saved: Path | None
    epochs_done: int
    in_epoch: bool
    batch: int
    batches: float  # inf for a loader without a length
    step: int

    def where(self) -> str:
        """``epoch 3, after batch 7 of 15`` or ``the end of epoch 2``."""
        if not self.in_epoch:
            return f"the end of epoch {self.epochs_done}"
        of = f" of {self.batches:.0f}" if self.batches != float("inf") else ""
        return f"epoch {self.epochs_done + 1}, after batch {self.batch}{of}"


class Preemption(L.Callback):
    """Stop training after the batch in progress on SIGTERM and on each of ``signals``, save where
    it stands over ``last.ckpt`` (see :func:`last_checkpoint`: what ``ckpt_path=last`` resumes), and
    record the stop in :attr:`stop` for the job to report and exit with.

    SIGTERM is Lightning's own: its handler (installed during ``fit``) makes the loops raise
    :class:`SIGTERMException` at the next safe point, between batches, never inside an optimizer step.
    Each of ``signals`` is routed to that same handler (which logs it as ``Received SIGTERM: 10``
    for SIGUSR1, and passes it on to DDP's other processes). The checkpoint is written from
    ``on_exception``, as Lightning's ``OnExceptionCheckpoint`` does; that callback is not used
    because it saves on every exception (a bug's state would replace ``last.ckpt``), deletes its
    file when a fit ends well, and makes Lightning resume a fit without ``ckpt_path`` from ``last``."""

    def __init__(self, signals: Sequence[str]) -> None:  # conf/callbacks/default.yaml lists them
        self.signals = [s for s in parse_signals(signals) if s != signal.SIGTERM]  # SIGTERM: always
        self.stop: Stop | None = None
        self._received: signal.Signals | None = None
        self._start_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_checkpoint(trainer)  # refuse a configuration with nowhere to save before training starts
        self.stop, self._received, self._start_step = None, None, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has installed its SIGTERM handler by now, and restores every handler it found,
        # these included, when the fit ends or fails: nothing here needs undoing.
        self._start_step = trainer.global_step
        if threading.current_thread() is not threading.main_thread():
            return  # Python takes signal handlers in the main thread only; Lightning skips them too
        stop_like_sigterm = signal.getsignal(signal.SIGTERM)
        for sig in self.signals:
            signal.signal(sig, self._handler(stop_like_sigterm))

    def _handler(self, stop_like_sigterm: Any) -> Callable[[int, FrameType | None], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            if self._received is None:
                self._received = signal.Signals(signum)
            if callable(stop_like_sigterm):
                stop_like_sigterm(signum, frame)
        return handle

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        received = self._received or signal.SIGTERM
        epochs = trainer.fit_loop.epoch_progress.current
        saved = None
        # Before the first step of this fit the checkpoint it started from (if any) is still where it stands.
        if self._start_step is not None and trainer.global_step > self._start_step:
            saved = last_checkpoint(trainer)
            trainer.save_checkpoint(saved, weights_only=False)  # all of it: optimizer, loops, callbacks
        self.stop = Stop(received, saved, epochs.completed, epochs.ready > epochs.completed,
                         trainer.fit_loop.epoch_loop.batch_progress.current.completed,
                         trainer.num_training_batches, trainer.global_step)


def last_checkpoint(trainer: L.Trainer) -> Path:
    """The ``last.ckpt`` that the trainer's ModelCheckpoints write (one named ``last``, or one with
    ``save_last``): Lightning's ``ckpt_path="last"``. A :class:`ConfigError` when none does."""
    keeper = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
                   and (cb.save_last or cb.filename == cb.CHECKPOINT_NAME_LAST)), None)
    if keeper is None:
        raise ConfigError("callbacks.preemption saves where a stopped run stands over last.ckpt, which this run does "
                          "not write: keep callbacks.last_checkpoint, or pass callbacks.preemption=null")
    return Path(keeper.dirpath) / f"{keeper.CHECKPOINT_NAME_LAST}{keeper.FILE_EXTENSION}"
