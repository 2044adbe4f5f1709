"""A cored dark-matter halo (Burkert 1995): the rotation curve of its enclosed mass."""

import math

import torch

from funcae_cli import Param, UserFamily

G = 4.301e-6  # gravitational constant, kpc (km/s)^2 / Msun


def burkert_velocity(r, rho0, r0):
    """Circular velocity (km/s) at radius r (kpc) of a Burkert halo of central density rho0 (Msun/kpc^3) and
    core radius r0 (kpc). r (1 or n, m); rho0, r0 (n, 1): torch operations, so it broadcasts and differentiates."""
    x = r / r0
    mass = math.pi * rho0 * r0**3 * (2 * torch.log1p(x) + torch.log1p(x * x) - 2 * torch.atan(x))
    return torch.sqrt(G * mass / r)


burkert = UserFamily(
    function=burkert_velocity,
    params=(
        Param(
            "rho0",
            "$\\rho_0$",
            "M$_\\odot$/kpc$^3$",
            low=0.0,
            log_scale=True,
            default={"dist": "loguniform", "low": 3e6, "high": 3e8},
        ),
        Param("r0", "$r_0$", "kpc", low=0.0, log_scale=True, default={"dist": "loguniform", "low": 1.0, "high": 20.0}),
    ),
    grid={"kind": "logspace", "start": -0.5, "stop": 1.5, "num": 40},  # 0.3 to 30 kpc
    description="Burkert cored halo: circular velocity",
    x_label="radius [kpc]",
    y_label="velocity [km/s]",
    x_log=True,
    x_domain=(0.0, math.inf),
)
