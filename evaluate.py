"""Evaluate a checkpoint on the test split: python evaluate.py ckpt_path=<ckpt> [overrides]."""
# The same app as the console script cifake-evaluate: cifake/cli.py.

from cifake.cli import evaluate

if __name__ == "__main__":
    evaluate()
