"""The native step: its narrow middle layers in compiled C (mlp.c, loaded by kernels.py; step.py drives it)."""
