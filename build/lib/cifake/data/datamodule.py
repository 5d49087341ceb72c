"""The CIFAKE LightningDataModule: decoded uint8 arrays in, batches scaled and sheared on the device."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cifake.core.errors import ConfigError, DataError
from cifake.core.nodes import fill, node_values
from cifake.data.archive import extract_archive, is_archive
from cifake.data.augment import (
    HFLIP_MODES,
    TRANSLATE_PADDING,
    alternating_hflip,
    random_crop,
    random_hflip,
    random_shear,
    random_translate,
    to_unit_float,
)
from cifake.data.cache import DecodedSplit, load_or_decode
from cifake.data.demo import generate_demo
from cifake.data.scan import KAGGLE_HINT, resolve_layout_root, scan_split
from cifake.data.split import stratified_split
from cifake.data.training_degradations import check_degradations, degrade, is_active

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8/float images, labels, row indices
VALIDATE_ON = ("holdout", "test")
CIFAKE_PER_CLASS = {"train": 50_000, "test": 10_000}  # images per class in the Kaggle download's splits
DATA_KINDS = {  # what a run's data is, as its model card names it
    "cifake": "CIFAKE (the Kaggle download, whole)",
    "demo": "the built-in generated demo data (data=demo, cifake/data/demo.py), not CIFAKE",
    "subset": "a folder in CIFAKE's layout with fewer or other images than CIFAKE (a subset, or other data)",
}


@dataclass(frozen=True)
class DataSource:
    """Where the images come from (``data.*``, conf/data/cifake.yaml): ``root`` (an extracted folder or an
    archive, extracted once under ``cache_dir``), the ``classes`` by label, the ``train_split`` and
    ``test_split`` folders, the generated ``demo`` data's settings (``None``: none) and an ``extra_train``
    folder whose images join the training set only (``None``: none)."""

    root: str
    cache_dir: str
    classes: Sequence[str]
    train_split: str
    test_split: str
    demo: dict[str, Any] | None
    extra_train: str | None


@dataclass(frozen=True)
class Decoding:
    """How files become the cached uint8 arrays: resized to ``image_size`` with Pillow's ``resample``,
    undecodable files left out or refused (``skip_bad_files``), by ``decode_workers`` processes."""

    image_size: int
    resample: str
    skip_bad_files: bool
    decode_workers: int | None


@dataclass(frozen=True)
class Validation:
    """Which images validate: a seeded (``split_seed``), stratified ``val_fraction`` of train
    (``validate_on="holdout"``) or the test split (``"test"``)."""

    val_fraction: float
    validate_on: str
    split_seed: int


@dataclass(frozen=True)
class Loading:
    """How batches are served: ``batch_size`` for training, ``eval_batch_size`` (``None``: the same) for
    scoring, ``num_workers`` loader processes, and the arrays ``on_device`` (``auto``: on CUDA)."""

    batch_size: int
    eval_batch_size: int | None
    num_workers: int
    on_device: bool | str


@dataclass(frozen=True)
class Augmentation:
    """What is done to each training batch on the device: a shear of up to ``shear`` degrees, a shift of up
    to ``translate`` whole pixels (border as ``translate_padding``), a random ``crop`` (``None``: whole
    images), a mirror with probability ``hflip`` drawn afresh for every batch (``hflip_mode="random"``) or, with
    ``hflip_mode="alternate"`` (and ``hflip`` 0.5), on every other epoch for each image, and the degradations
    ``degrade`` (:mod:`cifake.data.training_degradations`)."""

    shear: float
    hflip: float
    hflip_mode: str
    translate: int
    translate_padding: str
    crop: int | None
    degrade: dict[str, Any] | None


SETTINGS = (DataSource, Decoding, Validation, Loading, Augmentation)  # the data module's typed groups
# The keys as data.* declares them (conf/data/cifake.yaml), in the order every checkpoint records them
# (datamodule_hyper_parameters).
KEYS = ("root", "cache_dir", "classes", "train_split", "test_split", "image_size", "resample", "batch_size",
        "eval_batch_size", "val_fraction", "validate_on", "split_seed", "shear", "hflip", "hflip_mode", "translate",
        "translate_padding", "crop", "skip_bad_files", "decode_workers", "num_workers", "on_device", "demo",
        "degrade", "extra_train")
TARGET = "cifake.data.datamodule.CIFAKEDataModule"  # data._target_


class DecodedImages(Dataset):
    """Rows ``indices`` of a decoded split. Fetches whole batches with one array index
    (``__getitems__``), so no per-image Python work happens in the loader."""

    def __init__(self, split: DecodedSplit, indices: np.ndarray | None = None,
                 resident: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.split = split
        self.indices = np.arange(len(split)) if indices is None else np.asarray(indices)
        self.resident = resident  # (images, labels) of the whole split as tensors on a device

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> Batch:
        rows = self.indices[positions]
        if self.resident is not None:
            images, labels = self.resident
            index = torch.from_numpy(rows)
            if images.device.type == "cuda":  # a blocking copy would wait for every queued kernel
                index = index.pin_memory()
            index = index.to(images.device, non_blocking=True)
            return images[index], labels[index], torch.from_numpy(rows)
        images = torch.from_numpy(np.ascontiguousarray(self.split.images[rows]))
        return images, torch.from_numpy(self.split.labels[rows]), torch.from_numpy(rows)

    def __getitem__(self, position: int) -> Batch:
        images, labels, rows = self.__getitems__([position])
        return images[0], labels[0], rows[0]


def _keep_batch(batch: Batch) -> Batch:
    """``collate_fn`` for datasets that already return whole batches."""
    return batch


class CIFAKEDataModule(L.LightningDataModule):
    """CIFAKE's ``train``/``test`` splits, each decoded once into a cached uint8 array.

    ``root`` is an extracted folder or a downloaded archive (extracted once under ``cache_dir``).
    Validation is a seeded, stratified ``val_fraction`` of train (``validate_on="holdout"``) or,
    as the report did, the test split (``validate_on="test"``). Training batches are sheared per
    sample by up to ``shear`` degrees on the device, shifted by up to ``translate`` whole pixels
    (pad-and-crop, border filled as ``translate_padding`` says), cut to a random ``crop x crop``
    window (``None``: whole images) and mirrored with probability ``hflip``.
    With ``on_device`` (``auto``: on CUDA) the decoded uint8 arrays are copied to the device once
    and batches are indexed there, so no image crosses the bus per step. With ``demo`` set, a
    generated dataset is written first, into its setting's folder under ``root`` (see
    :func:`cifake.data.demo.generate_demo`).
    """

    def __init__(self, **settings: Any) -> None:
        """``settings``: the ``data`` node's keys (conf/data/cifake.yaml), as Hydra's ``instantiate`` passes
        them; each is read into its typed group (:data:`SETTINGS`) and checked here, once."""
        super().__init__()
        values = node_values(settings, TARGET, KEYS, "data")
        source, decoding, validation, loading, augmentation = (fill(group, values) for group in SETTINGS)
        validate_on, batch_size, image_size = validation.validate_on, loading.batch_size, decoding.image_size
        shear, hflip, translate = augmentation.shear, augmentation.hflip, augmentation.translate
        translate_padding, crop, on_device = augmentation.translate_padding, augmentation.crop, loading.on_device
        if validate_on not in VALIDATE_ON:
            raise ConfigError(f"data.validate_on={validate_on!r}; choose one of {list(VALIDATE_ON)}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if shear < 0:
            raise ConfigError(f"data.shear is a maximum angle in degrees and must be >= 0, got {shear}")
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"data.hflip is the probability of a left-right flip and must lie in [0, 1], got {hflip}")
        if augmentation.hflip_mode not in HFLIP_MODES:
            raise ConfigError(f"data.hflip_mode={augmentation.hflip_mode!r}; choose one of {list(HFLIP_MODES)}")
        if augmentation.hflip_mode == "alternate" and hflip != 0.5:
            raise ConfigError(f"data.hflip_mode=alternate mirrors each training image on every other epoch, half of "
                              f"the time, so it goes with data.hflip=0.5 (got {hflip}); set data.hflip=0.5")
        if translate < 0 or translate >= image_size:
            raise ConfigError(f"data.translate is a shift in whole pixels in [0, image_size), got {translate}")
        if translate_padding not in TRANSLATE_PADDING:
            raise ConfigError(f"data.translate_padding={translate_padding!r}; choose one of {list(TRANSLATE_PADDING)}")
        if crop is not None and not (isinstance(crop, int) and 1 <= crop <= image_size):
            raise ConfigError(f"data.crop is the side of the training crop in whole pixels in [1, {image_size}] "
                              f"(data.image_size), or null for whole images; got {crop}")
        if on_device not in (True, False, "auto"):
            raise ConfigError(f"data.on_device is auto, true or false, got {on_device!r}")
        self.degradations = check_degradations(augmentation.degrade)
        # Flat, as data.* declares them: what checkpoints record (datamodule_hyper_parameters) and this class reads.
        self.save_hyperparameters({key: values[key] for key in KEYS}, logger=False)
        self.classes = tuple(sorted(source.classes))
        self._splits: dict[str, DecodedSplit] = {}
        self._layout_root: Path | None = None
        self.train_set: DecodedImages | None = None
        self.val_set: DecodedImages | None = None
        self.test_set: DecodedImages | None = None
        self._first_flips: torch.Tensor | None = None  # data.hflip_mode=alternate: each training row's bit

    @classmethod
    def from_config(cls, node: Mapping[str, Any], **overrides: Any) -> CIFAKEDataModule:
        """The data module a ``data`` config node describes (its ``_target_``, if given, must name this class),
        with ``overrides`` of some of its keys."""
        return cls(**node_values(node, TARGET, KEYS, "data", overrides))

    # -- locating and decoding ---------------------------------------------------------------
    def layout_root(self) -> Path:
        """The folder holding ``train/`` and ``test/``: generated, extracted or given."""
        if self._layout_root is None:
            hp = self.hparams
            root = Path(hp.root).expanduser()
            if hp.demo is not None:
                root = generate_demo(root, **hp.demo, image_size=hp.image_size)  # its setting's folder
            if is_archive(root):
                root = extract_archive(root, Path(hp.cache_dir).expanduser())
            elif not root.exists():
                raise DataError(f"data.root {str(root)!r} does not exist. {KAGGLE_HINT}")
            self._layout_root = resolve_layout_root(root, (hp.train_split, hp.test_split))
        return self._layout_root

    def decoded(self, split: str) -> DecodedSplit:
        """The decoded images of ``split`` (scanned, checked and decoded on first use)."""
        if split not in self._splits:
            hp = self.hparams
            listing = scan_split(self.layout_root(), split, self.classes)
            if listing.skipped:
                log.info("Skipped in %s: %s", split, ", ".join(f"{n} {why}" for why, n in listing.skipped.items()))
            self._splits[split] = load_or_decode(
                listing, Path(hp.cache_dir).expanduser(), hp.image_size, hp.resample,
                hp.skip_bad_files, hp.decode_workers,
            )
        return self._splits[split]

    def with_extra_train(self, train: DecodedSplit) -> tuple[DecodedSplit, np.ndarray]:
        """``train`` with the images of ``extra_train`` appended (a folder holding ``REAL/``, ``FAKE/`` or
        both), and the rows they took: images that only ever join the training set, never validation or
        test. Without ``extra_train``: ``train`` and no rows."""
        hp = self.hparams
        if hp.extra_train is None:
            return train, np.zeros(0, dtype=np.int64)
        folder = Path(hp.extra_train).expanduser()
        if not folder.is_dir():
            raise DataError(f"data.extra_train={str(folder)!r} is not a folder: give a folder holding REAL/ and/or "
                            f"FAKE/ (python -m cifake.tools.photos --train-extra <folder> writes one), or null")
        present = tuple(c for c in self.classes if (folder / c).is_dir())
        if not present:
            raise DataError(f"data.extra_train={str(folder)!r} holds none of the class folders {list(self.classes)}")
        listing = scan_split(folder.parent, folder.name, present)
        extra = load_or_decode(listing, Path(hp.cache_dir).expanduser(), hp.image_size, hp.resample,
                               hp.skip_bad_files, hp.decode_workers)
        labels = np.asarray([self.classes.index(present[i]) for i in extra.labels], dtype=train.labels.dtype)
        log.info("extra training images from %s: %s", folder,
                 ", ".join(f"{c}={int(np.sum(labels == self.classes.index(c)))}" for c in present))
        merged = DecodedSplit(np.concatenate([train.images, extra.images]), np.concatenate([train.labels, labels]),
                              train.files + tuple(f"{folder}/{f}" for f in extra.files), train.classes, train.root,
                              train.cache_dir)
        return merged, np.arange(len(train), len(merged))

    def splits_for(self, stage: str | None) -> tuple[str, ...]:
        """The splits a stage reads: fit/validate need train (and test when validating on it),
        test/predict only test, ``None`` both."""
        hp = self.hparams
        if stage in ("test", "predict"):
            return (hp.test_split,)
        if stage in ("fit", "validate") and hp.validate_on == "holdout":
            return (hp.train_split,)
        return (hp.train_split, hp.test_split)

    def prepare_data(self) -> None:
        """Extract, generate and decode what the trainer's current job reads (once; on rank 0)."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        for split in self.splits_for(stage):
            self.decoded(split)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        # Files are listed class by class; evaluation sets are visited in one fixed shuffled
        # order instead, so that limit_val_batches & co. still see both classes.
        rng = np.random.default_rng(hp.split_seed)
        if stage in ("fit", "validate", None) and self.train_set is None:
            train = self.decoded(hp.train_split)
            if hp.validate_on == "test":
                test = self.decoded(hp.test_split)
                train, added = self.with_extra_train(train)
                self.train_set = DecodedImages(train, np.r_[np.arange(len(train) - len(added)), added],
                                               self._resident(train))
                self.val_set = DecodedImages(test, rng.permutation(len(test)), self._resident(test))
            else:
                # the split is drawn on the training split alone, so extra images never change it
                train_idx, val_idx = stratified_split(train.labels, hp.val_fraction, hp.split_seed)
                train, added = self.with_extra_train(train)
                self.train_set = DecodedImages(train, np.r_[train_idx, added], self._resident(train))
                self.val_set = DecodedImages(train, rng.permutation(val_idx), self._resident(train))
            log.info("train: %s; validation (%s): %s", self._describe(self.train_set),
                     hp.validate_on, self._describe(self.val_set))
        if stage in ("test", "predict", None) and self.test_set is None:
            test = self.decoded(hp.test_split)
            self.test_set = DecodedImages(test, rng.permutation(len(test)), self._resident(test))
            log.info("test: %s", self._describe(self.test_set))

    @property
    def eval_batch(self) -> int:
        """Images per batch when not training: ``eval_batch_size``, else ``batch_size``."""
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def device(self) -> torch.device:
        """Where batches go: the trainer's device, or the CPU without a trainer."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def keeps_data_on_device(self) -> bool:
        choice = self.hparams.on_device
        return self.device().type == "cuda" if choice == "auto" else bool(choice)

    def _resident(self, split: DecodedSplit) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The whole split as device tensors (copied once per split), when ``on_device`` asks."""
        if not self.keeps_data_on_device():
            return None
        key = f"_resident_{id(split)}"
        if not hasattr(self, key):
            device = self.device()
            log.info("Copying %d decoded images to %s", len(split), device)
            setattr(self, key, (torch.from_numpy(np.array(split.images)).to(device),  # a writable copy
                                torch.from_numpy(split.labels).to(device)))
        return getattr(self, key)

    def _counts(self, ds: DecodedImages) -> dict[str, int]:
        counts = np.bincount(ds.split.labels[ds.indices], minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def data_record(self) -> dict[str, Any] | None:
        """What this run trains on, from its splits as decoded (``None`` before :meth:`setup`): the kind
        (:data:`DATA_KINDS`: ``cifake`` only for the whole training split), its name, and the images per
        class of each split it read (``train``, ``validation``; ``test`` once evaluated)."""
        if self.train_set is None or self.val_set is None:
            return None
        hp = self.hparams
        whole = self._counts(DecodedImages(self._splits[hp.train_split]))
        if hp.demo is not None:
            kind = "demo"
        elif set(whole.values()) == {CIFAKE_PER_CLASS["train"]}:
            kind = "cifake"
        else:
            kind = "subset"
        splits = {"train": self._counts(self.train_set), "validation": self._counts(self.val_set)}
        if self.test_set is not None:
            splits["test"] = self._counts(self.test_set)
        record = {"kind": kind, "name": DATA_KINDS[kind], "validate_on": hp.validate_on,
                  "val_fraction": hp.val_fraction if hp.validate_on == "holdout" else None,
                  "image_size": hp.image_size, "splits": splits}
        if hp.extra_train is not None:  # a record without the key is a run on CIFAKE alone
            record["extra_train"] = str(hp.extra_train)
        return record

    def state_dict(self) -> dict[str, Any]:
        """Saved in each checkpoint: :meth:`data_record`, which the model card quotes (``export.py``)."""
        record = self.data_record()
        return {} if record is None else {"data": record}

    def _describe(self, ds: DecodedImages) -> str:
        counts = np.bincount(ds.split.labels[ds.indices], minlength=len(self.classes))
        return f"{len(ds)} images (" + ", ".join(f"{c}={n}" for c, n in zip(self.classes, counts, strict=False)) + ")"

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, ds: DecodedImages | None, train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        hp = self.hparams
        resident = ds.resident is not None  # already on the device: no workers, nothing to pin
        workers = 0 if resident else hp.num_workers
        return DataLoader(
            ds,
            batch_size=hp.batch_size if train else self.eval_batch,
            shuffle=train,
            num_workers=workers,
            collate_fn=_keep_batch,
            pin_memory=self.device().type == "cuda" and not resident,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Scale to [0, 1] on the device; while training, degrade (``data.degrade``), then shear (and
        shift and flip, if asked). A lone tensor passes as it is: Lightning's model summary sends the
        model's ``example_input_array`` (float images already) through here to count its FLOPs."""
        if isinstance(batch, torch.Tensor):
            return batch
        images, labels, rows = batch
        training = self.trainer is not None and self.trainer.training
        if not training:
            return to_unit_float(images), labels, rows
        epoch = self.trainer.current_epoch if self.hparams.hflip_mode == "alternate" else 0  # only its flips need it
        return self.augment(images, rows, epoch), labels, rows

    def augment(self, images: torch.Tensor, rows: torch.Tensor | None = None, epoch: int = 0) -> torch.Tensor:
        """The training transform of a uint8 batch, on its device: degrade (``data.degrade``), scale to
        [0, 1], shear, shift, crop and flip, as the settings ask. ``rows`` (the images' rows of the training
        split) and ``epoch`` (the trainer's, a host int) decide the flips of ``data.hflip_mode=alternate``;
        without ``rows`` (the benchmark's batches) they are drawn at random, which costs the same."""
        if is_active(self.degradations):  # on the uint8 pixels, as sharing degrades a file
            images = degrade(images, self.degradations)
        hp = self.hparams
        images = random_shear(to_unit_float(images), hp.shear)
        images = random_translate(images, hp.translate, hp.translate_padding)
        if hp.crop is not None:
            images = random_crop(images, hp.crop)
        if hp.hflip_mode == "alternate" and rows is not None:
            return alternating_hflip(images, self.first_flips(images.device)[rows.to(images.device)], epoch)
        return random_hflip(images, hp.hflip)

    def first_flips(self, device: torch.device) -> torch.Tensor:
        """One bool per row of the training split (``data.hflip_mode=alternate``): whether the image is mirrored
        in even epochs (and so not in odd ones). Drawn once, from ``split_seed`` rather than the run's seed, so a
        resumed run (``ckpt_path``) mirrors each image as the run it resumes did, and kept on ``device``."""
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before augmenting training batches")
        if self._first_flips is None or self._first_flips.device != device:
            generator = torch.Generator().manual_seed(self.hparams.split_seed)
            drawn = torch.rand(len(self.train_set.split), generator=generator) < 0.5
            self._first_flips = drawn.to(device)
        return self._first_flips
