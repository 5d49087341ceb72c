"""A grid of the same validation images every epoch, titled with the model's prediction."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from cifake.analysis.plots import pick_per_class, prediction_grid_figure
from cifake.analysis.tensorboard_figures import log_figure, tensorboard_writers
from cifake.callbacks.base import FigureCallback, dataset_examples
from cifake.data.labels import CLASSES
from cifake.scoring.network import module_scorer


class PredictionGridCallback(FigureCallback):
    """``{val,test}/predictions``: ``per_class`` images of each class, the same ones every epoch,
    each titled with the predicted class, p(FAKE) and the truth, green when right and red when
    wrong (the report's figure 8). Images are the first of each class in the evaluation set's
    fixed order, found among its first ``search`` items."""

    name = "prediction_grid"

    def __init__(self, every_n_epochs: int, on_test: bool, per_class: int, ncols: int,
                 threshold: float, search: int) -> None:
        super().__init__(every_n_epochs, on_test)
        self.per_class, self.ncols, self.threshold, self.search = per_class, ncols, threshold, search
        self._examples: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

    def examples(self, trainer: L.Trainer, stage: str) -> tuple[torch.Tensor, np.ndarray]:
        if stage not in self._examples:
            images, labels, _ = dataset_examples(self.stage_dataset(trainer, stage), self.search)
            keep = pick_per_class(labels, self.per_class)
            self._examples[stage] = (images[keep], labels[keep])
        return self._examples[stage]

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not (self.due(trainer, stage) and trainer.is_global_zero):
            return
        with self.timed(trainer):
            images, labels = self.examples(trainer, stage)
            p_real = module_scorer(pl_module, pl_module.device).p_real(images.numpy())
            classes = tuple(pl_module.hparams.get("classes", CLASSES))
            title = f"{stage} predictions, epoch {trainer.current_epoch}" if stage == "val" else "test predictions"
            fig = prediction_grid_figure(images.numpy(), p_real, labels, classes, self.threshold, self.ncols, title)
            log_figure(tensorboard_writers(trainer), f"{stage}/predictions", fig, trainer.global_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")
