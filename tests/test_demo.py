from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from cifake.data.demo import generate_demo as _generate


def generate_demo(root: Path, **kw) -> Path:
    return _generate(root, image_size=32, upsample_factor=2, noise=0.06, jpeg_quality=90, **kw)


def _load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(("FAKE", "REAL")):
        for path in sorted((root / split / name).glob("*.jpg")):
            images.append(np.asarray(Image.open(path), dtype=np.float32))
            labels.append(label)
    return np.stack(images), np.array(labels)


def test_demo_is_deterministic_and_cifake_shaped(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", train_per_class=5, test_per_class=3, seed=1)
    b = generate_demo(tmp_path / "b", train_per_class=5, test_per_class=3, seed=1)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.jpg"))
    assert len(files) == 16 and files[0] == "test/FAKE/0000.jpg"
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with Image.open(a / files[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    c = generate_demo(tmp_path / "c", train_per_class=5, test_per_class=3, seed=2)
    assert (a / files[0]).read_bytes() != (c / files[0]).read_bytes()
    # Changed parameters make their own folder beside it instead of silently reusing or rewriting it.
    a4 = generate_demo(tmp_path / "a", train_per_class=4, test_per_class=3, seed=1)
    assert a4 != a and a4.parent == a.parent and len(list((a4 / "train" / "REAL").glob("*.jpg"))) == 4
    assert len(list(a.rglob("*.jpg"))) == 16  # the first setting's folder is whole, as a run reading it left it
    assert generate_demo(tmp_path / "a", train_per_class=5, test_per_class=3, seed=1) == a  # reused
    small = _generate(tmp_path / "a", 5, 3, 1, image_size=16, upsample_factor=2, noise=0.06, jpeg_quality=90)
    assert small.name.startswith("16px-") and Image.open(next(small.rglob("*.jpg"))).size == (16, 16)


def test_fakes_differ_in_texture_not_in_global_intensity(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", train_per_class=200, test_per_class=1, seed=0)
    images, labels = _load(root, "train")
    gray = images @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    flat = gray.reshape(len(gray), -1)
    q1, q3 = np.percentile(flat, [25, 75], axis=1)
    lo, hi = flat.min(1), flat.max(1)
    # The report's eight intensity statistics (ratio guarded against a zero minimum).
    global_stats = np.stack([flat.mean(1), np.median(flat, 1), flat.std(1), lo, hi,
                             hi / (lo + 1), hi - lo, q3 - q1], 1)
    # Mean absolute difference of neighbouring pixels: high-frequency texture.
    texture = np.stack([np.abs(np.diff(gray, axis=1)).mean((1, 2)), np.abs(np.diff(gray, axis=2)).mean((1, 2))], 1)
    clf = LogisticRegression(max_iter=2000)
    by_global = cross_val_score(clf, (global_stats - global_stats.mean(0)) / global_stats.std(0), labels, cv=5).mean()
    by_texture = cross_val_score(clf, texture, labels, cv=5).mean()
    assert by_texture > 0.9 and by_global < 0.75, (by_texture, by_global)
    assert abs(flat[labels == 0].mean() - flat[labels == 1].mean()) < 6  # no global brightness shift
