"""Function families: parameters, domains, default priors and grids, vectorized evaluate().

Each family is one `Family` record in the `FAMILIES` registry. `evaluate(grid, params, options)`
takes a float64 grid `(n_points,)` and float64 parameters `(n, n_params)` and returns float64
curves `(n, n_points)`; callers cast to float32. No Python loop runs over curves or grid points.

Array families (`dataset`, `digits`) have no `evaluate`: their `load(options)` returns the rows
of a data set (`datasets.ArrayData`), their grid is the feature index (`grid: {kind: index}`)
and `image_shape(options)` says when the rows are images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from funcae_cli import datasets


@dataclass(frozen=True)
class Param:
    """One physical parameter of a family."""

    name: str
    label: str  # for plots, e.g. "μ" or "$M_d$"
    unit: str = ""  # physical unit for axis labels ("" when dimensionless)
    low: float = -math.inf  # domain: value must be > low (exclusive) ...
    high: float = math.inf  # ... and < high
    log_scale: bool = False  # positive scale parameter: regress and plot in log10
    default: dict[str, Any] = field(default_factory=dict)  # default sampling spec

    def axis_label(self) -> str:
        base = f"log10 {self.label}" if self.log_scale else self.label
        return f"{base} [{self.unit}]" if self.unit else base


@dataclass
class NoOptions:
    """This family takes no options beyond `name` and `params`."""


@dataclass
class BetaOptions:
    output: Literal["log_pdf", "pdf"] = "log_pdf"
    """Curve = log of the Beta pdf (as notebook 001) or the pdf itself."""


@dataclass
class Scatter:
    rd: float = field(default=0.4, metadata={"min": 0})
    """Log-normal scatter of the disc scale length about the mass-size relation, dex."""
    mh: float = field(default=0.25, metadata={"min": 0})
    """Log-normal scatter of the halo mass about the stellar-to-halo mass relation, dex."""
    c: float = field(default=0.11, metadata={"min": 0})
    """Log-normal scatter of the concentration about the mass-concentration relation, dex."""


@dataclass
class RotationOptions:
    prior: Literal["scaling_relations", "independent"] = "scaling_relations"
    """`scaling_relations`: rd, mh and c derived from md as in notebook 004; `independent`: each from `params`."""
    scatter: Scatter = field(default_factory=Scatter)
    """Scatter of the scaling relations, dex (0 gives the exact relations)."""


@dataclass
class DatasetOptions:
    path: str = ""
    """The data file, relative to the working directory: .npy, .npz (X, y, params, param_names) or .csv."""
    image_shape: list[int] | None = field(default=None, metadata={"min": 1})
    """[height, width] when each row is an image (e.g. [28, 28] for MNIST); 3-D X arrays need it."""
    scale: float = field(default=1.0, metadata={"gt": 0})
    """Values are divided by this on loading (255 maps 8-bit images to [0, 1])."""
    max_rows: int | None = field(default=None, metadata={"min": 2})
    """Use at most this many rows, drawn at random by the seed (default all; data.n is ignored)."""


@dataclass
class DigitsOptions:
    scale: float = field(default=16.0, metadata={"gt": 0})
    """Pixel values (0..16) are divided by this; 16 maps them to [0, 1]."""
    max_rows: int | None = field(default=None, metadata={"min": 2})
    """Use at most this many of the 1797 images, drawn at random by the seed (default all)."""


def _check_dataset_options(o: DatasetOptions) -> list[str]:
    problems = []
    if not o.path:
        problems.append("path: the dataset family needs the data file, e.g. path: data.npz")
    elif not o.path.lower().endswith(datasets.SUFFIXES):
        problems.append(f"path: expected a {', '.join(datasets.SUFFIXES)} file, got {o.path!r}")
    if o.image_shape is not None and len(o.image_shape) != 2:
        problems.append(f"image_shape: expected [height, width], got {o.image_shape}")
    return problems


Evaluate = Callable[[Tensor, Tensor, Any], Tensor]
Prior = Callable[[Tensor, Any, torch.Generator], Tensor]  # (md samples, options, gen) -> params


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    params: tuple[Param, ...]
    default_grid: dict[str, Any]
    x_label: str
    y_label: str
    evaluate: Evaluate | None  # None for array families, which `load` instead
    options_cls: type = NoOptions
    # A structured prior: given the first parameter's samples, derive the rest.
    derived_prior: Callable[[Any], Prior | None] = lambda options: None
    x_log: bool = False  # plot x on a log axis
    x_domain: tuple[float, float] = (-math.inf, math.inf)  # grid points must lie strictly inside
    # Array families: options -> validated rows in file order (shuffled by the seed in data.load_data).
    load: Callable[[Any], datasets.ArrayData] | None = None
    # options -> (height, width) when each row is an image, else None.
    image_shape: Callable[[Any], tuple[int, int] | None] = lambda options: None
    # options -> problems ("key: what is wrong"), reported by the config loader under `family.`.
    check_options: Callable[[Any], list[str]] = lambda options: []

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


# --- normal ---------------------------------------------------------------------------------


def _normal(grid: Tensor, params: Tensor, options: Any) -> Tensor:
    mu, sigma = params[:, 0:1], params[:, 1:2]  # (n, 1) each
    inv = 1.0 / sigma
    z = torch.addcmul(-mu * inv, grid[None, :], inv)  # (x - mu) / sigma, (n, n_points), one pass
    log_norm = -torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    # exp(log_norm - z^2 / 2): the normalization inside the exponent, in place, three passes in all
    return torch.addcmul(log_norm, z, z, value=-0.5, out=z).exp_()


# --- beta -----------------------------------------------------------------------------------


def _beta(grid: Tensor, params: Tensor, options: BetaOptions) -> Tensor:
    a, b = params[:, 0:1], params[:, 1:2]
    log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)  # -log B(a, b)
    logpdf = (a - 1) * torch.log(grid)[None, :] + (b - 1) * torch.log1p(-grid)[None, :] + log_norm
    return logpdf if options.output == "log_pdf" else torch.exp(logpdf)


# --- rotation curve (notebook 004, class curveMod) -------------------------------------------

G_KPC = 4.301e-9  # gravitational constant, Mpc (km/s)^2 / Msun, as in the notebook
G_DISC = 4.301e-6  # gravitational constant, kpc (km/s)^2 / Msun
HUBBLE = 70.0  # km/s/Mpc
DELTA_C = 200.0  # virial overdensity


def _fc(x: Tensor) -> Tensor:
    return torch.log1p(x) - x / (1 + x)


def _v_halo(r: Tensor, mh: Tensor, c: Tensor) -> Tensor:
    """NFW circular velocity, km/s. r (1, n_points) kpc; mh, c (n, 1)."""
    v_vir2 = (DELTA_C * HUBBLE**2 / 2) ** (1 / 3) * (G_KPC * mh) ** (2 / 3)
    r_vir = 1e3 * (mh / (0.5 * DELTA_C * HUBBLE**2 / G_KPC)) ** (1 / 3)  # kpc
    return torch.sqrt(v_vir2 * r_vir / r * _fc(c * r / r_vir) / _fc(c))


def _v_disc(r: Tensor, md: Tensor, rd: Tensor) -> Tensor:
    """Exponential-disc circular velocity, km/s. Scaled Bessel functions: I0(y)K0(y) = i0e(y)k0e(y)."""
    y = r / (2 * rd)
    sp = torch.special
    bessel = sp.i0e(y) * sp.scaled_modified_bessel_k0(y) - sp.i1e(y) * sp.scaled_modified_bessel_k1(y)
    return torch.sqrt(torch.clamp(2 * G_DISC * md / rd * y * y * bessel, min=0.0))


def _rotation_curve(grid: Tensor, params: Tensor, options: Any) -> Tensor:
    md, rd, mh, c = (params[:, i : i + 1] for i in range(4))
    r = grid[None, :]
    return torch.sqrt(_v_disc(r, md, rd) ** 2 + _v_halo(r, mh, c) ** 2)


def scaling_relations(md: Tensor, scatter: Scatter, gen: torch.Generator | None) -> Tensor:
    """Notebook 004's scaling relations: (md,) -> (n, 4) [md, rd, mh, c], log-normal scatter in dex."""

    def noise(std: float) -> Tensor:
        if std == 0:
            return torch.zeros_like(md)
        return std * torch.randn(md.shape, generator=gen, dtype=md.dtype, device=md.device)

    log_md = torch.log10(md)
    rd = 10 ** ((log_md - 10.7) * 0.3 + 0.5 + noise(scatter.rd))
    mh = 10 ** ((log_md - 10.7) * 0.75 + 12.0 + noise(scatter.mh))
    c = 10 ** (0.905 - 0.101 * (torch.log10(mh * HUBBLE / 100.0) - 12) + noise(scatter.c))
    return torch.stack([md, rd, mh, c], dim=1)


