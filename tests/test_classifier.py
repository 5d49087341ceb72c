"""cifake/models/classifier.py: Lightning's load_from_checkpoint still rebuilds a train.py checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifake.models.classifier import Classifier
from cifake.scoring import open_scorer
from tests.helpers.images import generated_images
from tests.helpers.models import make_checkpoint


def test_load_from_checkpoint_scores_as_the_scorer_does(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.ckpt", seed=3)
    model = Classifier.load_from_checkpoint(ckpt).eval()
    images = generated_images(tmp_path / "img", 6)
    with torch.no_grad():
        p = model.p_real(torch.from_numpy(images).float() / 255).numpy()
    expected = open_scorer(ckpt, precision="32-true", device="cpu").p_real(images)
    np.testing.assert_allclose(p, expected, atol=1e-5)
    assert list(model.hparams["classes"]) == ["FAKE", "REAL"]
