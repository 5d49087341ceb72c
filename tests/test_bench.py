import re
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

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


def test_bench_compares_precisions_and_layouts_for_both_networks(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "bench.md"
    measured: list[float] = []  # each measurement's images/s as bench computed it, unrounded, in the table's order

    def recorded(measure: Callable[[DictConfig, int, int], float]) -> Callable[[DictConfig, int, int], float]:
        def measure_and_record(cfg: DictConfig, steps: int, warmup: int) -> float:
            measured.append(measure(cfg, steps, warmup))
            return measured[-1]

        return measure_and_record

    for name in ("lightning_train_rate", "lightning_eval_rate"):
        monkeypatch.setattr(bench, name, recorded(getattr(bench, name)))
    demo = [o for o in tiny_demo_overrides() if not o.startswith(("model.", "data.batch_size", "data.demo."))]
    # Batches of 2 (the networks' own are 32 and 128; batch-norm needs more than 1): bf16 is emulated, and slow,
    # on a CPU without it, and the report VGG costs 0.6 GFLOP an image, so its four bf16 runs took most of a minute
    # at batch 8. Each measurement reads 1 + 1 batches: 12 training images (after the 25% held out) and 8 test ones
    # are enough, and the demo generator draws no more. No checkpoints: each training run would write the report
    # VGG's 22M weights and Adam's moments (260 MB) after its timed batches, which no row measures (and without
    # last.ckpt, the preemption callback, which saves over it, goes too).
    bench.main(["--steps", "1", "--warmup", "1", "--repeats", "1", "--sections", "precision", "--out", str(out),
                f"paths.cache_dir={tmp_path / 'cache'}", "data.demo.train_per_class=8",
                "data.demo.test_per_class=4", *demo, "data.batch_size=2", "data.eval_batch_size=2",
                "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "callbacks.preemption=null"])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.read_text().splitlines()
            if line.startswith("| (d)")]
    assert [r[0] for r in rows[::4]] == [f"(d) {label}, batch 2, {what}" for label, _ in bench.PRECISION_NETS.values()
                                          for what in ("training", "evaluation")]
    assert [r[1] for r in rows[:4]] == list(bench.PRECISIONS)
    assert all(float(r[2].replace(",", "")) > 0 for r in rows)
    assert all(float(r[3]) == 1.00 for r in rows[::4])  # float32 NCHW is each group's reference
    assert [f"{m:,.1f}" for m in measured] == [r[2] for r in rows]  # the table shows each measurement, rounded
    # GFLOP/s achieved: images/s x the FLOPs one image costs (3 x forward for training, forward for evaluation),
    # from the unrounded images/s: the table's one decimal of it, times the VGG's 1.8 GFLOP a training image, is
    # off by up to 0.09 GFLOP/s by itself, so that a rate under 8 images/s could fail the 0.1 below by rounding.

    from cifake.models.flops import forward_flops
    from tests.helpers.config import compose_config

    for i, net in enumerate(bench.PRECISION_NETS):
        forward = forward_flops(build_network(compose_config("train", bench.PRECISION_NETS[net][1]).model.net), 32)
        for k, cost in ((8 * i, 3 * forward), (8 * i + 4, forward)):
            rate, achieved = measured[k], float(rows[k][4].replace(",", ""))
            assert achieved == pytest.approx(rate * cost / 1e9, rel=0.01, abs=0.1)


def test_bench_times_training_with_and_without_degradations(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    demo = [o for o in tiny_demo_overrides() if not o.startswith(("model.", "data.batch_size", "data.demo."))]
    # Batches of 16 (cpu_fast's own are 128): the degradations run per image on the CPU, and 1 + 2 batches of 16
    # (48 training images after the 25% held out) time them as well as 384 images did.
    bench.main(["--steps", "2", "--warmup", "1", "--repeats", "1", "--sections", "degrade", "--out", str(out),
                f"paths.cache_dir={tmp_path / 'cache'}", "data.demo.train_per_class=32",
                "data.demo.test_per_class=8", *demo, "data.batch_size=16"])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.read_text().splitlines()
            if line.startswith("| (e)")]
    assert [r[1] for r in rows] == list(bench.DEGRADE_RECIPES)
    assert float(rows[0][3]) == 1.00 and float(rows[1][2].replace(",", "")) > 0


def test_an_unknown_precision_network_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sections", "precision", "--precision-nets", "vgg,resnet50", "--out", str(tmp_path / "b.md")])
    assert stopped.value.code == 2 and not (tmp_path / "b.md").exists()
    assert "no network resnet50; choose among vgg, cpu_fast" in capsys.readouterr().err
