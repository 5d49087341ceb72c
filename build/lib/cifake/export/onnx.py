"""Writing an ONNX export: ``model.onnx`` and ``model.json``, the contract that says how to turn an image file
into the model's input and what its output means (read back by :mod:`cifake.scoring.onnx`).

The ONNX graph takes float32 images ``(batch, 3, S, S)``, RGB, scaled to [0, 1] by dividing by 255,
and returns ``p_real`` ``(batch,)``: the probability of REAL (label 1), the sigmoid included, so a
consumer needs nothing but the contract and onnxruntime. The sigmoid lives in the export wrapper
:class:`ProbabilityOfReal`, not in the network, which keeps emitting a logit for the loss.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifake.data.labels import CLASSES
from cifake.models.classifier import Classifier
from cifake.models.scope import RECORD_KEYS, ScopedNetwork, scope_from_record
from cifake.scoring.network import Answering
from cifake.scoring.onnx_contract import CONTRACT_FORMAT, INPUT_NAME, OUTPUT_NAME, PIXEL_DIVISOR, SCOPE_OUTPUT_NAME

CONTRACT_FILE = "model.json"
ONNX_FILE = "model.onnx"


class ProbabilityOfReal(nn.Module):
    """``net`` followed by the sigmoid that training leaves to the loss: float images
    ``(N, 3, H, W)`` in [0, 1] -> p(REAL) ``(N,)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images))


def export_wrapper(model: Classifier, scope: Mapping[str, Any] | None) -> nn.Module:
    """What the ONNX graph computes: p(REAL), and the out-of-scope score beside it where the
    checkpoint stores one (``scope``, its :data:`SCOPE_KEY` record)."""
    if scope is None:
        return ProbabilityOfReal(model.net).eval()
    head, _ = scope_from_record(scope)
    return ScopedNetwork(model.net, head).eval()


def export_onnx(model: Classifier, path: Path, opset: int, dynamo: bool,
                scope: Mapping[str, Any] | None = None) -> None:
    """Write ``model``'s network with the sigmoid as ONNX at ``path``: input ``images``
    ``(batch, 3, S, S)`` float32, output ``p_real`` ``(batch,)`` (and ``out_of_scope`` ``(batch,)`` with a
    ``scope``), any batch size."""
    size = int(model.hparams.image_size)
    wrapper = export_wrapper(model, scope)
    outputs = [OUTPUT_NAME] if scope is None else [OUTPUT_NAME, SCOPE_OUTPUT_NAME]
    # Two images, not one: a batch of one would let the tracer specialise the batch axis to 1.
    example = (torch.rand(2, 3, size, size),)
    names = {"input_names": [INPUT_NAME], "output_names": outputs, "opset_version": opset, "verbose": False}
    for name in ("onnxscript", "onnx_ir"):  # their optimiser passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        if dynamo:
            # A named axis ("batch") is dynamic and keeps its name in the file; external_data=False:
            # one self-contained file (the report's VGG is far below ONNX's 2 GB limit).
            torch.onnx.export(wrapper, example, str(path), dynamo=True, dynamic_shapes={"images": {0: "batch"}},
                              external_data=False, **names)
        else:
            with warnings.catch_warnings():  # the deprecation notice is about the choice we made
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(wrapper, example, str(path), dynamo=False,
                                  dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]}, **names)


