"""The store: a run directory and what it holds. `rundir.RunDir` is the one place that knows a run's file names;
checkpoint.py reads and writes checkpoints (atomic, weights_only); trained.py opens a trained run (`Trained`:
config, model, normalizer, grid); dataset.py a run's data set; fitted.py the cached fitted helpers (the regressor
and the code density) as plain tensors. Nothing here computes an inversion or draws a figure."""
