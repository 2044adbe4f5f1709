"""Inversion, pure computation: arrays, a `Trained` run and an `InvertConfig` record in; records out. Never opens a
file and never sees a run directory (the jobs read and write those).

- targets.py: the curves to invert as one padded batch (`Targets`), from parameters or observations
- encode.py: the encoder's start (observed points interpolated onto the grid)
- objective.py: the decoder against the targets (L2 or chi^2), with the codes' density as prior (MAP)
- search.py: batched L-BFGS and Adam over all targets and starts at once
- invert.py: `invert_batch`, one batch end to end, and `InvertResult`
- density.py: the training codes' Gaussian mixture; regressor.py: code -> parameters (`LatentModel`)
- physics.py: the family's formula refitted (batched Levenberg-Marquardt, float64)
- assess.py: goodness of fit and flags; prior.py: the run's prior as a density
- posterior.py: Laplace and MCMC posteriors; calibration.py: coverage and SBC; simulate.py: observed curves
  simulated from a family (validate)
"""
