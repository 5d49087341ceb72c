"""Safetensors exports (scoring/weights.py, export/safetensors.py, export.py format=safetensors): they score
as the checkpoint does, and anything that is not plain tensors matching their config is refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cifake.core.digest import file_sha256
from cifake.core.errors import ModelFileError
from cifake.export.safetensors import read_card_metrics
from cifake.jobs import export as export_job
from cifake.scoring import open_scorer
from cifake.scoring.weights import CONFIG_FILE, WEIGHTS_FILE
from tests.helpers import ROOT
from tests.helpers.config import compose_job
from tests.helpers.models import make_checkpoint
from tests.helpers.runner import check, run_python


def exported(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny checkpoint and its safetensors export folder."""
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    export_job.run(compose_job("export", tmp_path / "st", [f"ckpt_path={ckpt}", "format=safetensors"]))
    return ckpt, tmp_path / "st"


def test_the_export_scores_as_the_checkpoint_and_says_what_it_is(tmp_path: Path) -> None:
    ckpt, folder = exported(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {WEIGHTS_FILE, CONFIG_FILE, "README.md"}
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["weights"]["sha256"] == file_sha256(folder / WEIGHTS_FILE)
    assert config["network"]["_target_"] == "cifake.models.vgg.VGG" and config["classes"] == ["FAKE", "REAL"]
    assert config["image_size"] == 32 and config["resample"] == "bicubic"
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    want = open_scorer(ckpt, device="cpu", precision="32-true", tta={"mode": "flip"})
    for path in (folder, folder / WEIGHTS_FILE):  # the folder or its weights file
        got = open_scorer(path, device="cpu", precision="32-true", tta={"mode": "flip"})
        assert got.kind == "safetensors" and got.explainable and got.tta["mode"] == "flip"
        np.testing.assert_allclose(got.p_real(images), want.p_real(images), atol=1e-6)
    card = (folder / "README.md").read_text()
    assert config["weights"]["sha256"] in card and read_card_metrics(card) == {}  # no run metrics beside it


def test_grad_cam_explains_an_export_at_the_checkpoints_layer(tmp_path: Path) -> None:
    from cifake.models.gradcam import gradcam

    _, folder = exported(tmp_path)
    scorer = open_scorer(folder, device="cpu", precision="32-true")
    maps = gradcam(scorer.model, torch.rand(2, 3, 32, 32), [0, 1], scorer.gradcam_layer)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


def rewrite_metadata(path: Path, metadata: dict) -> None:
    """Save the file's tensors again with ``metadata`` in the header."""
    from safetensors.torch import load_file

    save_file(load_file(path), str(path), metadata=metadata)


def test_metadata_beyond_the_format_is_refused(tmp_path: Path) -> None:
    _, folder = exported(tmp_path)
    weights = folder / WEIGHTS_FILE
    rewrite_metadata(weights, {"format": "pt", "note": "__import__('os').system('id')"})
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["weights"]["sha256"] = file_sha256(weights)  # a consistent file, only its content is wrong
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="metadata beside its tensors"):
        open_scorer(folder, device="cpu", precision="32-true")


def test_a_damaged_or_replaced_weights_file_is_refused(tmp_path: Path) -> None:
    _, folder = exported(tmp_path)
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        open_scorer(folder, device="cpu", precision="32-true")
    # Without a recorded digest the header checks still hold: trailing bytes are refused.
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["weights"].pop("sha256")
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    weights.write_bytes(bytes(data) + b"trailing")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        open_scorer(folder, device="cpu", precision="32-true")
    weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        open_scorer(folder, device="cpu", precision="32-true")


def test_a_config_that_does_not_match_the_weights_is_refused(tmp_path: Path) -> None:
    _, folder = exported(tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["network"]["filters"] = [8, 16, 16, 32]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="does not match the network"):
        open_scorer(folder, device="cpu", precision="32-true")


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "cifake.models.classifier.Classifier"])
def test_a_config_may_only_name_the_packages_networks(tmp_path: Path, target: str) -> None:
    _, folder = exported(tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["network"]["_target_"] = target
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="may only name one of"):
        open_scorer(folder, device="cpu", precision="32-true")


