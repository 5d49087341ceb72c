"""What the test files share, one definition each (pytest fixtures stay in tests/conftest.py):

- config.py: composed Hydra configs and the settings conf/ gives a class (``conf_args``), tiny overrides;
- images.py: image files and CIFAKE-shaped folders of generated images;
- models.py: a tiny classifier, a checkpoint, its ONNX export, a hand-built ONNX file, a fitted forest;
- runner.py: entry scripts and scripts/ run as a user runs them (a subprocess) and the checks on their exit;
- outputs.py: reading what a run leaves (metrics.json, TensorBoard events, CSV tables).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
