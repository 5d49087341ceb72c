"""The report's VGG (cifake/models/vgg.py): the network conf/model/vgg.yaml builds, its sizes and dropout
settings, and a bad setting on the command line told in one line."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cifake.core.errors import ConfigError
from cifake.models.vgg import VGG
from tests.helpers.config import conf_args

# 3x3 convs 64x2, 128x2, 256x3, 512x3 with biases, 4 batch-norms (weight+bias),
# dense 2048 -> 4000 -> 1500 -> 1 with biases.
REPORT_NET_PARAMS = (
    (3 * 64 * 9 + 64) + (64 * 64 * 9 + 64)
    + (64 * 128 * 9 + 128) + (128 * 128 * 9 + 128)
    + (128 * 256 * 9 + 256) + 2 * (256 * 256 * 9 + 256)
    + (256 * 512 * 9 + 512) + 2 * (512 * 512 * 9 + 512)
    + 2 * (64 + 128 + 256 + 512)
    + (2048 * 4000 + 4000) + (4000 * 1500 + 1500) + (1500 + 1)
)


def test_default_config_builds_the_report_net(compose_cfg) -> None:
    cfg = compose_cfg("train")
    net = instantiate(cfg.model.net)
    assert sum(p.numel() for p in net.parameters()) == REPORT_NET_PARAMS == 21_836_185
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    dropouts = [m.p for m in net.features.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.4, 0.4, 0.3, 0.2]
    block = list(net.features[0])  # conv, relu, conv, relu, pool, norm, dropout
    assert [type(m).__name__ for m in block] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
                                                 "BatchNorm2d", "Dropout"]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in net.modules())  # logits out
    net.eval()
    out = net(torch.rand(5, 3, 32, 32))
    assert out.shape == (5,) and out.dtype == torch.float32


def vgg(**kw) -> VGG:
    """conf/model/vgg.yaml's network with ``kw`` replacing some of its settings."""
    return VGG(**conf_args("model.net", **kw))


def test_every_size_is_configurable() -> None:
    net = vgg(filters=[4, 8], convs=[1, 3], dropouts=[0.1, 0.5], dense=[16, 8], image_size=16)
    assert net(torch.rand(2, 3, 16, 16)).shape == (2,)
    assert len([m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [16, 8, 1]


def test_inconsistent_sizes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="one entry per block"):
        vgg(filters=[4, 8], convs=[1], dropouts=[0.1, 0.1], dense=[8])
    with pytest.raises(ValueError, match="not divisible"):
        vgg(filters=[4, 8, 8, 8, 8, 8], convs=[1] * 6, dropouts=[0.0] * 6, dense=[8], image_size=32)


def test_hparams_are_plain_containers(compose_cfg) -> None:
    cfg = compose_cfg("train", ["model.net.filters=[4,4,4,4]", "model.net.dense=[8]"])
    model = instantiate(cfg.model, _convert_="all")
    assert type(model.hparams.net) is dict and type(model.hparams.net["filters"]) is list
    assert OmegaConf.is_config(model.hparams.optimizer) is False
    assert model.hparams.classes == ["FAKE", "REAL"]


def test_one_dropout_rate_for_every_block_or_one_per_block() -> None:
    def rates(net: VGG) -> list[float]:
        return [m.p for m in net.features.modules() if isinstance(m, torch.nn.Dropout)]

    assert rates(vgg(filters=[4, 8], convs=[1, 1], dropouts=0.3, dense=[8])) == [0.3, 0.3]
    assert rates(vgg(filters=[4, 8], convs=[1, 1], dropouts=[0.1, 0.2], dense=[8])) == [0.1, 0.2]
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        vgg(filters=[4, 8], convs=[1, 1], dropouts=1.5, dense=[8])


def test_batch_norm_can_be_left_out_without_renaming_layers() -> None:
    with_bn = vgg(filters=[4, 8], convs=[1, 1], dropouts=0.0, dense=[8])
    without = vgg(filters=[4, 8], convs=[1, 1], dropouts=0.0, dense=[8], batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())
    assert [n for n, _ in with_bn.named_modules()] == [n for n, _ in without.named_modules()]


def test_a_bad_net_setting_on_the_command_line_is_one_clear_line(tmp_path, cli) -> None:
    proc = cli("train.py", tmp_path, "data=demo", "model.net.dropouts=[0.1,0.2]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "one entry per block" in proc.stderr
