"""Typed schemas for the config groups users edit most, so that a wrong type or a misspelt key
is refused by name when the config is composed, before anything runs.

The schemas hold no values: every default lives in ``conf/``. They are registered with Hydra's
ConfigStore on import, and the YAML files name them in their defaults lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional  # noqa: UP035 - OmegaConf needs typing's Optional on Python 3.10

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DemoSchema:
    train_per_class: int = MISSING
    test_per_class: int = MISSING
    seed: int = MISSING
    upsample_factor: int = MISSING
    noise: float = MISSING
    jpeg_quality: int = MISSING


@dataclass
class DataSchema:
    _target_: str = MISSING
    root: str = MISSING
    cache_dir: str = MISSING
    classes: list[str] = MISSING
    train_split: str = MISSING
    test_split: str = MISSING
    image_size: int = MISSING
    resample: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: Optional[int] = MISSING  # noqa: UP045
    val_fraction: float = MISSING
    validate_on: str = MISSING
    split_seed: int = MISSING
    shear: float = MISSING
    hflip: float = MISSING
    hflip_mode: str = MISSING
    translate: int = MISSING
    translate_padding: str = MISSING
    crop: Optional[int] = MISSING  # noqa: UP045
    skip_bad_files: bool = MISSING
    decode_workers: Optional[int] = MISSING  # noqa: UP045
    num_workers: int = MISSING
    on_device: Any = MISSING  # auto, true or false
    demo: Optional[DemoSchema] = MISSING  # noqa: UP045
    degrade: Optional[dict[str, Any]] = MISSING  # noqa: UP045  (checked by cifake.data.training_degradations)
    extra_train: Optional[str] = MISSING  # noqa: UP045


@dataclass
class VGGNetSchema:
    _target_: str = MISSING
    filters: list[int] = MISSING
    convs: list[int] = MISSING
    dropouts: Any = MISSING  # one rate per block, or one number for every block
    dense: list[int] = MISSING
    kernel_size: int = MISSING
    dense_dropout: float = MISSING
    in_channels: int = MISSING
    image_size: int = MISSING
    batch_norm: bool = MISSING


@dataclass
class VGGModelSchema:
    _target_: str = MISSING
    _recursive_: bool = MISSING
    net: VGGNetSchema = field(default_factory=VGGNetSchema)
    optimizer: dict[str, Any] = MISSING
    scheduler: Any = MISSING  # null or a mapping (Any: OmegaConf cannot merge a mapping into a typed null)
    scheduler_interval: str = MISSING
    classes: list[str] = MISSING
    image_size: int = MISSING
    num_thresholds: int = MISSING
    gradcam_layer: Optional[str] = MISSING  # noqa: UP045
    channels_last: Any = MISSING  # auto, true or false
    compile: bool = MISSING
    label_smoothing: float = MISSING


@dataclass
class ResNetSchema:
    _target_: str = MISSING
    stem: list[int] = MISSING
    widths: list[int] = MISSING
    blocks: list[int] = MISSING
    dropout: float = MISSING
    se: int = MISSING
    block: str = MISSING
    expansion: int = MISSING
    dirac_init: bool = MISSING
    frozen_bn_scale: bool = MISSING
    inputs: list[str] = MISSING
    in_channels: int = MISSING
    image_size: int = MISSING


@dataclass
class ResNetModelSchema(VGGModelSchema):
    net: ResNetSchema = field(default_factory=ResNetSchema)  # type: ignore[assignment]


def register() -> None:
    """Make the schemas available to ``conf/`` as ``/schema_data``, ``/schema_vgg`` and
    ``/schema_resnet`` (outside
    the config groups, so they are not offered as choices)."""
    cs = ConfigStore.instance()
    cs.store(name="schema_data", node=DataSchema)
    cs.store(name="schema_vgg", node=VGGModelSchema)
    cs.store(name="schema_resnet", node=ResNetModelSchema)


register()