def contract(model: Classifier, onnx_file: str, source: str, resample: str, answering: Answering, opset: int,
             dynamo: bool) -> dict[str, Any]:
    """``model.json``: everything a consumer needs to feed an image file to ``onnx_file`` and
    read its output, without this package, answering as ``answering`` says."""
    threshold, unsure_band, temperature, scope = (answering.threshold, answering.band, answering.temperature,
                                                  answering.scope)
    size = int(model.hparams.image_size)
    classes = list(model.hparams.get("classes", CLASSES))
    return {
        "format": CONTRACT_FORMAT,
        "model_file": onnx_file,
        "source_checkpoint": source,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", 3, size, size],
            "channel_order": "RGB",
            "image_size": size,
            "divide_by": PIXEL_DIVISOR,
            "range": [0.0, 1.0],
            "preprocessing": (
                f"open with Pillow (first frame of animations), convert to RGB (alpha dropped, palettes and grey "
                f"expanded), resize the whole image to {size}x{size} with Pillow's {resample} filter (aspect ratio "
                f"not kept; Pillow antialiases when it shrinks), then float32 pixel / {PIXEL_DIVISOR:g} in NCHW"
            ),
            "resample": resample,
            "resample_library": "Pillow",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch"],
            "meaning": f"probability that the image is {classes[1]} (label 1); p({classes[0]}) = 1 - {OUTPUT_NAME}"
                       + ("" if temperature is None else
                          f"; calibrated: sigmoid(logit({OUTPUT_NAME}) / temperature), after averaging any "
                          "test-time views, before the threshold and the unsure band"),
        },
        "temperature": None if temperature is None else float(temperature),
        "classes": classes,
        "labels": {name: i for i, name in enumerate(classes)},
        "threshold": float(threshold),
        "decision": f"{classes[1]} when {OUTPUT_NAME} > threshold, else {classes[0]}"
                    + ("; UNSURE when unsure_band[0] < p_real <= unsure_band[1]" if unsure_band else ""),
        "unsure_band": None if unsure_band is None else [float(v) for v in unsure_band],
        "out_of_scope": None if scope is None else {
            "output": SCOPE_OUTPUT_NAME, **{key: scope[key] for key in RECORD_KEYS},
            "meaning": "how unlike the training images the input is: sqrt(min over classes of the squared Mahalanobis "
                       "distance of the network's penultimate features / their dimension), on the image as it is (no "
                       "test-time views); OUT_OF_SCOPE when above threshold, before the unsure band and the threshold"},
        "opset": opset,
        "exporter": f"torch.onnx.export({'dynamo=True' if dynamo else 'dynamo=False (TorchScript)'})",
        "torch_version": torch.__version__,
    }


def check_parity(model: Classifier, onnx_path: Path, batch_size: int, atol: float, seed: int,
                 scope: Mapping[str, Any] | None = None) -> float:
    """Run the exported file in onnxruntime and the network in PyTorch on the same random batch;
    return the largest difference in p(REAL) (and in the out-of-scope score, with a ``scope``), or raise
    if it exceeds ``atol``."""
    import onnxruntime as ort  # only the export and ONNX prediction need it

    size = int(model.hparams.image_size)
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = export_wrapper(model, scope)(images)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = [OUTPUT_NAME] if scope is None else [OUTPUT_NAME, SCOPE_OUTPUT_NAME]
    got = session.run(outputs, {INPUT_NAME: images.numpy()})
    gap = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    if any(g.shape != e.shape for g, e in zip(got, expected, strict=True)) or not gap <= atol:
        raise RuntimeError(f"{onnx_path}: onnxruntime and PyTorch differ by {gap:.2e} (> {atol:g}) on random "
                           "inputs; please report this as a bug")
    return gap


def write_onnx_export(model: Classifier, out: Path, source: str, resample: str, answering: Answering, opset: int,
                      dynamo: bool) -> tuple[Path, dict[str, Any]]:
    """``out/model.onnx`` (:func:`export_onnx`, with the out-of-scope output where ``answering`` has a score) and
    its contract ``out/model.json`` (:func:`contract`); the ONNX file and the contract."""
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_FILE
    export_onnx(model, onnx_path, opset, dynamo, answering.scope)
    terms = contract(model, onnx_path.name, source, resample, answering, opset, dynamo)
    (out / CONTRACT_FILE).write_text(json.dumps(terms, indent=2) + "\n")
    return onnx_path, terms
