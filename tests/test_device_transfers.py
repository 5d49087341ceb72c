"""What crosses from the accelerator to the host during training, checked on the CPU.

On CUDA, turning a device tensor into numpy fails, and every ``.item()``, ``bool(tensor)`` or
blocking copy makes the host wait for the GPU. A CPU cannot show either, so these tests make it
show them: a tensor subclass stands in for device memory, and the host reads are counted.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities import apply_func

from cifake.data.datamodule import CIFAKEDataModule
from cifake.training.trainer import build_trainer
from tests.helpers.config import tiny_demo_overrides
from tests.helpers.outputs import read_events

# What fails on a CUDA tensor (numpy() and __array__, behind np.asarray, matplotlib and PIL).
# .item() and .tolist() work there (and are counted as host syncs by the other tests).
_NUMPY_READS = {torch.Tensor.numpy, torch.Tensor.__array__}


class OnDevice(torch.Tensor):
    """A CPU tensor that refuses numpy conversion until ``.cpu()`` takes it to the host, as a
    tensor in CUDA memory does. Results of operations on it stay on the "device"."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _NUMPY_READS:
            raise TypeError("can't convert a device tensor to numpy: call .cpu() first (stand-in for cuda:0)")
        result = super().__torch_function__(func, types, args, kwargs or {})
        if func is torch.Tensor.cpu:
            return result.as_subclass(torch.Tensor)
        return result

    def __deepcopy__(self, memo: dict) -> OnDevice:  # metric states copied from device data stay on the device
        return self.as_subclass(torch.Tensor).clone().as_subclass(OnDevice)


def _stand_in_resident(monkeypatch: pytest.MonkeyPatch) -> None:
    """The datamodule's device-resident arrays become :class:`OnDevice` tensors."""
    original = CIFAKEDataModule._resident

    def resident(self, split):
        tensors = original(self, split)
        return None if tensors is None else tuple(t.as_subclass(OnDevice) for t in tensors)

    monkeypatch.setattr(CIFAKEDataModule, "_resident", resident)


def test_the_stand_in_refuses_numpy_until_cpu() -> None:
    x = torch.arange(4).as_subclass(OnDevice)
    for read in (lambda t: t.numpy(), lambda t: __import__("numpy").asarray(t), lambda t: (t * 2)[:2].numpy()):
        with pytest.raises(TypeError, match="call .cpu"):
            read(x)
    assert type(x.cpu()) is torch.Tensor and x.cpu().numpy().tolist() == [0, 1, 2, 3]


def test_a_fit_and_test_with_every_dashboard_on_device_resident_data(compose_cfg, monkeypatch) -> None:
    """Data kept on the device (``data.on_device``, the default on CUDA) through a fit, its
    validation figures (curves, prediction grid, Grad-CAM) and a test run."""
    _stand_in_resident(monkeypatch)
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "data.on_device=true", "trainer.max_epochs=1"])
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    trainer: L.Trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert isinstance(datamodule.train_set.resident[0], OnDevice)  # the stand-in was in use
    trainer.test(model, datamodule=datamodule)
    events = read_events(Path(cfg.paths.output_dir) / "tensorboard")
    for stage in ("val", "test"):
        assert {f"{stage}/roc", f"{stage}/predictions", f"{stage}/gradcam/fixed"} <= events["images"]


class HostReads:
    """Counts what makes the host wait for an accelerator: reading a tensor's value (``item``,
    ``tolist``, ``bool``, ``int``, ``float``), taking it to the host (``cpu``, ``numpy``), and
    copying host memory (a tensor made by ``torch.from_numpy``) to a device without
    ``non_blocking``, after which PyTorch waits for the copy.

    Two reads are left out because they read host memory on a GPU too: the step counts torch's
    optimizers keep on the host (``capturable=False``), and torchmetrics' check for logits, which
    branches on the values on a CPU only (on a GPU it is a ``torch.where``)."""

    READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")
    STAND_IN = "host sync in a training step: {} (stand-in for torch.cuda.set_sync_debug_mode('error'))"
    HOST_ON_ANY_DEVICE = {(f"torch{os.sep}optim{os.sep}optimizer.py", "_get_value"),
                          (f"torchmetrics{os.sep}utilities{os.sep}compute.py", "normalize_logits_if_needed")}

    def __init__(self) -> None:
        self.count = 0
        self.raising = False  # True: a read raises, as CUDA's sync detector in "error" mode does
        self._host: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()

    @contextmanager
    def counting(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostReads]:
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        original_from_numpy, original_to = torch.from_numpy, torch.Tensor.to

        def from_numpy(array):
            tensor = original_from_numpy(array)
            self._host[id(tensor)] = tensor
            return tensor

        def to(tensor, *args, **kwargs):
            from_host = self._host.get(id(tensor)) is tensor
            names_device = "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)
            if from_host and names_device and not kwargs.get("non_blocking", False):
                self._read("a blocking copy from host memory")
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch, "from_numpy", from_numpy)
        monkeypatch.setattr(torch.Tensor, "to", to)
        # Lightning moves batches with non_blocking=True except to a CPU: make the CPU count as a device.
        monkeypatch.setattr(apply_func, "_BLOCKING_DEVICE_TYPES", ())
        try:
            yield self
        finally:
            monkeypatch.undo()

    def _read(self, what: str) -> None:
        self.count += 1
        if self.raising:
            raise RuntimeError(self.STAND_IN.format(what))

    def _counted(self, method):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_code
            if not any(caller.co_filename.endswith(path) and caller.co_name == name
                       for path, name in self.HOST_ON_ANY_DEVICE):
                self._read(f"Tensor.{method.__name__}")
            return method(*args, **kwargs)

        return wrapper