def test_a_missing_config_or_another_format_is_refused(tmp_path: Path) -> None:
    _, folder = exported(tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "format": "something/2"}))
    with pytest.raises(ModelFileError, match="not a config written by this version"):
        open_scorer(folder, device="cpu", precision="32-true")
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(ModelFileError, match="config.json that export.py"):
        open_scorer(folder / WEIGHTS_FILE, device="cpu", precision="32-true")


def test_predicting_from_an_export_loads_neither_lightning_nor_scikit_learn(tmp_path: Path) -> None:
    _, folder = exported(tmp_path)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(image)
    code = ("import sys\nfrom cifake.jobs import predict\n"
            "from tests.helpers.config import compose_job\n"
            f"predict.run(compose_job('predict', __import__('pathlib').Path({str(tmp_path / 'out')!r}), "
            f"['ckpt_path={folder}', 'inputs={image}', 'progress_bar=false']))\n"
            "print(sorted(m for m in ('lightning', 'sklearn', 'pytorch_lightning') if m in sys.modules))\n")
    proc = check(run_python("-c", code, cwd=ROOT))
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _card_of_a_run(tmp_path: Path, name: str, root: Path | None = None) -> tuple[str, dict]:
    """train.py's job (one epoch, evaluated; on the tiny demo data, or on ``root``) then export.py's job
    format=safetensors on its best checkpoint; the model card and config.json. Both in this process: the card is
    written from the run folder's files (checkpoint, metrics.json), which a job writes as the script does, and
    each script's process would add ~10 s of imports to the four runs."""
    from cifake.jobs import train as train_job
    from tests.helpers.config import NO_FIGURES, compose_config, tiny_demo_overrides

    run = tmp_path / name
    data = tiny_demo_overrides() if root is None else [f"data.root={root}", *(
        o for o in tiny_demo_overrides() if not o.startswith(("data=", "data.demo.")))]
    # NO_FIGURES: the card is written from the run's numbers and config; the figures cost 8 s a run.
    train_job.run(compose_config("train", [*data, *NO_FIGURES, "trainer.max_epochs=1", "evaluate=true",
                                           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={run}"]))
    export_job.run(compose_job("export", run / "export", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                                                          "format=safetensors"]))
    (card,) = run.rglob("README.md")
    return card.read_text(), json.loads((card.parent / CONFIG_FILE).read_text())


@pytest.mark.slow
def test_cards_say_what_the_model_was_trained_on_from_the_run(tmp_path: Path) -> None:
    """Demo data is never called CIFAKE, and a subset's card quotes its own split sizes."""
    import yaml

    from tests.helpers.images import make_cifake_tree

    card, config = _card_of_a_run(tmp_path, "demo")  # 48 + 24 images per class, 25% of train held out
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert "datasets" not in meta and config["data"]["kind"] == "demo"
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "cifake-demo"
    assert "trained on the project's generated demo data (not CIFAKE" in card
    assert "- Trained on: 72 images (36 FAKE, 36 REAL)" in card and "24 images (12 FAKE, 12 REAL)" in card
    assert "test split (generated, not CIFAKE): 48 images (24 FAKE, 24 REAL)" in card
    assert "50,000" not in card and "10,000" not in card and "CIFAKE's training split" not in card

    root = make_cifake_tree(tmp_path / "subset", n_per_class=12)  # CIFAKE's layout, 24 + 24 images
    card, config = _card_of_a_run(tmp_path, "subset", root)
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert "datasets" not in meta and config["data"]["kind"] == "subset"
    assert config["data"]["splits"]["train"] == {"FAKE": 9, "REAL": 9}
    assert "- Trained on: 18 images (9 FAKE, 9 REAL)" in card and "6 images (3 FAKE, 3 REAL)" in card
    assert "The test split of the folder it trained on: 24 images (12 FAKE, 12 REAL)" in card
    assert "50,000" not in card and "10,000" not in card
