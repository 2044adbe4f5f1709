"""Data: what the function families are (families), how their curves are computed (formulas), grids and
priors (grids), users' array files (arrays), a run's data set (dataset), splits and normalization (normalize)."""
