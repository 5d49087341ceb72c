"""Hyper-parameters and final metrics in TensorBoard's HPARAMS tab, one row per run.

The row holds the settings people compare, first, then the rest of the experiment's settings;
plumbing (where files are, how many workers, what the console shows, which device runs it) is left
out. TensorBoard orders the tab's columns by hyper-parameter *name* (its server sorts the
experiment's ``hparam_infos`` by name; the page shows the first 5 hyper-parameters and the first 5
metrics until more are ticked), not by the order they were logged in. So each compared setting is
logged under a name that sorts in the order of :data:`COMPARE_FIRST` (``"06 model/optimizer/lr"``)
and shown under its own name (``model/optimizer/lr``, the column's display name); every other
setting keeps its own name, which sorts after those. Metrics are not sorted: the final validation
and test ones (:data:`METRICS_FIRST`) are logged first, so the first 5 the tab shows are those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from lightning.fabric.loggers import TensorBoardLogger
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

# The config branches that describe an experiment (paths, callbacks and Hydra's own do not).
HPARAM_KEYS = ("model", "data", "trainer", "seed")

# The columns a user compares, in this order, ahead of every other setting. An entry names a key
# as on the command line and takes the keys below it too (model.net: every network size).
COMPARE_FIRST = (
    "ckpt_path", "threshold",                                   # what evaluate.py scored, and how
    "model.net",                                                # network sizes, dropout
    "model.features", "model.n_estimators", "model.max_depth",  # the forest's counterparts
    "model.optimizer.lr", "model.optimizer.weight_decay", "model.label_smoothing",
    "data.batch_size", "data.shear", "data.hflip", "data.translate", "data.crop",  # batch, augmentation
    "trainer.max_epochs", "trainer.precision",
    "seed",
)

# Plumbing: settings that say where files are, how many workers run, what the console and the
# logs show or which device and kernels compute, none of which changes what a run learns. A key is
# plumbing when its last part matches one of these (fnmatch) patterns, when its value is a list of
# strings (the class names), or when it repeats another logged setting (``${data.image_size}``).
PLUMBING = (
    "_*_",                                              # _target_, _partial_, _recursive_, ...
    "root", "*_dir", "dirpath", "*_split",              # files and folders
    "*workers", "n_jobs",                               # processes
    "enable_*", "log_every_n_steps", "fast_dev_run", "profiler", "limit_predict_batches",
    "accelerator", "devices", "num_nodes", "strategy", "on_device", "channels_last", "compile",
    "benchmark", "deterministic", "sync_batchnorm",     # where and with which kernels it runs
    "eval_batch_size", "num_thresholds", "gradcam_layer", "skip_bad_files", "classes",
)

# The final metrics shown first (TensorBoard shows the first 5 of a run's metrics at first).
METRICS_FIRST = ("val/acc", "val/auroc", "test/acc", "test/auroc", "test/leak_free/acc",
                 "test/leak_free/auroc", "best/val/acc")

# A value that is only another key of the config: ${data.image_size}, ${seed}.
_COPY = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def run_hparams(cfg: DictConfig, keys: tuple[str, ...] = HPARAM_KEYS) -> dict[str, Any]:
    """The resolved settings of the ``keys`` branches that make one run differ from another, flat
    (``model/optimizer/lr``) and in the HPARAMS row's order: :data:`COMPARE_FIRST`, then the rest
    in config order; plumbing and copies of other logged settings left out."""
    present = [key for key in keys if key in cfg]
    raw = OmegaConf.to_container(OmegaConf.masked_copy(cfg, present), resolve=False)
    return hparam_columns(_config_settings(cfg, raw, "", tuple(keys)))


def hparam_columns(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (nested or already flat) as the HPARAMS row: flat ``a/b`` names, plumbing left
    out, the :data:`COMPARE_FIRST` settings first and the rest in their given order."""
    flat = {k: v for k, v in _flatten(params).items() if not is_plumbing(k, v)}
    return dict(sorted(flat.items(), key=lambda item: compare_rank(item[0])))


