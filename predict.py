"""Predict REAL or FAKE for image files: python predict.py photo.png [folder/ ...] [ckpt_path=<model file>]."""
# The same app as the console script cifake-predict: cifake/cli.py.

from cifake.cli import predict

if __name__ == "__main__":
    predict()
