"""Serve a model over HTTP with a web page: python serve.py ckpt_path=<.ckpt, .skops or .onnx> [port=8000]."""
# The same app as the console script cifake-serve: cifake/cli.py.

from cifake.cli import serve

if __name__ == "__main__":
    serve()
