"""Evaluate a checkpoint on the test split: python evaluate.py ckpt_path=<ckpt> [overrides]."""

import hydra
from omegaconf import DictConfig

from cifake.jobs.evaluate import run
from cifake.utils import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    friendly_errors(run)(cfg)


if __name__ == "__main__":
    main()
