"""Train a real-vs-fake detector: python train.py [overrides]. See conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from cifake.jobs.train import objective


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return objective(cfg)


if __name__ == "__main__":
    main()
