"""Predict REAL or FAKE for image files: python predict.py ckpt_path=<.ckpt or .onnx> inputs=[<files or folders>]."""

import hydra
from omegaconf import DictConfig

from cifake.jobs.predict import run
from cifake.utils import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    friendly_errors(run)(cfg)


if __name__ == "__main__":
    main()
