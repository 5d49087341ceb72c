"""Audit the data set: python audit.py [data.root=...] -> audit.json, duplicates.csv, leaks.csv in the run directory."""

import hydra
from omegaconf import DictConfig

from cifake.jobs.audit import run
from cifake.utils import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    friendly_errors(run)(cfg)


if __name__ == "__main__":
    main()