class StepReads(L.Callback):
    """Host reads in each training step: from the end of one step to the end of the next, so the
    batch's fetch and transfer, the callbacks' per-batch hooks (EMA's update) and the optimizer
    step are all inside."""

    def __init__(self, reads: HostReads) -> None:
        self.reads, self.per_step, self._last = reads, [], 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = self.reads.count

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.per_step.append(self.reads.count - self._last)
        self._last = self.reads.count


@pytest.mark.parametrize("recipe", [
    ["model=vgg", "model.net.filters=[8,8,8,8]", "model.net.dense=[16]"],  # the report's net, default callbacks
    ["experiment=best", "model.net.stem=[8,8]", "model.net.widths=[8,8,8]", "model.net.blocks=[1,1,1]",
     "callbacks.ema.update_starting_at_epoch=0"],  # EMA after every step, one-cycle, flips, shifts
], ids=["vgg", "best"])
def test_no_host_reads_in_a_training_step(compose_cfg, monkeypatch, recipe: list[str]) -> None:
    tiny_data = [o for o in tiny_demo_overrides(train_per_class=64) if not o.startswith("model.net.")]
    overrides = [*tiny_data, *recipe, "data=demo", "trainer.accelerator=cpu", "data.on_device=true",
                 "data.batch_size=4", "trainer.max_epochs=1", "trainer.limit_train_batches=20",
                 "trainer.limit_val_batches=2", "trainer.log_every_n_steps=50", "trainer.enable_progress_bar=true",
                 "callbacks.gradcam=null", "callbacks.prediction_grid=null", "evaluate=false"]
    cfg = compose_cfg("train", overrides)
    reads = HostReads()
    spy = StepReads(reads)
    trainer = build_trainer(cfg, extra_callbacks=[spy])
    model, datamodule = instantiate(cfg.model, _convert_="all"), instantiate(cfg.data, _convert_="all")
    with reads.counting(monkeypatch):
        trainer.fit(model, datamodule=datamodule)
    assert len(spy.per_step) == 20
    # The first step may set things up once (optimizer state, lazily built modules); none after it.
    assert spy.per_step[1:] == [0] * 19, f"host reads per training step: {spy.per_step}"
    assert "train/acc" in trainer.callback_metrics and "train_step/loss" in trainer.logged_metrics


