"""Train a real-vs-fake detector: python train.py [overrides]. See conf/train.yaml."""
# The same app as the console script cifake-train: cifake/cli.py.

from cifake.cli import train

if __name__ == "__main__":
    train()
