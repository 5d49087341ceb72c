"""The HPARAMS row: the settings people compare first, then the rest; no plumbing; the final
metrics first among the metrics, as TensorBoard's own server hands them to the tab."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from cifake.training.tracking import (
    COMPARE_FIRST,
    column_name,
    compare_rank,
    hparam_columns,
    hparam_metrics,
    log_hparams,
    run_hparams,
)
from tests.helpers.config import CONF_DIR

# The compared settings of each recipe, in the documented order: network sizes and dropout,
# learning rate, weight decay, label smoothing, batch size, augmentation, epochs, precision, seed.
RESNET_FIRST = ["model/net/stem", "model/net/widths", "model/net/blocks", "model/net/dropout", "model/net/se",
                "model/net/block", "model/net/expansion", "model/net/dirac_init", "model/net/frozen_bn_scale",
                "model/net/inputs", "model/net/in_channels", "model/optimizer/lr",
                "model/optimizer/weight_decay", "model/label_smoothing", "data/batch_size", "data/shear",
                "data/hflip", "data/translate", "data/crop", "trainer/max_epochs", "trainer/precision", "seed"]
VGG_FIRST = ["model/net/filters", "model/net/convs", "model/net/dropouts", "model/net/dense",
             "model/net/kernel_size", "model/net/dense_dropout", "model/net/in_channels", "model/net/batch_norm",
             "model/optimizer/lr", "model/label_smoothing", "data/batch_size", "data/shear", "data/hflip",
             "data/translate", "data/crop", "trainer/max_epochs", "trainer/precision", "seed"]
FOREST_FIRST = ["model/features/name", "model/features/bands", "model/features/high_cutoff", "model/n_estimators",
                "model/max_depth", "data/batch_size", "data/shear", "data/hflip", "data/translate", "data/crop", "seed"]
# Settings of this project's configs that are plumbing: where files are, workers, console and logs,
# device and kernels, the class names, and copies of other settings (model.image_size).
PLUMBING = {"_target_", "_partial_", "_recursive_", "root", "cache_dir", "default_root_dir", "classes",
            "decode_workers", "num_workers", "n_jobs", "train_split", "test_split", "eval_batch_size",
            "on_device", "skip_bad_files", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
            "fast_dev_run", "accelerator", "devices", "benchmark", "deterministic", "channels_last", "compile",
            "num_thresholds", "gradcam_layer", "random_state"}
COPIES = {"model/image_size", "model/net/image_size", "model/classes", "model/resample"}


@pytest.mark.parametrize(("overrides", "keys", "first"), [
    (["experiment=cpu_fast"], ("model", "data", "trainer", "seed"), RESNET_FIRST),
    (["model=vgg"], ("model", "data", "trainer", "seed"), VGG_FIRST),
    (["model=rf"], ("model", "data", "seed"), FOREST_FIRST),  # as the forest's job asks
])
def test_the_row_opens_on_the_compared_settings_without_plumbing(compose_cfg, overrides, keys, first) -> None:
    cfg = compose_cfg("train", overrides)
    columns = run_hparams(cfg, keys=keys)
    assert list(columns)[:len(first)] == first
    assert compare_rank(list(columns)[len(first)]) == len(COMPARE_FIRST)  # then the rest
    for name, value in columns.items():
        assert name.split("/")[-1] not in PLUMBING and name not in COPIES, name
        names = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        assert not names or name == "model/net/inputs", name  # lists of names are plumbing, but a network's inputs
    assert columns["data/image_size"] == 32  # a copied setting is logged once, where it is set
    assert columns["seed"] == 42


def test_the_other_settings_follow_in_config_order(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=cpu_fast"])
    rest = [k for k in run_hparams(cfg) if compare_rank(k) == len(COMPARE_FIRST)]
    config_order = [f"data/{k}" for k in cfg.data] + [f"model/{k}" for k in cfg.model] + \
                   [f"trainer/{k}" for k in cfg.trainer]
    branches = [re.sub(r"^(\w+/\w+).*", r"\1", k) for k in rest]  # model/scheduler/max_lr -> model/scheduler
    assert branches == sorted(branches, key=config_order.index)
    assert {"data/val_fraction", "data/translate_padding", "model/scheduler/pct_start", "trainer/max_time"} <= set(rest)


def test_paths_that_only_hydra_resolves_are_never_resolved() -> None:
    # paths.output_dir is ${hydra:runtime.output_dir}: outside a Hydra app it cannot be resolved,
    # and trainer.default_root_dir copies it; plumbing is dropped before anything is resolved.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["experiment=cpu_fast"])
    assert list(run_hparams(cfg))[:len(RESNET_FIRST)] == RESNET_FIRST


def test_names_sort_in_the_compared_order_whatever_the_run() -> None:
    names = ["seed", "data/val_fraction", "trainer/max_epochs", "data/batch_size", "model/optimizer/lr",
             "model/net/widths", "model/net/blocks", "data/shear", "model/label_smoothing"]
    by_name = sorted(names, key=column_name)  # TensorBoard orders the columns by name
    assert by_name == ["model/net/blocks", "model/net/widths", "model/optimizer/lr", "model/label_smoothing",
                       "data/batch_size", "data/shear", "trainer/max_epochs", "seed", "data/val_fraction"]
    assert column_name("model/optimizer/lr") == "06 model/optimizer/lr"  # the same in every run
    assert column_name("data/val_fraction") == "data/val_fraction"


def test_params_given_by_hand_are_cleaned_and_ordered_too() -> None:
    nested = {"ckpt_path": "runs/a/best.ckpt", "threshold": 0.5,
              "data": {"_target_": "x.DataModule", "root": "/data", "batch_size": 64, "classes": ["FAKE", "REAL"],
                       "shear": 0.2, "num_workers": 4, "val_fraction": 0.1}, "seed": 0}
    columns = hparam_columns(nested)
    assert list(columns) == ["ckpt_path", "threshold", "data/batch_size", "data/shear", "seed", "data/val_fraction"]
    assert hparam_columns(columns) == columns  # flat input is taken as it is


def test_final_metrics_come_first_and_only_finite_numbers() -> None:
    metrics = {"train/loss": 0.3, "best/val/acc": 0.91, "val/acc": 0.9, "test/precision_fake": 0.8,
               "test/leak_free/acc": 0.87, "test/acc": 0.88, "val/auroc": 0.95, "test/auroc": 0.94,
               "test/leak_free/auroc": 0.93, "val/loss": math.nan, "flag": True, "note": "text"}
    assert list(hparam_metrics(metrics)) == [
        "hp/val/acc", "hp/val/auroc", "hp/test/acc", "hp/test/auroc", "hp/test/leak_free/acc",
        "hp/test/leak_free/auroc", "hp/best/val/acc", "hp/train/loss", "hp/test/precision_fake"]
    assert hparam_metrics({"val/acc": 1})["hp/val/acc"] == 1.0


def test_loggers_other_than_tensorboard_get_the_row_under_its_own_names() -> None:
    class Recorder:
        def log_hyperparams(self, params, metrics=None):
            self.params, self.metrics = params, metrics

    lg = Recorder()
    log_hparams([lg], {"threshold": 0.5, "data/batch_size": 16, "data/cache_dir": "/c"}, {"test/acc": 0.5})
    assert list(lg.params.items()) == [("threshold", 0.5), ("data/batch_size", 16)]
    assert lg.metrics == {"hp/test/acc": 0.5}


class _Tiny(L.LightningModule):
    """Four inputs, one logit: enough for a real fit that logs val/acc and val/auroc."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.layer(x).squeeze(1), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx) -> None:
        x, y = batch
        logits = self.layer(x).squeeze(1)
        self.log("val/acc", ((logits > 0).float() == y).float().mean())
        self.log("val/auroc", torch.sigmoid(logits).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def served_experiment(logdir: Path) -> api_pb2.Experiment:
    """The experiment TensorBoard's server sends the HPARAMS tab: its columns, in their order."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, get_experiment

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    return get_experiment.Handler(context.RequestContext(), backend_context.Context(tb), "",
                                  api_pb2.GetExperimentRequest()).run()


def session_values(folder: Path) -> dict[str, object]:
    """The run's hyper-parameter values, as the session start info in its event files holds them
    (a logger closed by the end of fit writes the row to a new file)."""
    (start,) = [plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
                for path in sorted(folder.glob("events.out.tfevents.*"))
                for tag, content in _hparams_content(path).items() if tag == "_hparams_/session_start_info"]
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def _hparams_content(path: Path) -> dict[str, bytes]:
    ea = EventAccumulator(str(path), size_guidance={"tensors": 0})
    ea.Reload()
    try:
        return ea.PluginTagToContent("hparams")
    except KeyError:  # a file without the row
        return {}


def test_a_trained_run_opens_the_tab_on_the_compared_settings_and_final_metrics(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=cpu_fast"])
    logger = instantiate(cfg.logger.tensorboard)  # the project's own logger: <run>/tensorboard
    x = torch.randn(32, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).float()), batch_size=8)
    trainer = L.Trainer(logger=logger, max_epochs=1, accelerator="cpu", limit_train_batches=2, limit_val_batches=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        log_every_n_steps=1)
    trainer.fit(_Tiny(), loader, loader)
    # As train.py gathers them: the epoch's metrics, the best, then the test report's.
    metrics = {**{k: float(v) for k, v in trainer.callback_metrics.items()}, "best/val/acc": 0.75,
               "test/acc": 0.7, "test/auroc": 0.8, "test/precision_fake": 0.6, "test/leak_free/acc": 0.71,
               "test/leak_free/auroc": 0.81}
    log_hparams(trainer.loggers, run_hparams(cfg), metrics)
    logger.finalize("success")

    experiment = served_experiment(Path(cfg.paths.output_dir))
    shown = [h.display_name for h in experiment.hparam_infos]
    # The tab's order: the compared settings as documented (a group such as model.net by name).
    net = sorted(k for k in RESNET_FIRST if k.startswith("model/net/"))
    assert shown[:len(RESNET_FIRST)] == [*net, *(k for k in RESNET_FIRST if k not in net)]
    assert shown[:5] == ["model/net/block", "model/net/blocks", "model/net/dirac_init", "model/net/dropout",
                         "model/net/expansion"]  # the five columns the tab shows before any is ticked
    assert set(shown) == set(run_hparams(cfg)) and len(shown) == len(set(shown))
    assert not any(s.split("/")[-1] in PLUMBING or s in COPIES for s in shown)
    assert [m.name.tag for m in experiment.metric_infos][:6] == [
        "hp/val/acc", "hp/val/auroc", "hp/test/acc", "hp/test/auroc", "hp/test/leak_free/acc",
        "hp/test/leak_free/auroc"]

    values = session_values(Path(logger.log_dir))
    assert set(values) == {h.name for h in experiment.hparam_infos}
    assert values[column_name("data/batch_size")] == 128 and values[column_name("seed")] == 42
    assert values[column_name("model/net/widths")] == "[40, 80, 160]" and values["data/validate_on"] == "holdout"
