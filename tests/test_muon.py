"""cifake.models.muon: Muon's orthogonalised steps for the convolution filters, AdamW's for the rest, in one
optimizer that schedulers, checkpoints and the model.optimizer override take."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
from torch import nn

from cifake.core.errors import ConfigError
from cifake.models.muon import ConvMuon, orthogonalise
from tests.helpers import ROOT
from tests.helpers.config import tiny_resnet_overrides

SETTINGS = {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.0, "muon_lr": 0.05, "momentum": 0.9}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 1))


def _backward(net: nn.Module, seed: int) -> None:
    net.zero_grad()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    net(x).square().mean().backward()


def test_one_step_moves_the_filters_by_an_orthogonalised_update_and_the_rest_by_adamw() -> None:
    net = _net()
    reference = copy.deepcopy(net)
    optimizer = ConvMuon(net.parameters(), **SETTINGS)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 6]  # two filters; biases, BN, the head
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    _backward(net, 0)
    _backward(reference, 0)
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    optimizer.step()
    for name in ("0.weight", "3.weight"):
        step = (net.get_parameter(name) - before[name]).reshape(len(before[name]), -1)
        gradient = grads[name].reshape(len(step), -1)
        singular = torch.linalg.svdvals(step / -SETTINGS["muon_lr"])
        # Every direction of the filters' step has about the same size (Muon's band, roughly 0.7 to 1.1) ...
        assert singular.min() > 0.6 and singular.max() < 1.2, (name, singular)
        spread = torch.linalg.svdvals(gradient)
        assert spread.max() / spread.min() > 3  # ... where the gradient's sizes spread widely
        # ... and it points where the gradient does, as torch.optim.Muon's update of the matrix would.
        assert torch.nn.functional.cosine_similarity(step.flatten(), -gradient.flatten(), dim=0) > 0.5
        torch.testing.assert_close(step, -SETTINGS["muon_lr"] * orthogonalise(gradient))
    # Everything else: AdamW's rule, as torch's AdamW takes the same step.
    others = [name for name, p in net.named_parameters() if p.ndim != 4]
    adamw = torch.optim.AdamW([reference.get_parameter(n) for n in others], lr=SETTINGS["lr"],
                              betas=SETTINGS["betas"], weight_decay=SETTINGS["weight_decay"])
    adamw.step()
    for name in others:
        torch.testing.assert_close(net.get_parameter(name), reference.get_parameter(name), msg=name)


def test_the_filters_follow_torchs_muon_on_their_matrix() -> None:
    """Several steps with momentum and weight decay: the first filters as torch.optim.Muon moves them as a matrix
    (torch orthogonalises in bfloat16, we in float32 on a CPU: equal to bfloat16's rounding)."""
    net = _net()
    settings = {**SETTINGS, "weight_decay": 0.1}
    optimizer = ConvMuon(net.parameters(), **settings)
    matrix = nn.Parameter(net[0].weight.detach().reshape(8, -1).clone())
    torchs = torch.optim.Muon([matrix], lr=settings["muon_lr"], weight_decay=settings["weight_decay"] * settings["lr"]
                              / settings["muon_lr"], momentum=settings["momentum"])
    for seed in range(3):
        _backward(net, seed)
        matrix.grad = net[0].weight.grad.reshape(8, -1).clone()
        optimizer.step()
        torchs.step()
    torch.testing.assert_close(net[0].weight.detach().reshape(8, -1), matrix.detach(), atol=2e-3, rtol=0)


def test_a_saved_state_resumes_the_same_steps() -> None:
    net = _net()
    optimizer = ConvMuon(net.parameters(), **SETTINGS)
    for seed in range(2):
        _backward(net, seed)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as Lightning loads a checkpoint
    resumed = _net()
    resumed.load_state_dict(saved["net"])
    other = ConvMuon(resumed.parameters(), **{**SETTINGS, "lr": 1.0, "muon_lr": 1.0})  # the state's rates win
    other.load_state_dict(saved["optimizer"])
    for model, opt in ((net, optimizer), (resumed, other)):
        _backward(model, 2)
        opt.step()
    for (name, a), b in zip(net.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_one_cycle_moves_both_rates_and_keeps_their_ratio() -> None:
    optimizer = ConvMuon(_net().parameters(), **SETTINGS)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.003, total_steps=10, pct_start=0.3)
    for _ in range(2):  # to the peak: 30% of 10 steps
        optimizer.step()
        schedule.step()
    filters, rest = optimizer.param_groups
    assert filters["lr"] == rest["lr"] == pytest.approx(0.003)
    assert filters["lr"] * filters["lr_scale"] == pytest.approx(0.003 * SETTINGS["muon_lr"] / SETTINGS["lr"])
    assert rest["betas"][0] == pytest.approx(0.85)  # AdamW's beta1 cycled, as with AdamW


@pytest.mark.parametrize("bad", [{"muon_lr": 0.0}, {"lr": -1.0}, {"momentum": 1.0}])
def test_bad_settings_are_refused_by_name(bad: dict) -> None:
    with pytest.raises(ConfigError, match="model.optimizer"):
        ConvMuon(_net().parameters(), **{**SETTINGS, **bad})


def test_the_documented_override_trains_a_resnet(compose_cfg) -> None:
    """train.py with the override exactly as docs/configuration.md gives it, under OneCycleLR, fast_dev_run."""
    from cifake.jobs import train as train_job

    (override,) = re.findall(r"'(\+\+model\.optimizer=\{_target_:cifake\.models\.muon\.ConvMuon[^']+)'",
                             (ROOT / "docs" / "configuration.md").read_text())
    cfg = compose_cfg("train", [*tiny_resnet_overrides(), "debug=fast_dev_run", override,
                                "model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,"
                                "max_lr:2.0e-3,pct_start:0.15}", "model.scheduler_interval=step"])
    assert cfg.model.optimizer._target_ == "cifake.models.muon.ConvMuon"
    train_job.run(cfg)
