"""funcae's native CPU kernels in C, compiled on first use (kernels.py): mlp.c (the training step's narrow middle,
driven by training/native/step.py) and rqs.c (the amortized posterior flow's splines, inversion/flow_sampling.py)."""
