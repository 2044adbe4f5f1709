"""A Gaussian emission line on a flat continuum, as an installed package declares a funcae family."""

import math

import torch

from funcae_cli import Param, UserFamily


def gaussian_line(v, amplitude, centre, width):
    """Flux at velocity v (km/s): continuum 1 plus a Gaussian line. v (1 or n, m); parameters (n, 1)."""
    return 1.0 + amplitude * torch.exp(-0.5 * ((v - centre) / width) ** 2)


line_profile = UserFamily(
    function=gaussian_line,
    params=(
        Param("amplitude", "A", low=0.0, log_scale=True, default={"dist": "loguniform", "low": 0.3, "high": 3.0}),
        Param("centre", "$v_0$", "km/s", default={"dist": "uniform", "low": -100.0, "high": 100.0}),
        Param(
            "width",
            "$\\sigma_v$",
            "km/s",
            low=0.0,
            log_scale=True,
            default={"dist": "loguniform", "low": 20.0, "high": 80.0},
        ),
    ),
    grid={"kind": "linspace", "start": -400.0, "stop": 400.0, "num": 64},
    description="Gaussian emission line on a unit continuum",
    x_label="velocity [km/s]",
    y_label="normalized flux",
    x_domain=(-math.inf, math.inf),
)
