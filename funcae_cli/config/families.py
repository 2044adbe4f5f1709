"""What each function family is: parameters, domains, default priors and grids, options, labels.

Each family is one `Family` record in the `FAMILIES` registry. This module holds no numerics, so
that `funcae families` and `funcae config check` answer without loading torch:

- formula families (`normal`, `beta`, `rotation_curve`): their curves are computed by
  `formulas.FORMULAS[name]`, a vectorized torch function of a float64 grid and parameters;
- array families (`dataset`, `digits`): their rows are read by `arrays.LOADERS[name]`, their grid
  is the feature index (`grid: {kind: index}`) and `image_shape(options)` says when rows are images;
- a user's formula families: a `UserFamily` declaration the user writes (a torch function and its parameters),
  found by an import path in the config or an installed package's entry point (`config/userfamilies.py`
  resolves them into this registry; `formulas.FORMULAS` adapts their function).

A test checks that every formula family has its formula and every array family its loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Param:
    """One physical parameter of a family."""

    name: str
    label: str = ""  # for plots, e.g. "μ" or "$M_d$" (default: the name)
    unit: str = ""  # physical unit for axis labels ("" when dimensionless)
    low: float = -math.inf  # domain: value must be > low (exclusive) ...
    high: float = math.inf  # ... and < high
    log_scale: bool = False  # positive scale parameter: regress and plot in log10
    default: dict[str, Any] = field(default_factory=dict)  # default sampling spec

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def axis_label(self) -> str:
        base = f"log10 {self.label}" if self.log_scale else self.label
        return f"{base} [{self.unit}]" if self.unit else base


@dataclass
class NoOptions:
    """This family takes no options beyond `name` and `params`."""


@dataclass
class UserFormulaOptions:
    function: str = ""
    """The import path `module:attribute` of your family: a `funcae_cli.UserFamily` declaration or a torch
    function f(x, p1, p2, ...); runs only for a config you wrote or a run you trust (`--trust-run-code`)."""


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
    param_columns: list[str] = field(default_factory=list)
    """.csv only: header names of the columns that hold physical parameters, not features."""


@dataclass
class DigitsOptions:
    scale: float = field(default=16.0, metadata={"gt": 0})
    """Pixel values (0..16) are divided by this; 16 maps them to [0, 1]."""
    max_rows: int | None = field(default=None, metadata={"min": 2})
    """Use at most this many of the 1797 images, drawn at random by the seed (default all)."""


ARRAY_SUFFIXES = (".npy", ".npz", ".csv")  # the files the dataset family reads (arrays.py)


def _check_dataset_options(o: DatasetOptions) -> list[str]:
    problems = []
    if not o.path:
        problems.append("path: the dataset family needs the data file, e.g. path: data.npz")
    elif not o.path.lower().endswith(ARRAY_SUFFIXES):
        problems.append(f"path: expected a {', '.join(ARRAY_SUFFIXES)} file, got {o.path!r}")
    if o.param_columns and not o.path.lower().endswith(".csv"):
        problems.append("param_columns: only for .csv files (an .npz holds `params` and `param_names`)")
    if o.image_shape is not None and len(o.image_shape) != 2:
        problems.append(f"image_shape: expected [height, width], got {o.image_shape}")
    return problems


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    params: tuple[Param, ...]
    default_grid: dict[str, Any]
    x_label: str
    y_label: str
    source: Literal["formula", "array"] = "formula"  # curves from formulas.FORMULAS, or rows from arrays.LOADERS
    options_cls: type = NoOptions
    # A structured prior: whether, with these options, the other parameters are derived from the first
    # one's samples (formulas.DERIVED_PRIORS[name] draws them).
    derives_params: Callable[[Any], bool] = lambda options: False
    x_log: bool = False  # plot x on a log axis
    x_domain: tuple[float, float] = (-math.inf, math.inf)  # grid points must lie strictly inside
    # options -> (height, width) when each row is an image, else None.
    image_shape: Callable[[Any], tuple[int, int] | None] = lambda options: None
    # options -> problems ("key: what is wrong"), reported by the config loader under `family.`.
    check_options: Callable[[Any], list[str]] = lambda options: []
    # A user's family: its torch function f(x, p1, p2, ...) -> curves (formulas.FORMULAS adapts it), where it
    # came from ("import path mod:attr" or "entry point NAME of package P"), and whether the physics refit
    # may take its derivatives.
    function: Callable[..., Any] | None = None
    origin: str = ""
    differentiable: bool = True

    @property
    def has_formula(self) -> bool:
        return self.source == "formula"

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def log_scale(self, names: list[str] | None = None) -> list[bool]:
        """Which of `names` (default: the family's parameters) are positive scales, regressed and shown in log10;
        a name the family does not know (a parameter of a user's file) is linear."""
        known = {p.name: p.log_scale for p in self.params}
        return [known.get(n, False) for n in (self.param_names if names is None else names)]

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class UserFamily:
    """A formula family from your own code: write it once in a module, then name it in a config
    (`family: {name: formula, function: "mymodule:my_family"}`) or register it under the entry-point group
    `funcae.families` of your package (`family: {name: my_family}`). See the README's "Your own family".

    `function(x, p1, p2, ...)`: x a float tensor of points, (1, m) for a shared grid or (n, m) per row; each
    parameter an (n, 1) column, in the order of `params`. Returns the curves (n, m), built from torch operations
    (broadcasting, differentiable): each value depends on its own point and its own row's parameters only.
    """

    function: Callable[..., Any]
    params: tuple[Param | str, ...]  # Param records, or bare names (no domain, no default prior)
    grid: dict[str, Any] | None = None  # the default grid, as the config's `grid:` section
    description: str = ""
    x_label: str = "x"
    y_label: str = "y"
    x_log: bool = False  # plot x on a log axis
    x_domain: tuple[float, float] = (-math.inf, math.inf)  # grid points must lie strictly inside
    differentiable: bool = True  # False: the physics refit keeps to derivative-free starts

    def family(self, name: str, origin: str, import_path: bool) -> Family:
        """This declaration as a registry record named `name`."""
        params = tuple(p if isinstance(p, Param) else Param(str(p)) for p in self.params)
        return Family(
            name=name,
            description=self.description or f"your formula ({origin})",
            params=params,
            default_grid=dict(self.grid) if self.grid else {},
            x_label=self.x_label,
            y_label=self.y_label,
            options_cls=UserFormulaOptions if import_path else NoOptions,
            x_log=self.x_log,
            x_domain=tuple(self.x_domain),
            function=self.function,
            origin=origin,
            differentiable=self.differentiable,
        )


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
        options_cls=RotationOptions,
        derives_params=lambda o: o.prior == "scaling_relations",
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
        source="array",
        options_cls=DatasetOptions,
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
        source="array",
        options_cls=DigitsOptions,
        image_shape=lambda o: (8, 8),
    ),
}
