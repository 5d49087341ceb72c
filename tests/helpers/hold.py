"""A callback the tests add to train.py (``+callbacks.hold=...``) to stop a run at a known step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L


class HoldAtSteps(L.Callback):
    """Added to train.py by these tests (``+callbacks.hold=...``): after each of the global ``steps``,
    touch ``<markers>/<step>`` and hold training there until a stop signal has arrived (at most
    ``wait`` seconds), so that the signal lands mid-epoch at a known step."""

    def __init__(self, steps: list[int], markers: str, wait: float) -> None:
        self.steps, self.markers, self.wait = set(steps), Path(markers), wait

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step not in self.steps:
            return
        (self.markers / str(trainer.global_step)).touch()
        deadline = time.monotonic() + self.wait
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)
