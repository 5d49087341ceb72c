"""serve.py under load, for real: a server process on 127.0.0.1, batching on, concurrency 1, 8 and
32, a fifth of the uploads bad. Every good answer carries the right number, every bad one is a 4xx
naming its file, and the server is alive with its memory bounded at the end. Bounded in count and
time; nothing here is timed (scripts/load_test.py measures, on a quiet machine)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.helpers.models import make_checkpoint
from tests.helpers.runner import load_test_module

REQUESTS = 64  # per concurrency level
GROWTH_MB = 300  # what the server's processes may grow by over all levels, after warm-up


@pytest.fixture(scope="module")
def lt() -> ModuleType:
    return load_test_module()


def test_a_real_server_under_mixed_load(lt, tmp_path) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    items = lt.payloads(ckpt, "32-true")
    assert {p.p_real is None for p in items} == {True, False}
    overrides = ["max_batch_size=16", "batch_timeout=0.02", "device=cpu", "log_level=warning",
                 "request_timeout=60"]
    with lt.running_server(ckpt, overrides) as server:
        lt.load(server.url, lt.schedule(items, 16), 4)  # warm-up
        warm = server.memory_mb()
        assert warm > 0
        for concurrency in (1, 8, 32):
            level = lt.load(server.url, lt.schedule(items, REQUESTS, seed=concurrency), concurrency, timeout_s=120)
            assert level.wrong == [], level.wrong[:5]
            assert len(level.latencies_ms) == REQUESTS and level.bad >= REQUESTS // 6
            assert server.alive(), server.log.read_text()[-3000:]
        assert server.memory_mb() < warm + GROWTH_MB, f"{warm:.0f} MB after warm-up, {server.memory_mb():.0f} MB now"
    # SIGTERM stops it as Ctrl+C does: its HTTP and inference workers stop with it.
    assert server.process.returncode == 0, server.output[-3000:]
    assert server.leftover == [], f"processes left running: {server.leftover}"
