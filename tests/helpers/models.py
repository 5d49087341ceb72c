"""Model files and models built in seconds: a tiny classifier, a checkpoint as train.py saves one, its
ONNX export, a hand-built ONNX file, a forest fitted by train.py's job. Heavy imports wait for the
function that needs them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers.config import CONF_DIR, compose_config, compose_job, conf_args, conf_node, tiny_demo_overrides

if TYPE_CHECKING:
    from cifake.models.classifier import Classifier


def tiny_classifier(seed: int = 0, arch: str = "vgg") -> Classifier:
    """A narrow classifier of the shipped VGG shape (``arch="resnet"``: of the shipped ResNet's: two-conv
    stem, three stages), in training mode, random weights from ``seed``, its Grad-CAM layer the shipped one."""
    import torch
    from omegaconf import OmegaConf

    from cifake.models.classifier import Classifier

    torch.manual_seed(seed)
    if arch == "resnet":
        net = conf_node("model.net", ["model=resnet"], stem=[8, 8], widths=[16, 16, 16], blocks=[1, 1, 1],
                        dropout=0.0)
    else:
        net = conf_node("model.net", filters=[8, 16, 16, 16], convs=[2, 2, 3, 3],
                        dropouts=[0.0, 0.0, 0.0, 0.0], dense=[32])
    optimizer = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}
    layer = OmegaConf.load(CONF_DIR / "model" / f"{'resnet' if arch == 'resnet' else 'vgg'}.yaml").gradcam_layer
    return Classifier(**conf_args("model", net=net, optimizer=optimizer, gradcam_layer=layer))


def make_checkpoint(path: Path, resample: str | None = "bicubic", seed: int = 0) -> Path:
    """A tiny classifier with random weights saved by a Lightning Trainer, as train.py saves one,
    recording ``resample`` as its data module's setting (``None``: nothing recorded)."""
    import lightning as L
    import torch
    from torch import nn

    from cifake.models.classifier import Classifier

    tiny_net = conf_node("model.net", filters=[8, 16, 16, 16], convs=[2, 2, 3, 3], dropouts=0.0, dense=[32])
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    torch.manual_seed(seed)
    model = Classifier(**conf_args("model", net=tiny_net, optimizer=adam, gradcam_layer="net.features.1.3"))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # He initialisation keeps the signal through ten layers (PyTorch's default shrinks it
                # until every image gets the same logit).
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if isinstance(module, nn.BatchNorm2d):  # not the identity, so the export must carry it
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        # Spread the logits of images of different brightness and contrast over about +-4, centred on 0.
        model.eval()
        logits = model(torch.rand(64, 3, 32, 32) * torch.rand(64, 1, 1, 1))
        scale = 2.0 / logits.std()
        last = model.net.head[-1]
        last.weight.mul_(scale)
        last.bias.mul_(scale).sub_(logits.median() * scale)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    if resample is not None:  # what trainer.fit(model, datamodule) adds
        raw = torch.load(path, weights_only=True)
        raw["datamodule_hyper_parameters"] = {"resample": resample, "image_size": 32}
        torch.save(raw, path)
    return path


def export_tiny(folder: Path, overrides: Sequence[str] = ()) -> tuple[Path, Path, dict]:
    """A tiny checkpoint in ``folder`` and its export under ``folder/export``: (ckpt, model.onnx, contract)."""
    from cifake.jobs import export as export_job

    ckpt = make_checkpoint(folder / "tiny.ckpt")
    terms = export_job.run(compose_job("export", folder / "export", [f"ckpt_path={ckpt}", *overrides]))
    return ckpt, folder / "export" / "model.onnx", terms


def tiny_onnx(folder: Path) -> Path:
    """A model.onnx (p_real = sigmoid of the mean pixel, scaled) and the model.json export.py would
    write beside it, built with onnx's helpers so the test needs no training."""
    import onnx
    from onnx import TensorProto, helper

    from cifake.scoring.onnx_contract import CONTRACT_FORMAT

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])
    p_real = helper.make_tensor_value_info("p_real", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [8.0])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
             helper.make_node("Sub", ["mean", "half"], ["centred"]),
             helper.make_node("Mul", ["centred", "scale"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["p_real"])]
    graph = helper.make_graph(nodes, "brightness", [images], [p_real], initializer=[axes, scale, half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    contract = {"format": CONTRACT_FORMAT, "model_file": "model.onnx", "classes": ["FAKE", "REAL"], "threshold": 0.5,
                "input": {"name": "images", "image_size": 32, "divide_by": 255.0, "resample": "bicubic"},
                "output": {"name": "p_real"}}
    (folder / "model.json").write_text(json.dumps(contract))
    return folder / "model.onnx"


def fit_tiny_forest(tmp: Path) -> Path:
    """A small forest fitted on the tiny demo data by train.py's job (cache under ``tmp/cache``);
    returns its ``.skops``."""
    from cifake.jobs import train as train_job

    cfg = compose_config("train", [f"paths.output_dir={tmp / 'forest'}", f"paths.cache_dir={tmp / 'cache'}",
                                   *[o for o in tiny_demo_overrides() if not o.startswith("model.")],
                                   "model=rf", "model.n_estimators=20", "model.n_jobs=1"])
    train_job.run(cfg)
    return tmp / "forest" / "checkpoints" / "forest.skops"