def is_plumbing(name: str, value: Any = None) -> bool:
    """Whether the setting ``name`` (``a/b`` or ``a.b``) with ``value`` stays out of the row."""
    last = re.split(r"[./]", name)[-1]
    if any(fnmatchcase(last, pattern) for pattern in PLUMBING):
        return True
    # Lists of names (the classes, paths) are plumbing; a network's are not (model.net.inputs is a choice compared).
    network = name.replace(".", "/").startswith("model/net/")
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value) and not network


def compare_rank(name: str) -> int:
    """The index of the first :data:`COMPARE_FIRST` entry that covers ``name``; past the end for
    every other setting."""
    path = name.replace(".", "/")
    for rank, entry in enumerate(COMPARE_FIRST):
        prefix = entry.replace(".", "/")
        if path == prefix or path.startswith(prefix + "/"):
            return rank
    return len(COMPARE_FIRST)


def column_name(name: str) -> str:
    """The name a setting is logged under so that TensorBoard's sort by name keeps the compared
    settings first, in order (``06 model/optimizer/lr``); other settings keep their own name (a
    digit sorts before any letter). Each name depends on the setting alone, so the columns of
    different runs line up."""
    rank = compare_rank(name)
    return f"{rank:02d} {name}" if rank < len(COMPARE_FIRST) else name


def hparam_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` under ``hp/<name>``, :data:`METRICS_FIRST` first: separate
    tags keep the one-point HPARAMS values apart from the per-epoch curves of the same metric."""
    values = {k: float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    first = [k for k in METRICS_FIRST if k in values]
    return {f"hp/{k}": values[k] for k in [*first, *(k for k in values if k not in first)]}


def log_hparams(loggers: list, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write ``params`` (as :func:`hparam_columns` shows them) with the final ``metrics`` to every
    logger (TensorBoard: the HPARAMS tab)."""
    columns = hparam_columns(params)
    values = hparam_metrics(metrics)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            _log_tensorboard(lg, columns, values)
        else:
            lg.log_hyperparams(columns, metrics=values)


@rank_zero_only
def _log_tensorboard(lg: TensorBoardLogger, columns: dict[str, Any], values: dict[str, float]) -> None:
    """What ``TensorBoardLogger.log_hyperparams`` writes, with each column under
    :func:`column_name` and displayed under its own name."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    lg.log_hyperparams(columns, metrics={})  # the logger's hparams.yaml; no summary without metrics
    if not values:
        return
    lg.log_metrics(values)
    names = {column_name(k): k for k in columns}
    experiment, start, end = hparams({column_name(k): _plain(v) for k, v in columns.items()}, values)
    content = experiment.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.display_name = names[info.name]
    content.content = data.SerializeToString()
    writer = lg.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)


def _plain(value: Any) -> bool | int | float | str:
    """A value TensorBoard can hold, as Lightning makes it (lists and None as their text)."""
    return value if type(value) in (bool, int, float, str) else str(value)


def _is_copy(raw: Any, keys: Iterable[str]) -> bool:
    """Whether ``raw`` (an unresolved config value) is ``${key}`` for a key of a logged branch."""
    match = _COPY.match(raw) if isinstance(raw, str) else None
    return bool(match) and match.group(1).split(".")[0] in keys


def _config_settings(node: DictConfig, raw: dict, prefix: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The settings under ``node`` flat, each resolved only once it is known not to be plumbing by
    its name nor a copy of another logged key (its unresolved value in ``raw``): a path such as
    ``${hydra:runtime.output_dir}`` is never resolved."""
    out: dict[str, Any] = {}
    for k, r in raw.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if is_plumbing(name) or _is_copy(r, keys) or OmegaConf.is_missing(node, k):
            continue
        value = node[k]
        if isinstance(value, DictConfig) and isinstance(r, dict):
            out.update(_config_settings(value, r, name, keys))
        elif isinstance(value, (DictConfig, ListConfig)):
            out.update(_flatten(OmegaConf.to_container(value, resolve=True), name))
        else:
            out[name] = value
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, lists of mappings by index, as Lightning flattens."""
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}/{k}" if prefix else k))
    return out
