"""The model that ships with the package (cifake/bundled/): the files are the ones its card describes,
every job takes it when no ckpt_path is given and says so, and on real CIFAKE it scores as its card says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifake.core.digest import file_sha256
from cifake.export.safetensors import read_card_metrics
from cifake.jobs import evaluate as evaluate_job
from cifake.scoring import open_scorer
from cifake.scoring.weights import BUNDLED_DIR, CONFIG_FILE, WEIGHTS_FILE, bundled_weights
from tests.helpers import ROOT
from tests.helpers.config import compose_job, real_cifake_root
from tests.helpers.images import write_image

CARD = ROOT / "docs" / "model_card.md"
LIMIT_BYTES = 6_000_000  # weights and config together


def config() -> dict:
    return json.loads((BUNDLED_DIR / CONFIG_FILE).read_text())


def test_the_bundled_files_are_the_ones_the_card_describes() -> None:
    weights = bundled_weights()
    assert weights is not None, "cifake/bundled/ lacks its model: regenerate it (docs/model_card.md)"
    terms = config()
    digest = file_sha256(weights)
    assert terms["weights"]["sha256"] == digest and terms["weights"]["bytes"] == weights.stat().st_size
    assert weights.stat().st_size + (BUNDLED_DIR / CONFIG_FILE).stat().st_size <= LIMIT_BYTES
    card = CARD.read_text()
    assert f"sha256 `{digest}`" in card
    recipe = terms["recipe"]
    for key in ("experiment", "command", "seed", "commit", "machine"):
        assert recipe[key] not in (None, ""), key
        assert str(recipe[key]) in card, key
    assert set(read_card_metrics(card)) == {"accuracy", "auroc"}
    extra = (terms.get("data") or {}).get("extra_train")
    if extra:  # trained on images from outside CIFAKE too: the card says which
        assert f"the images of `{extra}` (`data.extra_train`) are from outside" in card
    # The only files there: nothing else ships by accident.
    assert sorted(p.name for p in BUNDLED_DIR.iterdir() if p.name != "__pycache__") == [CONFIG_FILE, WEIGHTS_FILE]


def test_the_bundled_model_is_calibrated_and_carries_its_band() -> None:
    terms = config()
    assert terms["temperature"] is not None and 0.05 < terms["temperature"] < 20
    low, high = terms["unsure_band"]
    assert 0.0 <= low <= terms["threshold"] <= high <= 1.0
    scorer = open_scorer(BUNDLED_DIR, device="cpu", precision="32-true")
    assert scorer.temperature == pytest.approx(terms["temperature"]) and scorer.unsure_band == (low, high)


def test_predict_without_ckpt_path_answers_with_the_bundled_model(tmp_path: Path) -> None:
    image = tmp_path / "some.png"
    write_image(image, np.random.default_rng(0), size=48)
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), image.name, "progress_bar=false"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "No ckpt_path: using the bundled model" in output and "experiment=cpu_photo" in output
    verdicts = [line for line in output.splitlines() if line.strip().startswith(f"{image.name}:")]
    # Pixel noise is nothing like a photograph or a render: the bundled model says it is out of its scope.
    assert len(verdicts) == 1 and "OUT_OF_SCOPE" in verdicts[0], output[-2000:]


# The card's figures are for the whole test split (20,000 images, flip TTA: about 3 minutes on one core, the
# card's own command, docs/model_card.md). CI scores a fixed sample of it instead: the first 8 batches of 256 of
# the test split's fixed shuffled order (2,048 images, both classes), whose figures were recorded with
# `python evaluate.py data.root=<CIFAKE> tta.mode=flip tta.shift=1 tta.padding=reflect scoring.precision=32-true
# trainer.limit_predict_batches=8` (AMD EPYC family 25 model 1, 2026-12-07; the same command without the limit
# gives the card's figures). Recorded again whenever the bundled model changes (its sha256 is in the card).
SAMPLE_BATCHES = 8
SAMPLE_CONFUSION = [[1020, 19], [39, 970]]
SAMPLE_AUROC = 0.99710


def test_the_bundled_model_scores_real_cifake_as_its_card_says(tmp_path: Path) -> None:
    root = real_cifake_root()
    card = read_card_metrics(CARD.read_text())
    tta = config()["tta"]
    report = evaluate_job.run(compose_job("evaluate", tmp_path / "ev", [
        f"data.root={root}", f"tta.mode={tta['mode']}", f"tta.shift={tta['shift']}", f"tta.padding={tta['padding']}",
        "report.figures=false", "scoring.precision=32-true", f"trainer.limit_predict_batches={SAMPLE_BATCHES}"]))
    n = SAMPLE_BATCHES * 256
    assert report["n"] == n
    # The sample's answers as recorded: float32 kernels differ a little between CPUs, so an image or two near the
    # threshold may move, no more.
    moved = np.abs(np.array(report["confusion_matrix"]) - np.array(SAMPLE_CONFUSION)).sum() // 2
    assert moved <= 2, report["confusion_matrix"]
    assert report["auroc"] == pytest.approx(SAMPLE_AUROC, abs=0.0003)
    # And the card describes this model: the sample's accuracy is the card's within four standard errors of a
    # 2,048-image sample (about 0.015), its AUROC within 0.005.
    spread = 4 * np.sqrt(card["accuracy"] * (1 - card["accuracy"]) / n)
    assert abs(report["accuracy"] - card["accuracy"]) <= spread, (report["accuracy"], card["accuracy"])
    assert abs(report["auroc"] - card["auroc"]) <= 0.005
