"""export.py: the ONNX file and its contract, checked against PyTorch in process and in a Python
that has only onnxruntime and numpy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cifake.core.errors import ConfigError
from cifake.export.onnx import check_parity, export_onnx
from cifake.jobs import export as export_job
from cifake.scoring import choose_resample
from cifake.scoring.network import load_classifier
from tests.helpers.config import compose_job
from tests.helpers.images import generated_images
from tests.helpers.models import export_tiny, make_checkpoint


def torch_p_real(ckpt: Path, images: np.ndarray) -> np.ndarray:
    """p(REAL) of uint8 images ``(N, 3, S, S)`` from the checkpoint, as training scales them."""
    model = load_classifier(ckpt).eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(images).float() / 255.0)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, dict]:
    return export_tiny(tmp_path_factory.mktemp("export"))


def test_export_writes_the_model_and_its_contract(exported) -> None:
    ckpt, onnx_path, terms = exported
    assert onnx_path.is_file() and not list(onnx_path.parent.glob("*.data"))  # one self-contained file
    assert json.loads((onnx_path.parent / "model.json").read_text()) == terms
    assert terms["model_file"] == "model.onnx" and terms["source_checkpoint"] == str(ckpt)
    assert terms["input"] | {"preprocessing": None} == {
        "name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, 32, 32], "channel_order": "RGB",
        "image_size": 32, "divide_by": 255.0, "range": [0.0, 1.0], "preprocessing": None, "resample": "bicubic",
        "resample_library": "Pillow"}
    assert terms["output"]["name"] == "p_real" and "REAL" in terms["output"]["meaning"]
    assert terms["classes"] == ["FAKE", "REAL"] and terms["labels"] == {"FAKE": 0, "REAL": 1}
    assert terms["threshold"] == 0.5 and terms["opset"] == 20
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name, out.type) == ("images", "tensor(float)", "p_real", "tensor(float)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]  # the batch axis is symbolic


@pytest.mark.parametrize("batch", [1, 7])
def test_onnxruntime_matches_pytorch_on_random_and_decoded_images(exported, tmp_path, batch) -> None:
    ckpt, onnx_path, _ = exported
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(batch)
    for images in (rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8), generated_images(tmp_path, batch)):
        expected = torch_p_real(ckpt, images)
        got = session.run(["p_real"], {"images": images.astype(np.float32) / np.float32(255)})[0]
        assert got.shape == (batch,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The probabilities are spread out, so agreement is not two constant outputs agreeing.
    varied = rng.integers(0, 256, (32, 3, 32, 32)) * rng.uniform(0, 1, (32, 1, 1, 1))
    assert np.ptp(torch_p_real(ckpt, varied.astype(np.uint8))) > 0.1


NO_TORCH_CONSUMER = r"""
import json, sys
import numpy as np
import onnxruntime as ort

contract = json.load(open(sys.argv[1]))
images = np.load(sys.argv[2])  # uint8 (N, 3, S, S), RGB, already resized as the contract says
x = images.astype(np.float32) / np.float32(contract["input"]["divide_by"])
session = ort.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
p_real = session.run([contract["output"]["name"]], {contract["input"]["name"]: x})[0]
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
predicted = [contract["classes"][int(p > contract["threshold"])] for p in p_real]
print(json.dumps({"p_real": p_real.tolist(), "predicted": predicted}))
"""


def test_exported_model_runs_with_onnxruntime_alone(exported, tmp_path) -> None:
    ckpt, onnx_path, _ = exported
    images = generated_images(tmp_path, 5)
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_CONSUMER, str(onnx_path.parent / "model.json"),
                           str(tmp_path / "images.npy"), str(onnx_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = torch_p_real(ckpt, images)
    np.testing.assert_allclose(result["p_real"], expected, atol=1e-4, rtol=0)
    assert result["predicted"] == [("FAKE", "REAL")[int(p > 0.5)] for p in expected]


def test_torchscript_exporter_gives_an_equivalent_model(tmp_path) -> None:
    ckpt, onnx_path, terms = export_tiny(tmp_path, ["dynamo=false", "opset=17", "threshold=0.3"])
    assert terms["threshold"] == 0.3 and terms["opset"] == 17 and "TorchScript" in terms["exporter"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        got = session.run(["p_real"], {"images": images.astype(np.float32) / np.float32(255)})[0]
        np.testing.assert_allclose(got, torch_p_real(ckpt, images), atol=1e-4, rtol=0)


def test_resample_comes_from_the_checkpoint_unless_set() -> None:
    assert choose_resample(None, "bilinear", "x.ckpt") == "bilinear"
    assert choose_resample("lanczos", "bilinear", "x.ckpt") == "lanczos"
    with pytest.raises(ConfigError, match="set resample=bicubic"):
        choose_resample(None, None, "x.ckpt")
    with pytest.raises(ConfigError, match="choose one of"):
        choose_resample("cubic", "bicubic", "x.ckpt")


def test_bad_export_requests_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="ckpt_path is required"):
        export_job.run(compose_job("export", tmp_path / "a"))
    with pytest.raises(ConfigError, match="is not a file"):
        export_job.run(compose_job("export", tmp_path / "b", [f"ckpt_path={tmp_path / 'none.ckpt'}"]))
    bare = make_checkpoint(tmp_path / "bare.ckpt", resample=None)
    with pytest.raises(ConfigError, match="does not record how its training images were resized"):
        export_job.run(compose_job("export", tmp_path / "c", [f"ckpt_path={bare}"]))
    with pytest.raises(ConfigError, match=r"threshold=1.5 must lie in \[0, 1\]"):
        export_job.run(compose_job("export", tmp_path / "d", [f"ckpt_path={bare}", "threshold=1.5"]))


def test_console_script_entry_reports_errors_plainly(tmp_path) -> None:
    # The cifake-export console script is cifake.cli:export, whose config path is absolute (any folder will do).
    proc = subprocess.run([sys.executable, "-c", "from cifake.cli import export; export()",
                           f"ckpt_path={tmp_path / 'none.ckpt'}", f"paths.log_dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is not a file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("block", [["model.net.block=basic", "model.net.se=4"],
                                   ["model.net.block=inverted", "model.net.blocks=[2,1]"]])
def test_detection_resnets_blocks_export_to_the_same_probabilities(tmp_path, block) -> None:
    """Squeeze-and-excitation gates and MobileNetV2's inverted residuals (depthwise convolutions, ReLU6) are
    layers the report's VGG never sent through the exporter; onnxruntime must agree with PyTorch on them too."""
    from cifake.models.classifier import Classifier
    from tests.helpers.config import conf_args

    overrides = ["model=resnet", "model.net.stem=[8]", "model.net.widths=[16,32]", "model.net.blocks=[1,1]",
                 "model.net.expansion=2", *block]
    torch.manual_seed(0)
    model = Classifier(**conf_args("model", overrides, image_size=32)).eval()
    with torch.no_grad():  # batch-norm statistics away from the identity, so the export must carry them
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        # Logits spread over about +-2 (random weights give nearly one value), so agreement means something.
        images = torch.rand(64, 3, 32, 32) * torch.rand(64, 1, 1, 1)
        logits = model.net(images)
        head = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.div_(logits.std())
        head.bias.sub_(logits.mean()).div_(logits.std())
        assert 0.5 < model.net(images).std() < 2.0
    path = tmp_path / "model.onnx"
    export_onnx(model, path, opset=20, dynamo=True)
    assert check_parity(model, path, batch_size=7, atol=1e-4, seed=0) <= 1e-4  # as export.py checks
