"""Each setting once, in conf/: for every class a config builds (``_target_: cifake...``), its YAML
keys, its schema's fields (cifake/core/schemas.py, where one types the node) and its constructor's
parameters are the same set, and neither the constructor nor the schema gives them a value."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from collections.abc import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

import cifake.core.schemas  # noqa: F401  (registers the config schemas before composing)
from tests.helpers.config import CONF_DIR

HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_", "defaults"}
TOP_LEVEL = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compositions() -> Iterator[tuple[str, list[str]]]:
    """Every top-level config, and train with every data, model and experiment option."""
    for name in TOP_LEVEL:
        yield name, []
    for data in options("data"):
        for model in options("model"):
            yield "train", [f"data={data}", f"model={model}"]
    for experiment in options("experiment"):
        yield "train", [f"experiment={experiment}"]


def cifake_nodes(node: object, where: str) -> Iterator[tuple[str, DictConfig]]:
    """Every mapping under ``node`` whose ``_target_`` names something in cifake."""
    if isinstance(node, DictConfig) and not (node._is_none() or node._is_missing()):
        target = node._get_node("_target_") if "_target_" in node else None
        if target is not None and str(target._value()).startswith("cifake."):
            yield where, node
        for key in node:
            yield from cifake_nodes(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig) and not (node._is_none() or node._is_missing()):
        for i in range(len(node)):
            yield from cifake_nodes(node._get_node(i), f"{where}[{i}]")


def yaml_targets() -> set[str]:
    found = set()
    for path in CONF_DIR.rglob("*.yaml"):
        found |= set(re.findall(r"_target_:\s*(cifake\.[\w.]+)", path.read_text()))
    return found


def constructor_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The named parameters of ``cls(...)`` and whether it also takes ``**kwargs``. A class that takes its
    node's keys as ``**settings`` and checks them (cifake.core.nodes.node_values) lists them in its module's
    ``KEYS``: each is a required parameter, and no other is taken."""
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    if [(p.name, p.kind) for p in params.values()] == [("settings", inspect.Parameter.VAR_KEYWORD)]:
        keys = sys.modules[cls.__module__].KEYS
        return {key: inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY) for key in keys}, False
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named, var_keyword


def checked_nodes() -> dict[str, tuple[str, DictConfig]]:
    nodes = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, overrides in compositions():
            cfg = compose(config_name=name, overrides=overrides)
            for where, node in cifake_nodes(cfg, ""):
                nodes[f"{name} {' '.join(overrides)}: {where.lstrip('.')}"] = (str(node._target_), node)
    # The Hydra callbacks are not part of a composed job config: read them from their file.
    raw = OmegaConf.load(CONF_DIR / "hydra" / "default.yaml")
    for where, node in cifake_nodes(raw, "hydra"):
        nodes[f"hydra/default.yaml: {where}"] = (str(node._target_), node)
    return nodes


def test_yaml_keys_schema_fields_and_constructor_parameters_agree() -> None:
    nodes = checked_nodes()
    assert {target for target, _ in nodes.values()} == yaml_targets(), "a _target_ in conf/ went unchecked"
    problems = []
    for where, (target, node) in nodes.items():
        cls = get_class(target)
        keys = {str(k) for k in node} - HYDRA_KEYS
        params, var_keyword = constructor_parameters(cls)
        defaulted = sorted(k for k, p in params.items() if p.default is not inspect.Parameter.empty)
        if defaulted:
            problems.append(f"{where}: {target}.__init__ defaults {defaulted} (conf/ sets them)")
        missing = sorted(set(params) - keys)
        extra = sorted(keys - set(params))
        if missing:
            problems.append(f"{where}: {target} takes {missing}, which the YAML does not set")
        if extra and not var_keyword:
            problems.append(f"{where}: the YAML sets {extra}, which {target} does not take")
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = {f.name: f for f in dataclasses.fields(schema)}
            schema_keys = set(fields) - HYDRA_KEYS
            if schema_keys != set(params):
                problems.append(f"{where}: {schema.__name__} has {sorted(schema_keys ^ set(params))} "
                                f"where {target} differs")
            for f in fields.values():
                nested = f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
                    f.default_factory)
                if f.default != MISSING and not nested:
                    problems.append(f"{where}: {schema.__name__}.{f.name} defaults to {f.default!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("data", options("data"))
def test_demo_keys_match_their_schema(data: str) -> None:
    """data.demo (not a class, but typed): the demo YAML's keys are DemoSchema's fields."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}"])
    if cfg.data.demo is None:
        return
    fields = {f.name for f in dataclasses.fields(cifake.core.schemas.DemoSchema)}
    assert set(cfg.data.demo) == fields
