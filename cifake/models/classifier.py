"""The LightningModule: any one-logit network, trained with ``BCEWithLogitsLoss``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MetricCollection

from cifake.analysis.metrics import classification_metrics, two_class_probs
from cifake.core.errors import ConfigError
from cifake.core.nodes import fill, node_values
from cifake.models.detector import ScoresWithTTA
from cifake.models.flops import forward_flops, train_pflop
from cifake.models.networks import build_network
from cifake.models.precision import channels_last_on

log = logging.getLogger(__name__)


COMPUTE_KEY = "compute"  # the checkpoint entry holding Classifier.compute (as cifake.scoring.network reads it)
TARGET = "cifake.models.classifier.Classifier"  # model._target_
# model's keys (conf/model/*.yaml), in the order every checkpoint records them (hyper_parameters)
KEYS = ("net", "optimizer", "scheduler", "scheduler_interval", "classes", "image_size", "num_thresholds",
        "gradcam_layer", "channels_last", "compile", "label_smoothing")


@dataclass(frozen=True)
class Optimization:
    """How the network is trained: the ``optimizer`` (a Hydra config with ``_partial_: true``), the LR
    ``scheduler`` (the same, or ``None``) stepping every ``scheduler_interval`` (``epoch`` or ``step``), and
    ``label_smoothing`` of the training targets."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scheduler_interval: str
    label_smoothing: float


