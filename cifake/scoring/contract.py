"""The ``model.json`` contract written beside an ONNX export: its format and how it is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifake.core.errors import ModelFileError

CONTRACT_FORMAT = "cifake-onnx-contract/1"
INPUT_NAME = "images"
OUTPUT_NAME = "p_real"
PIXEL_DIVISOR = 255.0  # to_unit_float's scaling: uint8 / 255 in float32


def read_contract(path: Path) -> dict[str, Any]:
    """The ``model.json`` that export.py wrote beside a ``model.onnx``."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: an .onnx model needs the model.json that export.py wrote beside "
                             "it (or pass contract=<its path>)")
    try:
        terms = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not readable JSON ({err}); export the checkpoint again with export.py") \
            from err
    if not isinstance(terms, dict) or terms.get("format") != CONTRACT_FORMAT:
        raise ModelFileError(f"{path} is not a contract written by this version's export.py "
                             f"(format {CONTRACT_FORMAT!r}); export the checkpoint again")
    return terms
