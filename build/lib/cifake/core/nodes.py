"""Config nodes read into typed settings. A class that conf/ names in a node's ``_target_`` (the data module,
the classifier, its networks) takes the node's keys as Hydra's ``instantiate`` passes them (``**settings``),
checks them here (:func:`node_values`: exactly its keys, unknown ones told with the nearest real name) and
reads them into a few typed groups (:func:`fill`); its ``from_config`` builds it from a node that still
holds its ``_target_``. Checkpoints record the keys flat, as the node declares them."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from omegaconf import OmegaConf

from cifake.core.errors import ConfigError

HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_")  # Hydra's own keys: none is a setting
Group = TypeVar("Group")


def node_values(node: Mapping[str, Any], target: str, keys: Sequence[str], where: str,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of a config ``node`` (a DictConfig, resolved, or a plain mapping) as plain values, with
    ``overrides`` of some of them: exactly ``keys``, or a :class:`ConfigError` naming the missing and unknown
    ones (``where``: the node's name, e.g. ``data``). A ``_target_``, if given, must be ``target``."""
    values = dict(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    named = values.get("_target_", target)
    if named != target:
        raise ConfigError(f"{where}._target_={named!r}; this builds {target}")
    values = {k: v for k, v in values.items() if k not in HYDRA_KEYS}
    values.update(overrides or {})
    missing, unknown = [k for k in keys if k not in values], sorted(set(values) - set(keys))
    if unknown:  # told as a refused keyword was when Hydra built the class: the nearest real names
        refused = []
        for key in unknown:
            nearest = difflib.get_close_matches(key, list(keys), n=3)
            refused.append(f"'{key}'" + (f": did you mean {' or '.join(nearest)}?" if nearest else ""))
        raise ConfigError(f"{target.rpartition('.')[2]} takes no setting {'; nor '.join(refused)} ({where}). Fix the "
                          "key's name, or drop the override that added it (+...); --cfg job prints the composed config")
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}; its keys are {list(keys)}")
    return values


def fill(group: type[Group], values: Mapping[str, Any]) -> Group:
    """The dataclass ``group`` with each of its fields taken from ``values`` by name."""
    return group(**{f.name: values[f.name] for f in dataclasses.fields(group)})  # type: ignore[arg-type]
