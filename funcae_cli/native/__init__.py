"""funcae's native CPU kernels in C, compiled on first use (kernels.py): mlp.c (the training step's narrow middle,
driven by training/native/step.py), rqs.c (the amortized posterior flow's splines, inversion/flow_sampling.py),
tables.c (the disc term's table, data/formulas.py), rotation.c (the rotation-curve family's chi^2, the samplers' and
the amortized check's likelihood, data/formulas.py), ranks.c (R-hat's rank normalization, inversion/diagnostics.py)
and counters.c (counter-based uniforms, inversion/seeding.py)."""