class Classifier(ScoresWithTTA, L.LightningModule):
    """Real-vs-fake classifier; the logit is positive for the class with label 1 (REAL).

    Every setting is a plain container (as Hydra configs resolve to) and is stored with
    ``save_hyperparameters``, flat, as the ``model`` node declares it, so a checkpoint rebuilds the model on
    its own (``Classifier(**hyper_parameters)``, :meth:`from_checkpoint`) and loads with
    ``torch.load(..., weights_only=True)``.

    Logged: ``train_step/loss`` every ``log_every_n_steps``; ``{train,val,test}/*`` once per epoch
    with the same names across stages (``loss``, ``acc``, ``auroc``, ``precision_fake``, ...).

    Takes the ``model`` node's keys (:data:`KEYS`), as Hydra's ``instantiate`` and Lightning's
    ``load_from_checkpoint`` pass them; they are checked here and read into typed groups:

    - ``net``: Hydra config of the network (``_target_`` and its arguments: :mod:`cifake.models.networks`).
    - :class:`Optimization`: the optimizer, the LR scheduler and label smoothing.
    - ``channels_last``, ``compile``: NHWC layout and ``torch.compile`` (read from ``hparams`` where used).
    - ``classes``: class names by label (FAKE=0, REAL=1); ``image_size``: side of the square input, recorded
      for evaluation and prediction; ``num_thresholds``: bins of the logged AUROC; ``gradcam_layer``: the
      module Grad-CAM explains by default (a name such as ``net.features.1.3``).

    ``channels_last``: NHWC memory layout for the convolutions (``auto``: on CUDA, where tensor
    cores want it; the numbers are the same). ``compile``: run the network through
    ``torch.compile`` (the stored weights stay those of the plain module, so checkpoints load anywhere;
    Grad-CAM runs the plain module). ``label_smoothing``: training targets become
    ``y * (1 - e) + e / 2``, so the net is not pushed towards infinite logits on easy images; validation
    and test losses use the true labels.

    Test-time augmentation (:meth:`set_tta`, :class:`~cifake.models.detector.ScoresWithTTA`) is a setting of
    evaluation, not of the model: it is not stored in checkpoints, and ``predict_step`` and :meth:`p_real` apply it.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        values = node_values(settings, TARGET, KEYS, "model")
        optimization = fill(Optimization, values)
        net, classes, image_size, num_thresholds = (values["net"], values["classes"], values["image_size"],
                                                    values["num_thresholds"])
        if not 0.0 <= optimization.label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing must lie in [0, 1), got {optimization.label_smoothing}")
        for name, value in (("net", net), ("optimizer", optimization.optimizer), ("scheduler", optimization.scheduler)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"model.{name} must be a mapping with a _target_, got {type(value).__name__}")
        self.save_hyperparameters({key: values[key] for key in KEYS})
        self.net: nn.Module = build_network(net)  # a checkpoint of an older version too
        self.loss = nn.BCEWithLogitsLoss()
        metrics = classification_metrics(tuple(classes), num_thresholds)
        # One collection per stage, registered as submodules so they follow the model's device.
        self._compiled: nn.Module | None = None  # kept out of the module tree and the state dict
        self._eager = False
        self._channels_last: bool | None = None  # decided in setup() or set_channels_last()
        # Each stage's (p(REAL), labels) of the epoch so far, on the device (a few MB per epoch).
        self._epoch_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # The cost of one image, counted once (a budget any machine can check: cifake.models.flops), and the
        # training images this process has stepped through (a host count: nothing is read from the device).
        self.forward_flops = forward_flops(self.net, image_size)
        # What one training image costs: a whole one, until a training batch of crops (data.crop) says otherwise.
        self.train_input_size = image_size
        self.train_forward_flops = self.forward_flops
        self.images_seen = 0
        self.resumed_schedule_steps: int | None = None  # a resumed checkpoint's (on_load_checkpoint)
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)  # Lightning's summary shows FLOPs
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> Classifier:
        """The classifier a ``model`` node describes (conf/model/vgg.yaml, resnet.yaml), or a checkpoint's
        ``hyper_parameters``, which hold the same keys."""
        return cls(**node_values(node, TARGET, KEYS, "model"))

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], strict: bool = True) -> Classifier:
        """The classifier a loaded checkpoint's contents describe: its flat ``hyper_parameters``, then its weights."""
        model = cls.from_config(checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        return model

    def uses_channels_last(self, device: torch.device | None = None) -> bool:
        """Whether the convolutions run in NHWC layout on ``device`` (default: the module's).
        ``auto``: on CUDA (tensor cores want it) and on a CPU, where oneDNN's kernels measured
        faster in NHWC in both float32 and bf16 (``python -m cifake.tools.bench --sections precision``)."""
        return channels_last_on(self.hparams.get("channels_last", "auto"), device or self.device)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        self._channels_last = self.uses_channels_last(device)
        if self.hparams.get("channels_last", "auto") == "auto" and stage == "fit":
            log.info("model.channels_last=auto -> %s on %s (NHWC on CUDA and on a CPU, where it measures faster)",
                     "NHWC" if self._channels_last else "NCHW", device.type)
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.get("compile") and self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def set_channels_last(self, enabled: bool) -> Classifier:
        """Fix the memory layout outside a trainer (prediction with a chosen precision)."""
        self._channels_last = enabled
        self.net.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Run the plain network inside this block (Grad-CAM's hooks need it)."""
        previous, self._eager = self._eager, True
        try:
            yield
        finally:
            self._eager = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` for float images ``(N, 3, H, W)`` in [0, 1]."""
        channels_last = self._channels_last
        if channels_last is None:
            channels_last = self.uses_channels_last(images.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self.net if self._compiled is None or self._eager else self._compiled
        return net(images)

    def _metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> dict[str, torch.Tensor]:
        images, labels, rows = batch
        logits = self(images).float()  # the loss and metrics in float32, whatever the autocast
        targets = labels.float()
        smoothing = self.hparams.get("label_smoothing", 0.0)
        if stage == "train" and smoothing:
            targets = targets * (1 - smoothing) + smoothing / 2
        loss = self.loss(logits, targets)
        p_real = torch.sigmoid(logits.detach())
        n = len(labels)
        # Kept on the device and handed to torchmetrics once per epoch: its updates read tensors on
        # the host (input checks, bincount's output size), which on a GPU waits for every queued kernel.
        self._epoch_outputs.setdefault(stage, []).append((p_real, labels))
        if stage == "train":
            # Lightning reads a step value only when it writes logs (every log_every_n_steps); not on
            # the progress bar, which would read it at every refresh.
            self.log("train_step/loss", loss.detach(), on_step=True, on_epoch=False, batch_size=n)
        # sync_dist: under DDP the epoch mean covers every rank's images (synced once per epoch).
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=n,
                 sync_dist=True)
        # Callbacks (curves, grids) read these from on_*_batch_end.
        return {"loss": loss, "p_real": p_real, "label": labels, "row": rows}

    def _log_epoch(self, stage: str) -> None:
        outputs = self._epoch_outputs.pop(stage, [])
        if outputs:
            p_real, labels = (torch.cat(parts) for parts in zip(*outputs, strict=True))
            self._metrics(stage).update(two_class_probs(p_real), labels)
        values = self._metrics(stage).compute()
        self.log(f"{stage}/acc", values.pop(f"{stage}/acc"), on_epoch=True, prog_bar=stage == "val")
        self.log_dict(values, on_step=False, on_epoch=True)
        self._metrics(stage).reset()

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        size = batch[0].shape[-1]
        if size != self.train_input_size:
            self._count_training_inputs(size)
        self.images_seen += len(batch[1])  # the batch's size is known on the host
        return self._step(batch, "train")

    def _count_training_inputs(self, size: int) -> None:
        """Count FLOPs at the side ``size`` of the training inputs (crops: ``data.crop``), which only
        the first training batch tells; a run's inputs keep one size, so its compute stays one product."""
        if self.images_seen:
            raise ConfigError(f"this run trained on {self.train_input_size}x{self.train_input_size} inputs so far "
                              f"and now gets {size}x{size} ones; resume a run with the data.crop it started with")
        try:
            self.train_forward_flops = forward_flops(self.net, size)
        except RuntimeError as err:
            raise ConfigError(f"model.net cannot take {size}x{size} training inputs (data.crop={size}): {err}. "
                              "Crop for a network that takes any size (model=resnet), or set data.crop=null") from None
        self.train_input_size = size

    @property
    def compute(self) -> dict[str, Any]:
        """Training compute so far, over every process: ``forward_flops`` of one whole image,
        ``train_input_size`` and ``train_forward_flops`` (a training image: a crop with ``data.crop``),
        ``images_seen`` and ``train_pflop`` (3 x a training image's forward FLOPs x images seen)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        seen = self.images_seen * world
        return {"forward_flops": self.forward_flops, "train_input_size": self.train_input_size,
                "train_forward_flops": self.train_forward_flops, "images_seen": seen,
                "train_pflop": train_pflop(self.train_forward_flops, seen)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[COMPUTE_KEY] = self.compute  # resumed runs go on counting; evaluate.py reports it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before configure_optimizers when a fit resumes: the schedules' lengths, to check there.
        self.resumed_schedule_steps = next((s["total_steps"] for s in checkpoint.get("lr_schedulers", [])
                                            if s.get("total_steps") is not None), None)
        world = self.trainer.world_size if self._trainer is not None else 1
        record = checkpoint.get(COMPUTE_KEY) or {}
        self.images_seen = int(record.get("images_seen", 0)) // world
        if "train_input_size" in record:  # recorded since data.crop; before it, training saw whole images
            self.train_input_size = int(record["train_input_size"])
            self.train_forward_flops = int(record["train_forward_flops"])

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        self.log("compute/train_pflop", self.compute["train_pflop"], on_epoch=True, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _check_resumed_length(self, total_steps: int) -> None:
        """Refuse to resume a schedule laid out over the whole run (OneCycleLR) with another length: the
        checkpoint's schedule would take over with its own, and stop the run with torch's ``Tried to step N
        times`` once that many steps were done."""
        resumed = self.resumed_schedule_steps
        if self.trainer.ckpt_path is None or resumed is None or resumed == total_steps:
            return
        raise ConfigError(
            f"ckpt_path={self.trainer.ckpt_path}: its learning-rate schedule was laid out for {resumed} steps and "
            f"this run would take {total_steps} (trainer.max_epochs, the data or the batch size differ): a schedule "
            "over the whole run cannot be stretched once started. Resume with the run's own settings, or start a "
            f"new schedule from its weights: init_from={self.trainer.ckpt_path} (without ckpt_path)")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        """p(REAL), true label and dataset row of every image, so outputs cannot be misaligned."""
        images, labels, rows = batch
        return {"p_real": self.p_real(images), "label": labels, "row": rows}

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        make = instantiate(self.hparams.scheduler)
        extra = {}
        # Schedules over the whole run (OneCycleLR) need its length, which only the trainer knows.
        if "total_steps" in inspect.signature(make.func).parameters and "total_steps" not in make.keywords:
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
            self._check_resumed_length(extra["total_steps"])
        scheduler = make(optimizer=optimizer, **extra)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}
