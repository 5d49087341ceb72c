"""The LightningModule: any one-logit network, trained with ``BCEWithLogitsLoss``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics.classification import BinaryAccuracy

from cifake.errors import ConfigError


class Classifier(L.LightningModule):
    """Real-vs-fake classifier; the logit is positive for the class with label 1 (REAL).

    Every argument is a plain container (as Hydra configs resolve to) and is stored with
    ``save_hyperparameters``, so a checkpoint rebuilds the model on its own and loads with
    ``torch.load(..., weights_only=True)``.

    Args:
        net: Hydra config of the network (``_target_`` and its arguments).
        optimizer: Hydra config of the optimizer with ``_partial_: true``.
        scheduler: optional Hydra config of an LR scheduler with ``_partial_: true``.
        scheduler_interval: ``"epoch"`` or ``"step"``, when the scheduler steps.
        classes: class names by label (FAKE=0, REAL=1).
        image_size: side of the square input, recorded for evaluation and prediction.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        classes: tuple[str, ...] = ("FAKE", "REAL"),
        image_size: int = 32,
    ) -> None:
        super().__init__()
        for name, value in (("net", net), ("optimizer", optimizer), ("scheduler", scheduler)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"model.{name} must be a mapping with a _target_, got {type(value).__name__}")
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(net)
        self.loss = nn.BCEWithLogitsLoss()
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.test_acc = BinaryAccuracy()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` for float images ``(N, 3, H, W)`` in [0, 1]."""
        return self.net(images)

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str, acc: BinaryAccuracy) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = self.loss(logits, labels.float())
        acc(torch.sigmoid(logits), labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log(f"{stage}/acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        """p(REAL), true label and dataset row of every image, so outputs cannot be misaligned."""
        images, labels, rows = batch
        return {"p_real": torch.sigmoid(self(images)).float(), "label": labels, "row": rows}

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}
