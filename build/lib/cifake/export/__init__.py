"""Writing model files for use outside training: the ONNX export and its contract (onnx.py), the safetensors
export and its model card (safetensors.py); :mod:`cifake.scoring` reads them back."""
