"""What the CPU recipes are made of: bf16 mixed precision on the CPU, the residual network,
label smoothing, EMA weights, test-time augmentation in evaluate.py, and seed statistics."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from cifake.jobs import evaluate as evaluate_job
from cifake.jobs import train as train_job
from cifake.models.classifier import Classifier
from cifake.training.sweep import write_summary
from tests.helpers.config import conf_args, conf_node, tiny_resnet_overrides


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_resnet_trains_on_demo_data_in_either_precision(compose_cfg, precision: str) -> None:
    cfg = compose_cfg("train", [*tiny_resnet_overrides(), "trainer.max_epochs=2", f"trainer.precision={precision}",
                                "callbacks.gradcam=null", "evaluate=true"])
    result = train_job.run(cfg)
    assert math.isfinite(result["train/loss"]) and math.isfinite(result["val/loss"])
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values())  # weights stay float32


def test_bf16_outputs_are_within_tolerance_of_float32(compose_cfg) -> None:
    cfg = compose_cfg("train", [*tiny_resnet_overrides(), "model.net.stem=[16,16]"])
    torch.manual_seed(0)
    model: Classifier = instantiate(cfg.model, _convert_="all").eval()
    images = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        full = model.p_real(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.set_channels_last(True).p_real(images)
    assert half.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: probabilities agree to about a percent, not bit for bit.
    assert (half - full).abs().max() < 0.02 and not torch.equal(half, full)


def test_label_smoothing_moves_training_targets_only() -> None:
    net = conf_node("model.net", ["model=resnet"], stem=[4, 4], widths=[8], blocks=[1], dropout=0.0)
    opt = {"_target_": "torch.optim.Adam", "_partial_": True}
    model = Classifier(**conf_args("model", net=net, optimizer=opt, gradcam_layer=None, label_smoothing=0.2))
    model.log = model.log_dict = lambda *a, **k: None  # no trainer to log to
    batch = (torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4), torch.arange(8))
    logits = model(batch[0]).float()
    smoothed = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.1, 0.9] * 4))
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch[1].float())
    assert torch.allclose(model._step(batch, "train")["loss"], smoothed, atol=1e-6)
    assert torch.allclose(model._step(batch, "val")["loss"], plain, atol=1e-6)
    with pytest.raises(Exception, match="label_smoothing"):
        Classifier(**conf_args("model", net=net, optimizer=opt, gradcam_layer=None, label_smoothing=1.0))


def test_ema_checkpoint_holds_the_averaged_weights(compose_cfg) -> None:
    cfg = compose_cfg("train", [*tiny_resnet_overrides(), "trainer.max_epochs=2", "callbacks.gradcam=null",
                                "+callbacks.ema={_target_:cifake.callbacks.EMA,decay:0.9}"])
    train_job.run(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point())


def test_evaluate_records_tta_and_it_changes_the_scores(compose_cfg) -> None:
    cfg = compose_cfg("train", [*tiny_resnet_overrides(), "trainer.max_epochs=1", "callbacks.gradcam=null"])
    train_job.run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    reports = {}
    for mode in ("none", "flip"):
        ev = compose_cfg("evaluate", [*tiny_resnet_overrides()[:-4], f"ckpt_path={ckpt}", f"tta.mode={mode}",
                                      "report.figures=false", f"hydra.run.dir={cfg.paths.output_dir}/ev_{mode}",
                                      f"paths.output_dir={cfg.paths.output_dir}/ev_{mode}"])
        evaluate_job.run(ev)
        reports[mode] = json.loads((Path(ev.paths.output_dir) / "metrics.json").read_text())
        p = [float(line.split(",")[2]) for line in
             (Path(ev.paths.output_dir) / "predictions.csv").read_text().splitlines()[1:]]
        reports[mode]["p"] = p
    assert reports["none"]["tta"] == {"mode": "none", "shift": 1, "padding": "reflect"}
    assert reports["flip"]["tta"]["mode"] == "flip"
    assert reports["none"]["p"] != reports["flip"]["p"]


def write_job(sweep: Path, job: int, overrides: list[str], metrics: dict) -> None:
    (sweep / str(job) / ".hydra").mkdir(parents=True)
    (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (sweep / str(job) / "results.json").write_text(json.dumps({"metrics": metrics}))


def test_sweep_summary_gives_mean_and_std_over_jobs_that_differ_only_by_seed(tmp_path: Path) -> None:
    accs = {0: 0.97, 1: 0.98, 2: 0.99}
    for job, seed in enumerate(accs):
        write_job(tmp_path, job, ["experiment=cpu_fast", f"seed={seed}"], {"test/acc": accs[seed], "val/acc": 0.5})
    # A job with another override is not pooled with them, and alone forms no group.
    write_job(tmp_path, 3, ["experiment=cpu_fast", "seed=0", "data.hflip=0"], {"test/acc": 0.5, "val/acc": 0.5})
    text = write_summary(tmp_path).read_text()
    assert "## Over seeds" in text
    mean, std = statistics.fmean(accs.values()), statistics.stdev(accs.values())
    assert f"| test/acc | {mean:.4f} | {std:.4f} | 3 |" in text  # 0.9800 +- 0.0100
    assert mean == pytest.approx(0.98) and std == pytest.approx(0.01)
    assert "| val/acc | 0.5000 | 0.0000 | 3 |" in text
    rows = (tmp_path / "summary_seeds.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and rows[1].startswith("0,0 1 2,")


def test_sweep_without_seed_repeats_has_no_seed_section(tmp_path: Path) -> None:
    for job, p in enumerate((0.1, 0.3)):
        write_job(tmp_path, job, [f"model.net.dropouts={p}"], {"test/acc": p})
    assert "Over seeds" not in write_summary(tmp_path).read_text()
    assert not (tmp_path / "summary_seeds.csv").exists()


def test_cpu_robust_composes_and_runs_end_to_end_on_demo_data(compose_cfg) -> None:
    # The recipe as a user runs it, scaled down: degradations on, the unsure band chosen and the
    # robustness battery (held-out families included) scored at the end.
    cfg = compose_cfg("train", ["experiment=cpu_robust", *tiny_resnet_overrides(), "trainer.max_epochs=1",
                                "callbacks.gradcam=null", "exclude_leaks=false", "callbacks.ema=null"])
    assert cfg.data.degrade.jpeg.p > 0 and cfg.robustness and cfg.unsure_precision == 0.985
    result = train_job.run(cfg)
    out = Path(cfg.paths.output_dir)
    assert math.isfinite(result["train/loss"]) and "unsure" in result["test"]
    with (out / "robustness.csv").open(newline="") as fh:
        trained = {(r["perturbation"], r["strength"]): r["trained"] for r in csv.DictReader(fh)}
    assert trained[("jpeg", "50")] == "yes" and trained[("jpeg", "30")] == "family only"
    assert trained[("pil_scale", "0.5")] == "no" and trained[("scale", "0.5")] == "yes"
    assert trained[("hflip", "")] == "yes"  # cpu_fast's flips
