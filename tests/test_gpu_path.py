"""The GPU path's switches, checked where a CPU can check them (nothing here is timed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from cifake.core.errors import ConfigError
from cifake.data.augment import random_hflip
from cifake.jobs import train as train_job
from cifake.models import precision as arithmetic
from cifake.models.gradcam import gradcam
from cifake.models.precision import resolve_precision
from cifake.scoring.network import module_scorer
from cifake.training.trainer import build_trainer
from tests.helpers.config import conf_args, conf_node, tiny_demo_overrides


@pytest.mark.parametrize("native_bf16", [False, True])
def test_precision_auto_means_bf16_where_the_hardware_computes_it(monkeypatch, compose_cfg, caplog,
                                                                  native_bf16: bool) -> None:
    assert compose_cfg("train").trainer.precision == "auto"
    monkeypatch.setattr(arithmetic, "cpu_has_fast_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu_choice = "bf16-mixed" if native_bf16 else "32-true"
    with caplog.at_level("INFO", logger="cifake"):
        assert resolve_precision("auto", "auto") == cpu_choice
    assert f"-> {cpu_choice}" in caplog.text and "native bf16" in caplog.text  # the log says why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, an H100
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == cpu_choice
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto", "gpu") == "32-true"
    assert resolve_precision("16-mixed", "auto") == "16-mixed"


def test_precision_auto_does_not_count_emulated_bf16_on_cuda(monkeypatch, caplog) -> None:
    # A V100 or T4: torch.cuda.is_bf16_supported() says yes by default, counting emulation, slower than float32.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with caplog.at_level("INFO", logger="cifake"):
        assert resolve_precision("auto", "gpu") == "32-true"
    assert "no native bf16" in caplog.text


def test_tf32_is_set_for_the_block_only_and_scoring_is_true_float32() -> None:
    seen = []

    class Probe(torch.nn.Module):  # records the float32 arithmetic a scorer's forward pass runs under
        def p_real(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
            return torch.full((len(x),), 0.5)

    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    scorer = module_scorer(Probe(), torch.device("cpu"))
    with arithmetic.float32_matmul("high"):  # as experiment=reference trains
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
        scorer.p_real(np.zeros((2, 3, 32, 32), dtype=np.uint8))
        assert torch.get_float32_matmul_precision() == "high"  # given back to the block after scoring
    assert seen == [("highest", False)]  # no TF32 for scoring's matrix products, nor cuDNN's convolutions
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(ConfigError, match="float32_matmul_precision='medium'; choose one of"), \
            arithmetic.float32_matmul("medium"):
        pass


def test_reference_arithmetic_trains_in_tf32_says_so_and_records_it(compose_cfg, caplog) -> None:
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=1", "trainer.precision=32-true",
                                "float32_matmul_precision=high", "evaluate=true", "callbacks.gradcam=null",
                                "report.figures=false"])
    before = torch.get_float32_matmul_precision()
    with caplog.at_level("INFO"):
        train_job.run(cfg)
    assert torch.get_float32_matmul_precision() == before  # the fit's setting ends with the fit
    said = [r.getMessage() for r in caplog.records if "TF32" in r.getMessage()]
    assert len(said) == 1 and "Training in 32-true on cpu" in said[0] and "float32_matmul_precision=high" in said[0]
    computed = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["computed"]
    arithmetic_keys = ("precision", "device", "devices", "float32_matmul_precision")
    assert {k: computed["training"][k] for k in arithmetic_keys} == {
        "precision": "32-true", "device": "cpu", "devices": 1, "float32_matmul_precision": "high"}
    assert computed["training"]["seconds"] > 0 and computed["training"]["train_pflop"] > 0  # time and compute too
    assert computed["test"] == {"precision": "32-true", "device": "cpu"}


def test_cpu_trainer_precision_follows_the_cpu(compose_cfg) -> None:
    trainer = build_trainer(compose_cfg("train", ["trainer.accelerator=cpu"]))
    assert trainer.precision == ("bf16-mixed" if arithmetic.cpu_has_fast_bf16() else "32-true")
    trainer = build_trainer(compose_cfg("train", ["trainer.accelerator=cpu", "trainer.precision=32-true"]))
    assert trainer.precision == "32-true"


def _classifier(**kw):
    from cifake.models.classifier import Classifier

    torch.manual_seed(0)
    net = conf_node("model.net", filters=[8, 16, 16, 16], convs=[2, 2, 3, 3], dropouts=0.0, dense=[32])
    optimizer = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    return Classifier(**conf_args("model", net=net, optimizer=optimizer, gradcam_layer="net.features.1.3", **kw)).eval()


def test_channels_last_gives_the_same_outputs() -> None:
    plain, nhwc = _classifier(channels_last=False), _classifier(channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    nhwc.setup("fit")
    assert nhwc.net.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), atol=1e-5, rtol=1e-4)
    # auto: on CUDA and on a CPU (where oneDNN's NHWC kernels measured faster); forced either way
    assert _classifier().uses_channels_last(torch.device("cpu"))
    assert _classifier().uses_channels_last(torch.device("cuda"))
    assert not _classifier(channels_last=False).uses_channels_last(torch.device("cpu"))


def test_compile_keeps_plain_weights_and_grad_cam_runs_the_plain_module() -> None:
    model = _classifier(compile=True)
    model.setup("fit")
    assert model._compiled is not None
    assert list(model.state_dict()) == list(_classifier().state_dict())  # no _orig_mod. prefix

    class Refuse(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("Grad-CAM must not run the compiled module")

    object.__setattr__(model, "_compiled", Refuse())  # stands in for the compiled graph
    with pytest.raises(AssertionError, match="compiled"):
        model(torch.rand(2, 3, 32, 32))
    cams = gradcam(model, torch.rand(2, 3, 32, 32), [0, 1], "net.features.1.3")
    assert cams.shape == (2, 32, 32) and not model._eager


# What the GPU path reads from a composed train config: (trainer.accelerator, trainer.precision, model.compile,
# model.channels_last, data.on_device). As shipped everything is "auto": a GPU when there is one, bf16 where it
# computes it natively, NHWC and the data on the device on CUDA; no compile unless asked.
AS_SHIPPED = ("auto", "auto", False, "auto", "auto")


@pytest.mark.parametrize(("override", "expected"), [
    ("model.compile=true", ("auto", "auto", True, "auto", "auto")),
    ("model.channels_last=true", ("auto", "auto", False, True, "auto")),
    ("trainer.precision=bf16-mixed", ("auto", "bf16-mixed", False, "auto", "auto")),
    ("data.on_device=true", ("auto", "auto", False, "auto", True)),
    ("experiment=cpu_fast", ("cpu", "auto", False, "auto", "auto")),  # the CPU recipe pins the CPU
    ("experiment=best", AS_SHIPPED),  # the GPU recipe leaves every switch to the hardware
])
def test_gpu_switches_and_recipes_compose(compose_cfg, override: str, expected: tuple) -> None:
    cfg = compose_cfg("train", [override])
    got = (cfg.trainer.accelerator, cfg.trainer.precision, cfg.model.compile, cfg.model.channels_last,
           cfg.data.on_device)
    assert got == expected
    assert (got == AS_SHIPPED) == (override == "experiment=best")  # each switch changes what it names


def test_data_on_the_device_gives_the_same_batches(compose_cfg) -> None:
    batches = {}
    for on_device in (False, True):
        cfg = compose_cfg("train", [*tiny_demo_overrides(), f"data.on_device={str(on_device).lower()}",
                                    "data.num_workers=2"])
        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.val_dataloader()
        assert (loader.num_workers == 0) == on_device and (dm.val_set.resident is not None) == on_device
        batches[on_device] = next(iter(loader))
    for a, b in zip(batches[False], batches[True], strict=True):
        assert torch.equal(a, b)


def test_hflip_mirrors_with_the_given_probability() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(random_hflip(x, 1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, 0.0), x)
    mixed = random_hflip(torch.ones(1000, 1, 1, 2) * torch.tensor([0.0, 1.0]), 0.5)
    assert 400 < int((mixed[:, 0, 0, 0] == 1).sum()) < 600


def test_one_cycle_schedule_gets_its_length_from_the_trainer(compose_cfg) -> None:
    cfg = compose_cfg("train", [*tiny_demo_overrides(), "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                                "model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,"
                                "max_lr:0.01}", "model.scheduler_interval=step", "callbacks.gradcam=null"])
    trainer = build_trainer(cfg)
    model = instantiate(cfg.model, _convert_="all")
    trainer.fit(model, datamodule=instantiate(cfg.data, _convert_="all"))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 6 and trainer.lr_scheduler_configs[0].interval == "step"
