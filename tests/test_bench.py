import re
from pathlib import Path

import pytest

from cifake.models.networks import build_network
from cifake.tools import bench
from tests.helpers.config import tiny_demo_overrides


def test_bench_writes_one_table_with_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    bench.main(["--steps", "2", "--data-images", "48", "--warmup", "1", "--repeats", "1", "--large-batch", "24",
                "--workers", "0", "--sections", "data,train,eval", "--out", str(out),
                f"paths.cache_dir={tmp_path / 'cache'}", *tiny_demo_overrides()])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| (")]
    measurements = [r[0].strip() for r in rows]
    assert measurements == [f"({section}) {what}, batch {batch}" for section, what in
                            [("a", "data path"), ("b", "training"), ("c", "evaluation")]
                            for batch in (16, 24) for _ in range(2)]
    for k in range(0, len(rows), 2):
        assert float(rows[k][3]) == 1.00  # each measurement's first path is its reference
        assert float(rows[k][2].replace(",", "")) > 0 and float(rows[k + 1][2].replace(",", "")) > 0
    assert "ImageFolder" in rows[0][1] and "decode-once" in rows[1][1] and "Lightning" in rows[5][1]
    for k in range(4, len(rows), 2):  # (b), (c): both paths of a pair compute alike, and each row says how
        how = [re.search(r"(32-true|bf16-mixed)( with TF32)?, (NCHW|NHWC)\)$", rows[k + i][1].strip())
               for i in (0, 1)]
        assert how[0] and how[1] and how[0].group(0) == how[1].group(0), rows[k:k + 2]


def test_bench_compares_precisions_and_layouts_for_both_networks(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    demo = [o for o in tiny_demo_overrides() if not o.startswith(("model.", "data.batch_size", "data.demo."))]
    # Batches of 8 (the networks' own are 32 and 128): bf16 is emulated, and slow, on a CPU without it.
    bench.main(["--steps", "1", "--warmup", "1", "--repeats", "1", "--sections", "precision", "--out", str(out),
                f"paths.cache_dir={tmp_path / 'cache'}", "data.demo.train_per_class=200",
                "data.demo.test_per_class=80", *demo, "data.batch_size=8", "data.eval_batch_size=16"])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.read_text().splitlines()
            if line.startswith("| (d)")]
    assert [r[0] for r in rows[::4]] == [f"(d) {label}, batch 8, {what}" for label, _ in bench.PRECISION_NETS.values()
                                          for what in ("training", "evaluation")]
    assert [r[1] for r in rows[:4]] == list(bench.PRECISIONS)
    assert all(float(r[2].replace(",", "")) > 0 for r in rows)
    assert all(float(r[3]) == 1.00 for r in rows[::4])  # float32 NCHW is each group's reference
    # GFLOP/s achieved: images/s x the FLOPs one image costs (3 x forward for training, forward for evaluation).

    from cifake.models.flops import forward_flops
    from tests.helpers.config import compose_config

    for i, net in enumerate(bench.PRECISION_NETS):
        forward = forward_flops(build_network(compose_config("train", bench.PRECISION_NETS[net][1]).model.net), 32)
        for k, cost in ((8 * i, 3 * forward), (8 * i + 4, forward)):
            rate, achieved = float(rows[k][2].replace(",", "")), float(rows[k][4].replace(",", ""))
            assert achieved == pytest.approx(rate * cost / 1e9, rel=0.01, abs=0.1)


def test_bench_times_training_with_and_without_degradations(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    demo = [o for o in tiny_demo_overrides() if not o.startswith(("model.", "data.batch_size", "data.demo."))]
    bench.main(["--steps", "2", "--warmup", "1", "--repeats", "1", "--sections", "degrade", "--out", str(out),
                f"paths.cache_dir={tmp_path / 'cache'}", "data.demo.train_per_class=200",
                "data.demo.test_per_class=80", *demo])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.read_text().splitlines()
            if line.startswith("| (e)")]
    assert [r[1] for r in rows] == list(bench.DEGRADE_RECIPES)
    assert float(rows[0][3]) == 1.00 and float(rows[1][2].replace(",", "")) > 0


def test_an_unknown_precision_network_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sections", "precision", "--precision-nets", "vgg,resnet50", "--out", str(tmp_path / "b.md")])
    assert stopped.value.code == 2 and not (tmp_path / "b.md").exists()
    assert "no network resnet50; choose among vgg, cpu_fast" in capsys.readouterr().err
