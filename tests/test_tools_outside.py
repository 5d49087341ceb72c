"""python -m cifake.tools.outside: models compared on validation, re-rendered validation fakes and photo
folders, never the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifake.tools import outside
from tests.helpers.images import make_cifake_tree, write_image
from tests.helpers.models import make_checkpoint


def test_one_row_per_model_and_set(tmp_path: Path, capsys) -> None:
    root = make_cifake_tree(tmp_path / "d", n_per_class=40)
    for name in ("FAKE", "REAL"):  # the test split must not be read: unreadable files there would fail it
        for path in (root / "test" / name).iterdir():
            path.write_bytes(b"not an image")
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for k in range(5):
        write_image(photos / f"p{k}.jpg", rng, size=120)
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    assert outside.main(["--data", str(root), "--models", str(ckpt), "--photos", str(photos), "--fakes", "3"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {ckpt}")]
    assert [(r[1].strip(), int(r[2])) for r in rows] == [("validation", 8), ("re-rendered validation fakes", 3),
                                                         (str(photos), 5)]
    for row in rows:
        raw_acc, raw_fake, fake, real = (float(v.strip().rstrip("%")) for v in row[3:7])
        assert 0 <= raw_acc <= 1 and 0 <= raw_fake <= 100 and fake + real <= 100 + 1e-9
    assert abs(float(rows[1][3]) - float(rows[1][4].strip().rstrip("%")) / 100) < 1e-3  # all fakes: acc = FAKE share
