"""Load on a real serve.py: requests per second and latency at several concurrencies, with and
without batching, on a mix of good and bad uploads; every answer checked.

    python scripts/load_test.py --ckpt <model file> [--requests 200] [--concurrency 1 8 32] [--batch 1 16]

For each ``--batch`` (LitServe's max_batch_size; 1: no batching) it starts ``serve.py`` on
127.0.0.1, warms it up, then sends ``--requests`` uploads at each concurrency: one image per
request, a fifth of them bad (empty, text, a truncated JPEG, a decompression bomb). Every good
answer must carry the p_real the scoring layer gives for that file (cifake.scoring, as predict.py
scores it) and every bad one a 4xx; after each level the server must still answer /health, and
the memory of all its processes is read. The table is Markdown, for the README; measure
on a quiet machine (the client shares the CPU with the server). tests/test_serve_load.py runs the
same load, small, and checks it without timing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


# --- the uploads ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    name: str
    data: bytes
    p_real: float | None  # None: a bad upload, to be refused with a 4xx


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def payloads(ckpt: Path, precision: str, n_good: int = 12, seed: int = 0) -> list[Payload]:
    """Good uploads (32x32 images and a few photo-sized ones) with the p_real the scoring layer gives
    them, and one of each kind of bad upload."""
    from cifake.data.decode import decode_image
    from cifake.scoring import choose_resample, open_scorer

    rng = np.random.default_rng(seed)
    good = []
    for i in range(n_good):
        side = (32, 32) if i % 4 else (384, 512)
        pixels = rng.integers(0, 256, (*side, 3), dtype=np.uint8)
        if i % 4 == 0:  # a smooth photo-like image, downscaled by the server
            yy, xx = np.mgrid[0:side[0], 0:side[1]]
            pixels = np.clip(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.normal(0, 10, pixels.shape),
                             0, 255).astype(np.uint8)
        good.append((f"good-{i}.jpg", _jpeg(pixels)))
    scorer = open_scorer(ckpt, device="cpu", precision=precision)
    resample = choose_resample(None, scorer.resample, str(ckpt))
    images = np.stack([decode_image(io.BytesIO(data), int(scorer.image_size), resample)[0] for _, data in good])
    p = scorer.p_real(images).tolist()
    whole = _jpeg(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    bad = [("empty.png", b""), ("notes.txt", b"not an image\n"), ("half.jpg", whole[: len(whole) // 2]),
           ("bomb.png", bomb_png())]
    return [Payload(n, d, q) for (n, d), q in zip(good, p, strict=True)] + [Payload(n, d, None) for n, d in bad]


def schedule(items: Sequence[Payload], n: int, bad_share: float = 0.2, seed: int = 1) -> list[Payload]:
    """``n`` uploads drawn from ``items``, a ``bad_share`` of them bad, in a shuffled order."""
    rng = np.random.default_rng(seed)
    good = [p for p in items if p.p_real is not None]
    bad = [p for p in items if p.p_real is None]
    n_bad = round(n * bad_share)
    chosen = [bad[i % len(bad)] for i in range(n_bad)] + [good[i % len(good)] for i in range(n - n_bad)]
    return [chosen[i] for i in rng.permutation(n)]


# --- the server -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_pss_mb(pid: int) -> float:
    """Memory of ``pid`` and all its descendants, in MB: their proportional set sizes (from /proc), so
    that pages the forked HTTP server shares with its parent count once, not once per process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total / 1024


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path  # while it runs; removed with its folder once it stopped
    leftover: list[str] = field(default_factory=list)  # processes of its group still running after it stopped
    output: str = ""  # everything it logged, kept once it stopped

    def alive(self) -> bool:
        try:
            return self.process.poll() is None and httpx.get(f"{self.url}/health", timeout=10).text == "ok"
        except httpx.HTTPError:
            return False

    def memory_mb(self) -> float:
        return tree_pss_mb(self.process.pid)


