"""ROC, precision-recall and confusion-matrix figures, plus TensorBoard's native PR curve."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryConfusionMatrix, BinaryPrecisionRecallCurve, BinaryROC

from cifake.analysis.plots import confusion_figure, pr_figure, roc_figure
from cifake.analysis.tensorboard_figures import log_figure, tensorboard_writers
from cifake.callbacks.base import FigureCallback
from cifake.data.labels import CLASSES


def log_pr_curve_counts(writers: list, tag: str, pr_curve: BinaryPrecisionRecallCurve, step: int) -> None:
    """TensorBoard's PR-curve plugin from a binned torchmetrics curve's counts (no raw predictions
    are kept). ``confmat[t]`` holds ``[[tn, fp], [fn, tp]]`` at threshold ``t``, as the plugin wants
    them at evenly spaced thresholds from 0 to 1."""
    counts = pr_curve.confmat.detach().cpu().double()
    tn, fp, fn, tp = counts[:, 0, 0], counts[:, 0, 1], counts[:, 1, 0], counts[:, 1, 1]
    precision = tp / (tp + fp).clamp(min=1)
    recall = tp / (tp + fn).clamp(min=1)
    for writer in writers:
        writer.add_pr_curve_raw(tag, tp.numpy(), fp.numpy(), tn.numpy(), fn.numpy(), precision.numpy(),
                                recall.numpy(), global_step=step, num_thresholds=len(counts))


class CurvesCallback(FigureCallback):
    """ROC (with AUC), precision-recall (each class as positive) and confusion-matrix figures of the
    validation epoch and of the test run, under ``{val,test}/roc``, ``/pr``, ``/confusion_matrix``
    and ``/pr_curve``.

    Curves are binned on ``num_thresholds`` evenly spaced thresholds, so memory stays the same
    however many images an epoch has; the confusion matrix uses ``threshold`` on p(REAL).
    """

    name = "curves"

    def __init__(self, every_n_epochs: int, on_test: bool, num_thresholds: int,
                 threshold: float, pr_curve: bool) -> None:
        super().__init__(every_n_epochs, on_test)
        self.num_thresholds = num_thresholds
        self.threshold = threshold
        self.pr_curve = pr_curve
        self._metrics: MetricCollection | None = None
        self._pr_fake: BinaryPrecisionRecallCurve | None = None
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (p(REAL), labels) of the epoch

    def _reset(self, device: torch.device) -> None:
        self._metrics = MetricCollection({
            "roc": BinaryROC(thresholds=self.num_thresholds),
            "pr": BinaryPrecisionRecallCurve(thresholds=self.num_thresholds),
            "cm": BinaryConfusionMatrix(threshold=self.threshold),
        }).to(device)
        # FAKE as the positive class: p(FAKE) = 1 - p(REAL) against the flipped labels.
        self._pr_fake = BinaryPrecisionRecallCurve(thresholds=self.num_thresholds).to(device)

    def _update(self, outputs: Any) -> None:
        # Kept on the device until the epoch's end: torchmetrics' updates read values on the host.
        if self._metrics is not None and isinstance(outputs, dict) and "p_real" in outputs:
            self._outputs.append((outputs["p_real"].float(), outputs["label"].long()))

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._metrics, self._outputs = None, []
        if self.due(trainer, stage):
            self._reset(pl_module.device)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._metrics is None:
            return
        with self.timed(trainer):
            if self._outputs:
                p_real, labels = (torch.cat(parts) for parts in zip(*self._outputs, strict=True))
                self._metrics.update(p_real, labels)
                self._pr_fake.update(1.0 - p_real, 1 - labels)
            self._outputs = []
            # compute() synchronises across processes: every rank calls it, rank zero draws.
            values = self._metrics.compute()
            fake_precision, fake_recall, _ = self._pr_fake.compute()
            if trainer.is_global_zero:
                classes = tuple(pl_module.hparams.get("classes", CLASSES))
                self._draw(trainer, stage, classes, values, (fake_precision, fake_recall))
        self._metrics = None

    def _draw(self, trainer: L.Trainer, stage: str, classes: tuple[str, ...], values: dict,
              fake_pr: tuple[torch.Tensor, torch.Tensor]) -> None:
        writers = tensorboard_writers(trainer)
        step = trainer.global_step
        fpr, tpr, _ = (v.cpu().numpy() for v in values["roc"])
        real_precision, real_recall, _ = (v.cpu().numpy() for v in values["pr"])
        cm = values["cm"].cpu().numpy()
        title = f"{stage}, epoch {trainer.current_epoch}" if stage == "val" else stage
        log_figure(writers, f"{stage}/roc", roc_figure(fpr, tpr, classes[1], f"ROC ({title})"), step)
        log_figure(writers, f"{stage}/pr", pr_figure(
            {classes[1]: (real_precision, real_recall), classes[0]: tuple(np.asarray(v.cpu()) for v in fake_pr)},
            f"Precision-recall ({title})"), step)
        log_figure(writers, f"{stage}/confusion_matrix", confusion_figure(cm, classes, f"Confusion ({title})"), step)
        if self.pr_curve:
            log_pr_curve_counts(writers, f"{stage}/pr_curve", self._metrics["pr"], step)