def _rotation_prior(options: RotationOptions) -> Prior | None:
    if options.prior != "scaling_relations":
        return None
    return lambda md, opts, gen: scaling_relations(md, opts.scatter, gen)


def _u(low: float, high: float) -> dict[str, Any]:
    return {"dist": "uniform", "low": low, "high": high}


def _logu(low: float, high: float) -> dict[str, Any]:
    return {"dist": "loguniform", "low": low, "high": high}


FAMILIES: dict[str, Family] = {
    "normal": Family(
        name="normal",
        description="normal pdf phi(x; mu, sigma)",
        params=(
            Param("mu", "μ", default=_u(-3.0, 3.0)),
            Param("sigma", "σ", low=0.0, log_scale=True, default=_u(0.5, 3.0)),
        ),
        default_grid={"kind": "linspace", "start": -5.0, "stop": 5.0, "num": 1000},
        x_label="x",
        y_label="φ(x; μ, σ)",
        evaluate=_normal,
    ),
    "beta": Family(
        name="beta",
        description="Beta distribution log-pdf (or pdf) on (0, 1)",
        params=(
            Param("alpha", "α", low=0.0, log_scale=True, default=_u(0.0, 5.0)),
            Param("beta", "β", low=0.0, log_scale=True, default=_u(0.0, 5.0)),
        ),
        default_grid={"kind": "linspace", "start": 0.01, "stop": 0.99, "num": 100},
        x_label="x",
        y_label="log p(x; α, β)",
        evaluate=_beta,
        options_cls=BetaOptions,
        x_domain=(0.0, 1.0),
    ),
    "rotation_curve": Family(
        name="rotation_curve",
        description="circular velocity of an exponential disc plus an NFW halo",
        params=(
            Param("md", "$M_d$", "M$_\\odot$", low=0.0, log_scale=True, default=_logu(1e9, 1e12)),
            Param("rd", "$R_d$", "kpc", low=0.0, log_scale=True, default=_logu(0.3, 30.0)),
            Param("mh", "$M_h$", "M$_\\odot$", low=0.0, log_scale=True, default=_logu(1e10, 1e14)),
            Param("c", "$c$", low=0.0, log_scale=True, default=_logu(3.0, 30.0)),
        ),
        default_grid={"kind": "logspace", "start": -1.0, "stop": math.log10(50.0), "num": 50},
        x_label="radius [kpc]",
        y_label="velocity [km/s]",
        evaluate=_rotation_curve,
        options_cls=RotationOptions,
        derived_prior=_rotation_prior,
        x_log=True,
        x_domain=(0.0, math.inf),
    ),
    "dataset": Family(
        name="dataset",
        description="rows of a user's .npy, .npz or .csv file (curves, images or table rows)",
        params=(),
        default_grid={"kind": "index"},
        x_label="feature",
        y_label="value",
        evaluate=None,
        options_cls=DatasetOptions,
        load=lambda o: datasets.read_array_file(o.path, o.scale, o.image_shape),
        image_shape=lambda o: tuple(o.image_shape) if o.image_shape is not None else None,
        check_options=_check_dataset_options,
    ),
    "digits": Family(
        name="digits",
        description="scikit-learn's bundled 8 x 8 handwritten digits (needs funcae[images])",
        params=(),
        default_grid={"kind": "index"},
        x_label="pixel",
        y_label="intensity",
        evaluate=None,
        options_cls=DigitsOptions,
        load=lambda o: datasets.load_digits_data(o.scale),
        image_shape=lambda o: (8, 8),
    ),
}


def get_family(name: str) -> Family:
    from funcae_cli.errors import InputError

    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None