@contextmanager
def running_server(ckpt: Path | None, overrides: Sequence[str] = (), startup_s: float = 240,
                   stop_signal: int = signal.SIGTERM, whole_group: bool = False) -> Iterator[Server]:
    """``serve.py`` for ``ckpt`` (``None``: the bundled model) on a free port of 127.0.0.1, until the
    block ends; then stopped with ``stop_signal`` (SIGTERM: serve.py shuts down as on Ctrl+C), sent to
    the main process (as ``docker stop`` or ``kill`` send it) or, ``whole_group``, to every process of
    the server (as Ctrl+C in a terminal, or systemd, send it), and its process group killed if anything
    lingers."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cifake-serve-"))
    log = work / "server.log"
    command = [sys.executable, str(ROOT / "serve.py"), *([] if ckpt is None else [f"ckpt_path={ckpt}"]),
               "host=127.0.0.1", f"port={port}", f"hydra.run.dir={work / 'run'}", *overrides]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + startup_s
        while not server.alive():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve.py did not come up (exit status {process.poll()}):\n"
                                   f"{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            if whole_group:
                os.killpg(process.pid, stop_signal)
            else:
                process.send_signal(stop_signal)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        deadline = time.monotonic() + 15  # multiprocessing's resource tracker exits just after the server
        while (left := group_members(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        server.leftover = [" ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0")) for pid in left
                           if Path(f"/proc/{pid}/cmdline").exists()]
        with contextlib.suppress(ProcessLookupError):  # what a graceful shutdown left behind in the group
            os.killpg(process.pid, signal.SIGKILL)
        server.output = log.read_text(errors="replace")
        shutil.rmtree(work, ignore_errors=True)  # one folder per server, or /tmp fills with them


# --- the load ---------------------------------------------------------------------------------------------------


@dataclass
class Level:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    wrong: list[str] = field(default_factory=list)  # every answer that was not what it should be
    good: int = 0
    bad: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def check(payload: Payload, status: int, body: dict, tolerance: float) -> str | None:
    """What is wrong with one answer, or None."""
    if payload.p_real is None:
        if 400 <= status < 500 and payload.name in body.get("error", ""):
            return None
        return f"{payload.name}: expected a 4xx naming it, got {status} {body}"
    if status != 200:
        return f"{payload.name}: expected 200, got {status} {body}"
    (result,) = body["images"]
    if result["name"] != payload.name or abs(result["p_real"] - payload.p_real) > tolerance:
        return f"{payload.name}: p_real {result['p_real']} from the server, {payload.p_real} from the scoring layer"
    return None


async def _load(url: str, uploads: Sequence[Payload], concurrency: int, timeout_s: float, tolerance: float) -> Level:
    queue: asyncio.Queue[Payload] = asyncio.Queue()
    for payload in uploads:
        queue.put_nowait(payload)
    latencies: list[float] = []
    wrong: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                payload = queue.get_nowait()
                start = time.perf_counter()
                try:
                    response = await client.post("/predict", files={"file": (payload.name, payload.data)})
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as err:
                    wrong.append(f"{payload.name}: {type(err).__name__}: {err}")
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if (problem := check(payload, status, body, tolerance)) is not None:
                    wrong.append(problem)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    level = Level(concurrency, len(uploads), seconds, latencies, wrong)
    level.bad = sum(p.p_real is None for p in uploads)
    level.good = len(uploads) - level.bad
    return level


def load(url: str, uploads: Sequence[Payload], concurrency: int, timeout_s: float = 60,
         tolerance: float = 1e-5) -> Level:
    """Send ``uploads`` with ``concurrency`` requests in flight; every answer checked (p_real within
    ``tolerance``: batched with others, an image rounds differently in float32 by ~1e-6)."""
    return asyncio.run(_load(url, uploads, concurrency, timeout_s, tolerance))


# --- the table --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="the model file to serve (.ckpt, .skops, .onnx)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="max_batch_size values (1: none)")
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--precision", default="32-true", help="the server's and the reference's precision")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="how far a served p_real may be from the reference (bf16 rounds more than float32)")
    parser.add_argument("overrides", nargs="*", help="more serve.py overrides, e.g. workers=2")
    args = parser.parse_args(argv)

    items = payloads(args.ckpt, args.precision)
    rows, problems = [], 0
    for batch in args.batch:
        overrides = [f"max_batch_size={batch}", f"batch_timeout={args.batch_timeout}", "device=cpu",
                     f"scoring.precision={args.precision}", "log_level=warning", *args.overrides]
        with running_server(args.ckpt, overrides) as server:
            load(server.url, schedule(items, 20), 4, tolerance=args.tolerance)  # warm-up, not counted
            warm = server.memory_mb()
            for concurrency in args.concurrency:
                level = load(server.url, schedule(items, args.requests, seed=concurrency), concurrency,
                             tolerance=args.tolerance)
                alive, memory = server.alive(), server.memory_mb()
                problems += len(level.wrong) + (not alive)
                rows.append((batch, level, alive, warm, memory))
                for problem in level.wrong[:5]:
                    print("  wrong:", problem, file=sys.stderr)
    print(f"model: {args.ckpt.name}; {args.requests} requests per level, a fifth of them bad uploads; "
          f"precision {args.precision}; {os.cpu_count()} CPU cores shared by client and server\n")
    print("| max_batch_size | concurrency | requests/s | p50 ms | p99 ms | good ok | bad 4xx | server alive "
          "| server memory, PSS MB (after warm-up -> after the level) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for batch, level, alive, warm, memory in rows:
        bad_wrong = sum(1 for w in level.wrong if "expected a 4xx" in w)
        print(f"| {batch} | {level.concurrency} | {level.rps:.1f} | {level.percentile(50):.1f} | "
              f"{level.percentile(99):.1f} | {level.good - (len(level.wrong) - bad_wrong)}/{level.good} | "
              f"{level.bad - bad_wrong}/{level.bad} | {'yes' if alive else 'NO'} | {warm:.0f} -> {memory:.0f} |")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
