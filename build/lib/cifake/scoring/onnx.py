"""Scoring with an ONNX export (``model.onnx`` and its ``model.json``) in onnxruntime on the CPU.
This path needs neither torch nor Lightning (torch only for translated test-time views)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cifake.core.errors import ModelFileError
from cifake.scoring.onnx_contract import read_contract
from cifake.scoring.scorer import Scorer, with_temperature


def onnx_scorer(onnx_path: Path, contract_path: Path, tta: Mapping[str, Any]) -> Scorer:
    """An exported model fed as its contract says, with ``tta`` averaged over uint8 views."""
    import onnxruntime as ort  # only needed here; checkpoints and forests never import it

    terms = read_contract(contract_path)
    try:
        inp, out = terms["input"], terms["output"]
        divisor, size = np.float32(inp["divide_by"]), int(inp["image_size"])
        input_name, output_name, classes = inp["name"], out["name"], tuple(terms["classes"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{contract_path} lacks {err} or holds it in another form; export the checkpoint "
                             "again with export.py") from err
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise ModelFileError(f"{onnx_path} is not a readable ONNX model ({str(err).splitlines()[0]}); expected "
                             "a model.onnx written by export.py") from err

    def run(images: np.ndarray) -> np.ndarray:
        # float32 division, exactly as to_unit_float scales for training and the checkpoint path.
        x = images.astype(np.float32) / divisor
        return session.run([output_name], {input_name: x})[0].astype(np.float32).reshape(-1)

    mode, shift, padding = tta.get("mode", "none"), tta.get("shift", 1), tta.get("padding", "reflect")
    score: Callable[[np.ndarray], np.ndarray] = run
    if mode != "none":
        import torch  # the views are formed as evaluate.py forms them, by cifake.analysis.tta

        from cifake.analysis.tta import check_tta, uint8_mean_over_views

        check_tta(mode, shift)

        def score(images: np.ndarray) -> np.ndarray:
            as_tensor = lambda x: torch.from_numpy(run(x.numpy()))  # noqa: E731
            return uint8_mean_over_views(as_tensor, torch.from_numpy(images), mode, shift, padding).numpy()

    scope, settings = None, terms.get("out_of_scope")
    if settings is not None:
        try:
            scope_name, _ = settings["output"], float(settings["threshold"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{contract_path}: its out_of_scope lacks {err}; export the checkpoint again") from err

        def scope(images: np.ndarray) -> np.ndarray:
            x = images.astype(np.float32) / divisor
            return session.run([scope_name], {input_name: x})[0].astype(np.float32).reshape(-1)

        settings = {key: settings[key] for key in settings if key not in ("output", "meaning")}
    scorer = Scorer(kind="onnx", source=str(onnx_path), score=score, classes=classes, image_size=size,
                    resample=inp.get("resample"), threshold=terms.get("threshold"),
                    unsure_band=tuple(terms["unsure_band"]) if terms.get("unsure_band") else None,
                    tta={"mode": mode, "shift": shift, "padding": padding}, model=session,
                    device="cpu", precision="32-true",  # onnxruntime's CPU provider, in the graph's float32
                    scope=scope, scope_settings=settings)
    return with_temperature(scorer, terms.get("temperature"))
