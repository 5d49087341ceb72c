"""The ``model.json`` contract written beside an ONNX export: its format and how it is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifake.core.errors import ModelFileError

CONTRACT_FORMAT = "cifake-onnx-contract/1"
INPUT_NAME = "images"
OUTPUT_NAME = "p_real"
SCOPE_OUTPUT_NAME = "out_of_scope"  # the second output of an export whose checkpoint stores the score
PIXEL_DIVISOR = 255.0  # to_unit_float's scaling: uint8 / 255 in float32


def read_export_json(path: Path, expected_format: str, what: str, missing: str, again: str) -> dict[str, Any]:
    """The JSON file export.py wrote beside a model (``what``: ``contract``, ``config``), checked to be
    there (else ``missing``), readable and of ``expected_format`` (else ``again``: how to write it anew)."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: {missing}")
    try:
        terms = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not readable JSON ({err}); {again}") from err
    if not isinstance(terms, dict) or terms.get("format") != expected_format:
        raise ModelFileError(f"{path} is not a {what} written by this version's export.py (format "
                             f"{expected_format!r}); {again}")
    return terms


def read_contract(path: Path) -> dict[str, Any]:
    """The ``model.json`` that export.py wrote beside a ``model.onnx``."""
    return read_export_json(path, CONTRACT_FORMAT, "contract", "an .onnx model needs the model.json that export.py "
                            "wrote beside it (or pass contract=<its path>)",
                            "export the checkpoint again with export.py")
