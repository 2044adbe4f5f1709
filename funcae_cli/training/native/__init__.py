"""The native step: its narrow middle layers in compiled C (funcae_cli/native: mlp.c, loaded by kernels.py;
step.py drives it)."""