class SyncWindow(L.Callback):
    """Arms a sync detector over training steps only: from the end of the second step (the first two may
    set things up once: optimizer state, the EMA copy) on, so each watched step holds its batch's fetch and
    transfer, the augmentation, forward, backward, the optimizer step and the callbacks' per-batch hooks.
    It is disarmed at the end of the epoch's last step, before validation's loader starts, so anything else
    (validation, the epoch's end, the end of training, an exception's handling) runs with it off, where
    reading a value once is expected. Counts the steps it watched."""

    def __init__(self, arm: Callable[[], None], disarm: Callable[[], None]) -> None:
        self.arm, self.disarm = arm, disarm
        self.armed, self.watched = False, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = batch_idx + 1 >= trainer.num_training_batches  # the epoch ends, validation starts: disarmed
        if self.armed:
            self.watched += 1
            if last:
                self._set(False)
        elif batch_idx >= 1 and not last:
            self._set(True)

    def _set(self, armed: bool) -> None:
        (self.arm if armed else self.disarm)()
        self.armed = armed

    def on_validation_start(self, trainer, pl_module) -> None:
        self._set(False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._set(False)

    def on_train_end(self, trainer, pl_module) -> None:
        self._set(False)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._set(False)


# 22 steps, the first two unwatched: 20 watched when the epoch has at least 22 batches (SYNC_DATA: 96 training
# images at batch 4, 24 batches). With fewer, the window closes at the epoch's end and watches fewer.
SYNC_STEPS = 22
SYNC_DATA = [o for o in tiny_demo_overrides(train_per_class=64) if not o.startswith("model.net.")]
SYNC_RECIPE = ["model=vgg", "model.net.filters=[8,8,8,8]", "model.net.dense=[16]", "data.batch_size=4",
               "trainer.max_epochs=1", f"trainer.limit_train_batches={SYNC_STEPS}", "trainer.limit_val_batches=2",
               "trainer.log_every_n_steps=50", "callbacks.gradcam=null", "callbacks.prediction_grid=null",
               "evaluate=false"]


def fit_under_sync_window(cfg, window: SyncWindow, model: L.LightningModule | None = None,
                          extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """Fit ``cfg`` (its model, or ``model``) with ``window`` watching the training steps."""
    trainer = build_trainer(cfg, extra_callbacks=[*extra_callbacks, window])
    try:
        trainer.fit(model or instantiate(cfg.model, _convert_="all"), datamodule=instantiate(cfg.data, _convert_="all"))
    finally:
        window.disarm()
    return trainer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: set_sync_debug_mode checks real syncs")
def test_cuda_training_steps_do_not_synchronise(compose_cfg) -> None:
    """On a GPU, PyTorch's own sync detector over 20 training steps of the report's net: a sync inside a
    step raises there; validation and the epoch's end run with it off. scripts/gpu_check.py runs this."""
    cfg = compose_cfg("train", [*SYNC_DATA, *SYNC_RECIPE, "trainer.accelerator=gpu"])
    window = SyncWindow(lambda: torch.cuda.set_sync_debug_mode("error"),
                        lambda: torch.cuda.set_sync_debug_mode("default"))
    fit_under_sync_window(cfg, window)
    assert window.watched == SYNC_STEPS - 2


# The same window on the CPU, with HostReads raising where CUDA's detector would: what the CUDA test can fail for.
def _stand_in_window(reads: HostReads) -> SyncWindow:
    def arm() -> None:
        reads.raising = True

    def disarm() -> None:
        reads.raising = False

    return SyncWindow(arm, disarm)


def test_the_sync_window_passes_the_recipe_on_the_stand_in(compose_cfg, monkeypatch) -> None:
    cfg = compose_cfg("train", [*SYNC_DATA, *SYNC_RECIPE, "trainer.accelerator=cpu", "data.on_device=true"])
    reads = HostReads()
    window = _stand_in_window(reads)
    with reads.counting(monkeypatch):
        fit_under_sync_window(cfg, window)
    assert window.watched == SYNC_STEPS - 2


def test_the_sync_window_fails_a_training_step_that_reads_a_value(compose_cfg, monkeypatch) -> None:
    cfg = compose_cfg("train", [*SYNC_DATA, *SYNC_RECIPE, "trainer.accelerator=cpu", "data.on_device=true"])
    model = instantiate(cfg.model, _convert_="all")
    step = model.training_step

    def reading_step(batch, batch_idx):
        out = step(batch, batch_idx)
        out["loss"].item()  # the host waits for the device: what the detector exists to catch
        return out

    monkeypatch.setattr(model, "training_step", reading_step)
    reads = HostReads()
    window = _stand_in_window(reads)
    with reads.counting(monkeypatch), pytest.raises(RuntimeError, match="stand-in") as caught:
        fit_under_sync_window(cfg, window, model=model)
    assert "reading_step" in {frame.name for frame in caught.traceback}  # raised inside the training step
    assert window.watched == 0  # the first watched step failed


class EpochReads(L.Callback):
    """Reads values where reading them once is expected: after validation and at the epoch's end."""

    def __init__(self) -> None:
        self.read = 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.read += int(torch.ones(1).sum().item())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.read += int(torch.ones(1).sum().item())


def test_the_sync_window_ignores_reads_outside_training_steps(compose_cfg, monkeypatch) -> None:
    """The old test's trap: fewer batches than it asked for (72 training images at batch 4: 18), so the
    epoch ends, and validation runs, before the step that switched the detector off."""
    small = [o for o in tiny_demo_overrides() if not o.startswith("model.net.")]
    cfg = compose_cfg("train", [*small, *SYNC_RECIPE, "trainer.accelerator=cpu", "data.on_device=true"])
    reads, epoch_reads = HostReads(), EpochReads()
    window = _stand_in_window(reads)
    with reads.counting(monkeypatch):
        trainer = fit_under_sync_window(cfg, window, extra_callbacks=[epoch_reads])
    assert trainer.num_training_batches == 18 and window.watched == 16
    assert epoch_reads.read >= 2  # the reads happened, with the window closed
