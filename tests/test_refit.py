"""The physics refit does not stop on plateaus: a curve whose best fit needs a massive disc, fitted from a
zero-disc start (the disc mass on its lower bound, where the disc's scale length no longer matters), against
scipy's least_squares from the true parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize

from funcae_cli.inversion import physics
from funcae_cli.inversion.physics import Observations, fit_physics, natural_bounds
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained


def _disc_dominated(n: int, seed: int):
    """n curves of a massive disc in a light halo, 20 points in 0.5-20 kpc, 3% errors; true log10 parameters."""
    from benchmarks.observed import rotation_curve_np

    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.5, 20.0, (n, 20)), axis=1)
    logp = np.column_stack([rng.uniform(10.8, 11.5, n), rng.uniform(0.2, 0.8, n), rng.uniform(9.3, 10.0, n),
                            rng.uniform(0.5, 1.2, n)])  # fmt: skip
    v = np.stack([rotation_curve_np(x[i], *(10.0 ** logp[i])) for i in range(n)])
    err = 0.03 * v
    return x, v + err * rng.standard_normal(v.shape), err, logp


def _scipy_chi2(x, y, e, u0, low, high) -> float:
    from benchmarks.observed import rotation_curve_np

    res = optimize.least_squares(lambda u: (rotation_curve_np(x, *(10.0**u)) - y) / e, u0, bounds=(low, high),
                                 method="trf", x_scale="jac")  # fmt: skip
    return float(np.sum(res.fun**2))


@pytest.mark.slow
def test_a_zero_disc_start_escapes_its_plateau(rotation_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = load_trained(RunDir(rotation_run), torch.device("cpu"))
    bounds = natural_bounds(trained, "prior")
    low, high = bounds.low.numpy(), bounds.high.numpy()
    x, y, e, logp = _disc_dominated(8, seed=4)
    assert ((logp > low) & (logp < high)).all()  # the truth is inside the prior
    obs = Observations.of(torch.tensor(x), torch.tensor(y), torch.tensor(e), None, torch.device("cpu"))
    zero_disc = np.column_stack([np.full(8, low[0]), logp[:, 1], logp[:, 2] + 1.5, logp[:, 3]])  # no disc, more halo
    estimate = torch.tensor(10.0**zero_disc)
    ref = np.array([_scipy_chi2(x[i], y[i], e[i], np.clip(logp[i], low, high), low, high) for i in range(8)])
    fit = fit_physics(trained, obs, estimate, bounds, starts=1, max_iter=60)
    np.testing.assert_array_less(fit.objective, 1.05 * ref)
    assert (np.log10(fit.params[:, 0]) > 10.0).all()  # the massive disc was found
    assert fit.escaped.any()

    def no_escapes(fitter, st, seeds, max_iter):  # (escaped, local_minimum, the restarts' ends: none)
        none = torch.zeros(8, dtype=torch.bool)
        return none, none, torch.zeros(0, 8, 4, dtype=torch.float64), torch.zeros(0, 8, dtype=torch.float64)

    monkeypatch.setattr(physics, "_escape_plateaus", no_escapes)
    stuck = fit_physics(trained, obs, estimate, bounds, starts=1, max_iter=60)
    assert (stuck.objective > 1.5 * ref).sum() >= 2  # without the escapes the zero-disc start plateaus
