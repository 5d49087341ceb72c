"""Export a checkpoint to ONNX: python export.py ckpt_path=<ckpt> -> <run>/model.onnx and model.json."""
# The same app as the console script cifake-export: cifake/cli.py.

from cifake.cli import export

if __name__ == "__main__":
    export()
