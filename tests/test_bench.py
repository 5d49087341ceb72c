from pathlib import Path

from cifake import bench
from tests.conftest import tiny_demo_overrides


def test_bench_writes_a_table_with_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    bench.main(["--steps", "2", "--warmup", "1", "--repeats", "1", "--out", str(out),
                f"paths.cache_dir={tmp_path / 'cache'}", *tiny_demo_overrides()])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| bare PyTorch loop") and rows[2].startswith("| Lightning")
    bare_ips, lightning_ips = float(rows[1].split("|")[2]), float(rows[2].split("|")[2])
    assert bare_ips > 0 and lightning_ips > 0
    assert rows[1].split("|")[3].strip() == "1.00"
