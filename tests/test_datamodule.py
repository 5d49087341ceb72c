from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cifake.core.errors import ConfigError, DataError
from cifake.data.datamodule import CIFAKEDataModule
from tests.helpers.config import conf_args
from tests.helpers.images import make_cifake_tree, write_image


def make_dm(root: Path, tmp_path: Path, **kw) -> CIFAKEDataModule:
    dm = CIFAKEDataModule(**conf_args("data", root=str(root), cache_dir=str(tmp_path / "cache"),
                                         decode_workers=1, **kw))
    dm.prepare_data()
    return dm


def test_holdout_split_and_batches(tmp_path: Path) -> None:
    root = make_cifake_tree(tmp_path / "d", n_per_class=20)
    dm = make_dm(root, tmp_path, val_fraction=0.25, batch_size=8, eval_batch_size=6)
    dm.setup("fit")
    train, val = dm.train_set.indices, dm.val_set.indices
    assert len(train) == 30 and len(val) == 10
    assert np.intersect1d(train, val).size == 0
    assert np.bincount(dm.train_set.split.labels[val]).tolist() == [5, 5]
    images, labels, rows = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
    assert torch.equal(labels, torch.from_numpy(dm.train_set.split.labels[rows.numpy()]))
    first_val = next(iter(dm.val_dataloader()))[1]
    assert len(first_val) == 6 and len(set(first_val.tolist())) == 2  # a limited val still sees both


def test_validate_on_test_uses_all_of_train(tmp_path: Path) -> None:
    root = make_cifake_tree(tmp_path / "d", n_per_class=5)
    dm = make_dm(root, tmp_path, validate_on="test")
    dm.setup("fit")
    assert len(dm.train_set) == 10 and dm.val_set.split.files[0].startswith("test/")
    dm.setup("test")
    assert sorted(dm.test_set.indices.tolist()) == list(range(10))


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validate_on"):
        CIFAKEDataModule(**conf_args("data", root="x", cache_dir="y", validate_on="val"))
    with pytest.raises(ConfigError, match="shear"):
        CIFAKEDataModule(**conf_args("data", root="x", cache_dir="y", shear=-1))


def test_each_stage_decodes_only_the_splits_it_reads(tmp_path: Path) -> None:
    root = make_cifake_tree(tmp_path / "d", n_per_class=2)
    dm = CIFAKEDataModule(**conf_args("data", root=str(root), cache_dir=str(tmp_path / "cache"), decode_workers=1))
    assert dm.splits_for("predict") == ("test",) and dm.splits_for("fit") == ("train",)
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn="predict"))
    dm.prepare_data()
    assert [p.name.split("-")[1] for p in (tmp_path / "cache" / "decoded").iterdir() if p.is_dir()] == ["test"]
    on_test = CIFAKEDataModule(**conf_args("data", root=str(root), cache_dir=str(tmp_path / "cache"),
                                             validate_on="test"))
    assert on_test.splits_for("fit") == ("train", "test")


def test_extra_train_joins_training_only(tmp_path: Path) -> None:
    """data.extra_train: its images join the training set with their class's label, the validation split
    is the one drawn without them, and larger images are resized like any other file."""
    root = make_cifake_tree(tmp_path / "d", n_per_class=20)
    plain = make_dm(root, tmp_path, val_fraction=0.25)
    plain.setup("fit")
    extra = tmp_path / "extra"
    rng = np.random.default_rng(3)
    for k in range(7):
        write_image(extra / "REAL" / f"photo_{k}.png", rng, size=64)
    (extra / "REAL" / ".DS_Store").write_bytes(b"\0")
    dm = make_dm(root, tmp_path, val_fraction=0.25, extra_train=str(extra))
    dm.setup("fit")
    assert np.array_equal(dm.val_set.indices, plain.val_set.indices)
    val_images = dm.val_set.split.images[dm.val_set.indices]
    assert np.array_equal(val_images, plain.val_set.split.images[plain.val_set.indices])
    added = dm.train_set.indices[len(plain.train_set):]
    assert len(dm.train_set) == len(plain.train_set) + 7 and np.intersect1d(added, dm.val_set.indices).size == 0
    assert dm.train_set.split.labels[added].tolist() == [dm.classes.index("REAL")] * 7
    assert dm.train_set.split.images[added].shape == (7, 3, 32, 32)
    assert dm.data_record()["splits"]["train"] == {"FAKE": 15, "REAL": 22}
    assert dm.data_record()["extra_train"] == str(extra) and "extra_train" not in plain.data_record()
    on_test = make_dm(root, tmp_path, validate_on="test", extra_train=str(extra))
    on_test.setup("fit")
    assert len(on_test.train_set) == 47


@pytest.mark.parametrize("make", ["missing", "no_class"])
def test_extra_train_errors_say_what_to_give(tmp_path: Path, make: str) -> None:
    root = make_cifake_tree(tmp_path / "d", n_per_class=10)
    extra = tmp_path / "extra"
    if make == "no_class":
        (extra / "photos").mkdir(parents=True)
    dm = make_dm(root, tmp_path, extra_train=str(extra))
    with pytest.raises(DataError, match="extra_train"):
        dm.setup("fit")


def _mirrored(dm: CIFAKEDataModule, images: torch.Tensor, rows: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images of the batch the training transform mirrored in ``epoch`` (no other augmentation is on)."""
    dm.trainer = SimpleNamespace(training=True, current_epoch=epoch)
    out = dm.on_after_batch_transfer((images, torch.zeros(len(rows)), rows), 0)[0]
    plain = images.float() / 255
    flipped = torch.tensor([torch.equal(o, p.flip(-1)) for o, p in zip(out, plain, strict=True)])
    assert all(torch.equal(o, p) for o, p, f in zip(out, plain, flipped, strict=True) if not f)
    return flipped


def test_alternating_flips_show_every_image_once_each_way_over_two_epochs(tmp_path: Path) -> None:
    root = make_cifake_tree(tmp_path / "d", n_per_class=20)
    dm = make_dm(root, tmp_path, shear=0.0, hflip=0.5, hflip_mode="alternate")
    dm.setup("fit")
    rows = torch.from_numpy(dm.train_set.indices)
    images = dm.train_set.__getitems__(list(range(len(rows))))[0]
    epochs = [_mirrored(dm, images, rows, epoch) for epoch in range(4)]
    assert torch.equal(epochs[0], ~epochs[1])  # two consecutive epochs: each image once mirrored, once not
    assert torch.equal(epochs[0], epochs[2]) and torch.equal(epochs[1], epochs[3])
    assert 0.25 < epochs[0].float().mean() < 0.75  # which half starts mirrored is drawn per image
    # An image's flip follows its row, whichever batch it comes in.
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_mirrored(dm, images[order], rows[order], 1), epochs[1][order])
    # The default (random) draws afresh: over many epochs some image is mirrored twice in a row.
    random = make_dm(root, tmp_path, shear=0.0, hflip=0.5)
    random.setup("fit")
    assert random.hparams.hflip_mode == "random"
    draws = torch.stack([_mirrored(random, images, rows, epoch) for epoch in range(2)])
    assert (draws[0] == draws[1]).any()


@pytest.mark.parametrize(("kwargs", "message"), [({"hflip_mode": "alternate", "hflip": 0.3}, "data.hflip=0.5"),
                                                 ({"hflip_mode": "sometimes"}, "data.hflip_mode='sometimes'")])
def test_bad_flip_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CIFAKEDataModule(**conf_args("data", root="x", cache_dir="y", **kwargs))
