"""funcae's native CPU kernels in C, compiled on first use (kernels.py): mlp.c (the training step's narrow middle,
driven by training/native/step.py), rqs.c (the amortized posterior flow's splines, inversion/flow_sampling.py),
tables.c (the disc term's table, data/formulas.py) and ranks.c (R-hat's rank normalization,
inversion/diagnostics.py)."""
