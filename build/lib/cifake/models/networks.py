"""The networks a :class:`~cifake.models.classifier.Classifier` holds, built from their config node
(``model.net``: its ``_target_`` and keys, as conf/model/*.yaml declares them and checkpoints and exports
record them; an older version's through :func:`cifake.models.resnet.upgrade_arguments`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from cifake.core.errors import ConfigError
from cifake.models import resnet, vgg

NETWORKS: Mapping[str, Any] = {resnet.TARGET: resnet.ResNet, vgg.TARGET: vgg.VGG}


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """The network ``spec`` describes (``_target_``, one of :data:`NETWORKS`, and its settings)."""
    values = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    target = values.get("_target_")
    if target not in NETWORKS:
        raise ConfigError(f"model.net._target_={target!r}; choose one of {list(NETWORKS)}")
    return NETWORKS[target].from_config(resnet.upgrade_arguments(values))
