"""Batch-norm over the global batch on the CPU (cifake.training.distributed): two gloo processes holding
parts of a batch compute what one process computes on the whole of it. (Whole DDP runs through
train.py: tests/test_experiments.py.)"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cifake.training.distributed import GlobalBatchNorm, GlobalBatchNormSync, _PlainBatchNorm, _swap

SIZES = (3, 5)  # images per rank: uneven, as a last batch can be


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(SIZES), 3, 8, 8, generator=g) * 3 + 1, torch.randn(sum(SIZES), 1, generator=g)


def step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, autocast: bool) -> dict[str, torch.Tensor]:
    """One training forward and backward of the summed squared error; what the test compares."""
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    (out.float() - target).square().sum().backward()
    found = {"out": out.detach().float(), "input_grad": x.grad}
    found |= {f"grad/{n}": p.grad for n, p in model.named_parameters()}
    found |= {f"state/{k}": v.float() for k, v in model.state_dict().items()}
    return found


def _rank(rank: int, port: int, results: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(SIZES))
    try:
        x, target = batch()
        start, stop = sum(SIZES[:rank]), sum(SIZES[:rank + 1])
        found = {}
        for autocast in (False, True):
            for name, value in step(_swap(net(), to_global=True), x[start:stop], target[start:stop], autocast).items():
                if name.startswith("grad/"):  # each rank holds its part; DDP would add them up
                    dist.all_reduce(value)
                found[(autocast, name)] = value.numpy()
        results.put((rank, found))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks() -> dict[bool, dict[str, torch.Tensor]]:
    """What two gloo processes computed, without and with bf16 autocast, their parts put together."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(rank, port, results)) for rank in range(len(SIZES))]
    for p in procs:
        p.start()
    parts = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    joined: dict[bool, dict[str, torch.Tensor]] = {False: {}, True: {}}
    for autocast, name in parts[0]:
        key = (autocast, name)
        if name in ("out", "input_grad"):
            value = torch.cat([torch.from_numpy(parts[r][key]) for r in range(len(SIZES))])
        else:
            assert (parts[0][key] == parts[1][key]).all(), name  # every rank agrees
            value = torch.from_numpy(parts[0][key])
        joined[autocast][name] = value
    return joined


@pytest.mark.parametrize(("autocast", "rtol"), [(False, 1e-5), (True, 2e-2)])
def test_two_processes_normalise_like_one_process_with_the_whole_batch(two_ranks, autocast: bool, rtol: float) -> None:
    # Within rtol of each tensor's largest value (at least 1: the conv bias ahead of batch-norm has a
    # gradient of zero, up to rounding). float32: the same sums in another order; 1e-5 leaves room
    # for that, not for a wrong statistic (per-rank statistics move the outputs by about 1).
    # bf16 autocast: the convolutions round to 8 bits.
    distributed = two_ranks[autocast]
    x, target = batch()
    single = step(net(), x, target, autocast)  # plain batch-norm over all 8 images
    assert distributed.keys() == single.keys()
    for name, expected in single.items():
        scale = expected.abs().max().clamp(min=1.0)
        assert (distributed[name] - expected).abs().max() <= rtol * scale, name


def test_one_process_is_plain_batch_norm() -> None:
    x, target = batch()
    assert all(torch.equal(a, b) for a, b in zip(step(_swap(net(), True), x, target, False).values(),
                                                 step(net(), x, target, False).values(), strict=True))


def test_swapping_keeps_the_weights_and_reverting_gives_plain_layers() -> None:
    plain = net()
    swapped = GlobalBatchNormSync().apply(plain)
    assert sum(isinstance(m, GlobalBatchNorm) for m in swapped.modules()) == 2
    assert swapped.state_dict().keys() == net().state_dict().keys()
    reverted = GlobalBatchNormSync().revert(swapped)
    assert not any(isinstance(m, GlobalBatchNorm) for m in reverted.modules())
    assert sum(isinstance(m, _PlainBatchNorm) for m in reverted.modules()) == 2
    assert all(torch.equal(a, b) for a, b in zip(reverted.state_dict().values(), net().state_dict().values(),
                                                 strict=True))


def test_trainer_ddp_on_the_cpu_gets_the_global_batch_norm(compose_cfg) -> None:
    from cifake.training.trainer import build_trainer

    cfg = compose_cfg("train", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=[]",
                                "callbacks=[]"])
    trainer = build_trainer(cfg)
    assert isinstance(trainer.strategy._layer_sync, GlobalBatchNormSync)
