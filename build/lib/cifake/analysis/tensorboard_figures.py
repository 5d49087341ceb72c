"""Figures into TensorBoard: the writers of a trainer's (or a list of) loggers, and one figure added to
each. Shared by the dashboards drawn during fit (cifake/callbacks/), the report and the forest fit."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure


def tensorboard_writers(source: L.Trainer | list) -> list:
    """The ``SummaryWriter`` of every TensorBoard logger of a trainer or in a list of loggers."""
    loggers = source.loggers if isinstance(source, L.Trainer) else source
    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def log_figure(writers: list, tag: str, fig: Figure, step: int) -> None:
    """Add ``fig`` to every writer under ``tag``."""
    for writer in writers:
        writer.add_figure(tag, fig, global_step=step, close=False)
