"""Grad-CAM heat maps of fixed, correctly and wrongly classified images, logged as image grids."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from cifake.analysis.plots import gradcam_figure
from cifake.analysis.tensorboard_figures import log_figure, tensorboard_writers
from cifake.callbacks.base import FigureCallback, dataset_examples
from cifake.data.labels import CLASSES
from cifake.models.gradcam import explained_sections, explanation_sets
from cifake.scoring.network import module_scorer


class GradCAMCallback(FigureCallback):
    """``{val,test}/gradcam/{fixed,correct,wrong}``: image | Grad-CAM overlay pairs for the class
    the model predicts. ``fixed`` shows the same ``per_class`` images of each class every epoch;
    ``correct`` and ``wrong`` the first ``per_class`` of each class the model gets right and wrong
    among the first ``pool`` images of the evaluation set's fixed order.

    ``target_layer`` names a module of the LightningModule; ``null`` uses the model's own
    ``gradcam_layer`` hyper-parameter. The model's mode, gradients and hooks are left as they were.
    """

    name = "gradcam"

    def __init__(self, every_n_epochs: int, on_test: bool, target_layer: str | None,
                 per_class: int, pool: int, pairs_per_row: int, threshold: float) -> None:
        super().__init__(every_n_epochs, on_test)
        self.target_layer, self.per_class, self.pool = target_layer, per_class, pool
        self.pairs_per_row, self.threshold = pairs_per_row, threshold
        self._pools: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

    def layer(self, pl_module: L.LightningModule) -> str | None:
        return self.target_layer or pl_module.hparams.get("gradcam_layer")

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        layer = self.layer(pl_module)
        if layer is None or not (self.due(trainer, stage) and trainer.is_global_zero):
            return
        with self.timed(trainer):
            if stage not in self._pools:
                images, labels, _ = dataset_examples(self.stage_dataset(trainer, stage), self.pool)
                self._pools[stage] = (images, labels)
            images, labels = self._pools[stage]
            p_real = module_scorer(pl_module, pl_module.device).p_real(images.numpy())
            predicted = (p_real > self.threshold).astype(np.int64)
            sets = explanation_sets(labels, predicted, self.per_class)
            sections = explained_sections(pl_module, images.numpy(), labels, p_real, predicted, sets, layer)
            classes = tuple(pl_module.hparams.get("classes", CLASSES))
            writers = tensorboard_writers(trainer)
            when = f"{stage}, epoch {trainer.current_epoch}" if stage == "val" else stage
            for name, section in sections.items():  # one image per block; the figure names its block
                fig = gradcam_figure({name: section}, classes, self.threshold, self.pairs_per_row,
                                     f"Grad-CAM at {layer} for the predicted class ({when})")
                log_figure(writers, f"{stage}/gradcam/{name}", fig, trainer.global_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")
