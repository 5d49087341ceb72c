"""Export a checkpoint to ONNX: python export.py ckpt_path=<ckpt> -> <run>/model.onnx and model.json."""

import hydra
from omegaconf import DictConfig

from cifake.jobs.export import run
from cifake.utils import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    friendly_errors(run)(cfg)


if __name__ == "__main__":
    main()
