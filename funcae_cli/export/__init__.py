"""`funcae export`: a trained run as a portable emulator folder (safetensors arrays, a versioned JSON description,
and funcae_emulator.py, a loader that needs numpy alone); optionally ONNX graphs of the decoder and encoder."""
