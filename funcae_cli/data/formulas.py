"""How each formula family's curves are computed: vectorized, differentiable torch functions.

`FORMULAS[name](x, params, options)` takes points x, either one grid `(m,)` shared by every row or `(n, m)`
per row, and parameters `(n, n_params)`, and returns curves `(n, m)`. Float64 when generating data; any float
dtype works, and derivatives flow to the parameters, by autograd and by torch.func's forward mode (the
physics refit of `inversion/physics.py` takes Jacobians that way). No Python loop runs over curves or points.
`CHI2[name]`, where a family has one, computes its weighted chi^2 over rows' own points in one native pass.
`DERIVED_PRIORS[name]` draws the structured prior of a family whose other parameters follow
from the first (rotation curves: the scaling relations of notebook 004), and `DERIVED_LOG_PRIORS[name]` is
that prior's log density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from funcae_cli.config.families import FAMILIES, BetaOptions, Family, RotationOptions, Scatter
from funcae_cli.data.powers import exp10, power
from funcae_cli.native import kernels as native

# (x (m,) or (n, m), params (n, p), options, in_place) -> curves (n, m); in_place: may work in buffers it made
# (not differentiable), for generation
Formula = Callable[..., Tensor]

# --- normal ---------------------------------------------------------------------------------


def rows(x: Tensor) -> Tensor:
    """Points as (1, m) for a shared grid or (n, m) per row: broadcasts against parameters' (n, 1) columns."""
    return x[None, :] if x.ndim == 1 else x


def normal(x: Tensor, params: Tensor, options: Any, in_place: bool = False) -> Tensor:
    mu, sigma = params[:, 0:1], params[:, 1:2]  # (n, 1) each
    inv = 1.0 / sigma
    z = torch.addcmul(-mu * inv, rows(x), inv)  # (x - mu) / sigma, (n, m), one pass
    log_norm = -torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    if not in_place:  # differentiable
        return torch.exp(log_norm - 0.5 * z * z)
    # exp(log_norm - z^2 / 2): the normalization inside the exponent, in place, three passes in all
    return torch.addcmul(log_norm, z, z, value=-0.5, out=z).exp_()


# --- beta -----------------------------------------------------------------------------------


def beta(x: Tensor, params: Tensor, options: BetaOptions, in_place: bool = False) -> Tensor:
    a, b = params[:, 0:1], params[:, 1:2]
    log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)  # -log B(a, b)
    logpdf = (a - 1) * torch.log(rows(x)) + (b - 1) * torch.log1p(-rows(x)) + log_norm
    return logpdf if options.output == "log_pdf" else torch.exp(logpdf)


# --- rotation curve (notebook 004, class curveMod) -------------------------------------------

G_KPC = 4.301e-9  # gravitational constant, Mpc (km/s)^2 / Msun, as in the notebook
G_DISC = 4.301e-6  # gravitational constant, kpc (km/s)^2 / Msun
HUBBLE = 70.0  # km/s/Mpc
DELTA_C = 200.0  # virial overdensity


def _fc(x: Tensor) -> Tensor:
    return torch.log1p(x) - x / (1 + x)


def v_halo2(r: Tensor, mh: Tensor, c: Tensor) -> Tensor:
    """NFW circular velocity squared, (km/s)^2. r (1 or n, m) kpc; mh, c (n, 1)."""
    v_vir2 = (DELTA_C * HUBBLE**2 / 2) ** (1 / 3) * power(G_KPC * mh, 2 / 3)
    r_vir = 1e3 * power(mh / (0.5 * DELTA_C * HUBBLE**2 / G_KPC), 1 / 3)  # kpc
    return v_vir2 * r_vir / r * _fc(c * r / r_vir) / _fc(c)


def disc_bessel(y: Tensor) -> tuple[Tensor, Tensor]:
    """I0(y)K0(y) - I1(y)K1(y) and its derivative from exponentially scaled Bessel functions (I0 K0 = i0e k0e:
    no overflow for large y): d/dy [I0 K0 - I1 K1] = 2 (I1 K0 - I0 K1 + I1 K1 / y). Use float64: the difference
    cancels (~1e-3 relative in float32 at y = 100). The reference DiscTable is built from."""
    sp = torch.special
    i0, i1 = sp.i0e(y), sp.i1e(y)
    k0, k1 = sp.scaled_modified_bessel_k0(y), sp.scaled_modified_bessel_k1(y)
    return i0 * k0 - i1 * k1, 2 * (i1 * k0 - i0 * k1 + i1 * k1 / y)


class DiscTable:
    """I0(y)K0(y) - I1(y)K1(y) and its derivative, tabulated: four Bessel functions per point were half of the
    samplers' time and a fifth of the physics refit's, where this is ~6x faster (float64) and ~5x (float32; ~8x
    more in the native kernel, `value`).

    ln(I0K0 - I1K1) is tabulated against ln y (`disc_bessel` in float64, NODES nodes on [Y_MIN, Y_MAX]) as a cubic
    Hermite spline: four gathers and a cubic per point. The derivative is the spline's own, so a fit's Jacobian is
    exactly that of the function it evaluates. Accuracy (tests/test_physics.py, against scipy in float64): relative
    error below 1e-11 in float64, as good as the Bessel functions themselves, whose difference cancels; below 1e-5
    in float32, better than the Bessel functions in float32. Points outside the table take `disc_bessel` in float64.
    """

    Y_MIN, Y_MAX, NODES = 1e-4, 1e3, 4096
    LOG_MIN = math.log(Y_MIN)
    SCALE = (NODES - 1) / (math.log(Y_MAX) - LOG_MIN)  # nodes per unit of ln y
    _coefficients: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}

    @classmethod
    def coefficients(cls, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        """Four columns (NODES - 1,): the cubic of each interval in its local coordinate u in [0, 1)."""
        key = (device, dtype)
        if key not in cls._coefficients:
            s = torch.linspace(cls.LOG_MIN, math.log(cls.Y_MAX), cls.NODES, dtype=torch.float64)
            y = s.exp()
            g, dg = disc_bessel(y)
            f, df = g.log(), y * dg / g * (s[1] - s[0])  # d ln g / d ln y, per interval
            f0, f1, d0, d1 = f[:-1], f[1:], df[:-1], df[1:]
            cubic = (f0, d0, 3 * (f1 - f0) - 2 * d0 - d1, 2 * (f0 - f1) + d0 + d1)
            cls._coefficients[key] = [c.to(device, dtype).contiguous() for c in cubic]
        return cls._coefficients[key]

    @classmethod
    def evaluate(cls, y: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        """(g, dg/dy or None) at y (any shape), in y's dtype."""
        t = ((y.log() - cls.LOG_MIN) * cls.SCALE).nan_to_num_(0.0).clamp_(0, cls.NODES - 1)  # NaN: any node (set below)
        i = t.long().clamp_(max=cls.NODES - 2)  # t >= 0: truncation is the floor; the last node ends an interval
        u = t - i
        c0, c1, c2, c3 = (torch.take(c, i) for c in cls.coefficients(y.device, y.dtype))
        # d ln g / d ln y per interval, before the value's cubic overwrites c3 in place
        slope = (c3 * (3 * u)).add_(c2, alpha=2).mul_(u).add_(c1) if derivative else None
        g = c3.mul_(u).add_(c2).mul_(u).add_(c1).mul_(u).add_(c0).exp_()
        dg = slope.mul_(g).mul_(cls.SCALE).div_(y) if slope is not None else None
        low, high = torch.aminmax(y)
        if not (float(low) >= cls.Y_MIN and float(high) <= cls.Y_MAX):  # NaN compares False: handled there too
            cls._outside(y, g, dg)
        return g, dg

    @classmethod
    def _outside(cls, y: Tensor, g: Tensor, dg: Tensor | None) -> None:
        """Rare: the points outside the table (and NaN) from the Bessel functions in float64, in g and dg."""
        outside = ~((y >= cls.Y_MIN) & (y <= cls.Y_MAX))
        exact = disc_bessel(y[outside].double())
        g[outside] = exact[0].to(g.dtype)
        if dg is not None:
            dg[outside] = exact[1].to(dg.dtype)

    @classmethod
    def value(cls, y: Tensor) -> Tensor:
        """g at y, without its derivative: float32 on the CPU in one pass of the native kernel (native/tables.c, ~8x
        faster than the torch code's ~20 passes) where it is built, else `evaluate`."""
        lib = native.kernels_or_none() if y.dtype == torch.float32 and y.device.type == "cpu" else None
        if lib is None:
            return cls.evaluate(y, derivative=False)[0]
        y = y.contiguous()
        out = torch.empty_like(y)
        c0, c1, c2, c3 = cls.coefficients(y.device, y.dtype)
        outside = lib.fae_loglog_table(y.data_ptr(), out.data_ptr(), y.numel(), c0.data_ptr(), c1.data_ptr(),
                                       c2.data_ptr(), c3.data_ptr(), cls.NODES, cls.LOG_MIN, cls.SCALE,
                                       cls.Y_MIN, cls.Y_MAX)  # fmt: skip
        if outside:  # the kernel left them NaN
            cls._outside(y, out, None)
        return out


class Disc(torch.autograd.Function):
    """DiscTable with its derivative written out, for autograd's backward and forward modes and torch.func's
    transforms (the table's gathers have no derivative of their own)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y: Tensor) -> tuple[Tensor, Tensor]:
        g, dg = DiscTable.evaluate(y, derivative=True)
        assert dg is not None
        return g, dg

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: tuple[Tensor, Tensor]) -> None:
        derivative = output[1]
        ctx.mark_non_differentiable(derivative)
        ctx.save_for_backward(derivative)
        ctx.save_for_forward(derivative)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> Tensor:
        (derivative,) = ctx.saved_tensors
        return grad * derivative

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor) -> tuple[Tensor, None]:
        (derivative,) = ctx.saved_tensors
        return tangent * derivative, None


def v_disc2(r: Tensor, md: Tensor, rd: Tensor) -> Tensor:
    """Exponential-disc circular velocity squared, (km/s)^2 (Freeman 1970). r (1 or n, m) kpc; md, rd (n, 1).
    Float32 without derivatives (the samplers): the table's value alone; otherwise with its derivative (Disc)."""
    y = r / (2 * rd)
    value_only = y.dtype == torch.float32 and not (torch.is_grad_enabled() and y.requires_grad)
    g = DiscTable.value(y) if value_only else Disc.apply(y)[0]
    return torch.clamp(2 * G_DISC * md / rd * y * y * g, min=0.0)


def rotation_curve(x: Tensor, params: Tensor, options: Any, in_place: bool = False) -> Tensor:
    md, rd, mh, c = (params[:, i : i + 1] for i in range(4))
    r = rows(x)
    return torch.sqrt(v_disc2(r, md, rd) + v_halo2(r, mh, c))


def rotation_chi2(
    params: Tensor, start: Tensor, count: Tensor, x: Tensor, y: Tensor, w: Tensor, active: Tensor | None = None
) -> Tensor | None:
    """chi^2 (k,) float64 of rows of parameters (k, 4) in the family's units, row i over the points [start[i],
    start[i] + count[i]) of x, y and their weights w (1 / yerr; weight 0: padding, skipped): sum of ((v - y) w)^2, v
    `rotation_curve`; active (k,) bool: the rows needed (the others, outside the caller's prior: NaN, no work).
    Float32 on the CPU in one pass of the native kernel (native/rotation.c: per-row constants once, each point one
    vectorized pass; 2.5x the torch code on 5,000 rows x 30 points, 2026-12-07, more against the samplers' torch
    path, which gathers each point's parameters); the rare rows with a disc argument off the table from the torch
    code. None where the kernel cannot serve (another dtype or device, or not built): the caller uses the formula."""
    on_cpu = params.device.type == "cpu" and params.dtype == torch.float32 and x.dtype == torch.float32
    lib = native.kernels_or_none() if on_cpu else None
    if lib is None:
        return None
    params, start, count = params.contiguous(), start.long().contiguous(), count.long().contiguous()
    x, y, w = x.contiguous(), y.contiguous(), w.contiguous()
    out = torch.empty(params.shape[0], dtype=torch.float64)
    needed = None if active is None else active.to(torch.uint8).contiguous()
    c0, c1, c2, c3 = DiscTable.coefficients(x.device, x.dtype)
    t = DiscTable
    bad = lib.fae_rotation_chi2(params.data_ptr(), params.shape[0], None if needed is None else needed.data_ptr(),
                                start.data_ptr(), count.data_ptr(), x.data_ptr(), y.data_ptr(), w.data_ptr(),
                                c0.data_ptr(), c1.data_ptr(), c2.data_ptr(), c3.data_ptr(), t.NODES, t.LOG_MIN,
                                t.SCALE, t.Y_MIN, t.Y_MAX, _ROTATION_CONSTS.data_ptr(), out.data_ptr())  # fmt: skip
    if bad:  # the kernel left them NaN
        off = torch.isnan(out) if active is None else torch.isnan(out) & active
        rows = torch.nonzero(off).squeeze(1)
        reps = count[rows]
        own, point = point_layout(start[rows], reps)
        f = rotation_curve(x[point, None], params[rows].repeat_interleave(reps, dim=0), None)[:, 0]
        r = torch.where(w[point] == 0, 0.0, (f - y[point]) * w[point])
        out[rows] = torch.zeros(rows.numel(), dtype=r.dtype).index_add_(0, own, r.square()).double()
    return out


_ROTATION_CONSTS = torch.tensor([G_KPC, G_DISC, HUBBLE, DELTA_C], dtype=torch.float64)  # rotation.c's consts


def point_layout(start: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Rows' own points, row i's the [start[i], start[i] + count[i]) of a flat array, point by point: the row of
    each and its place in the array ((N,), (N,), N = count.sum())."""
    row = torch.arange(start.shape[0]).repeat_interleave(count)
    offset = torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    return row, start.repeat_interleave(count) + offset


def _relations(log_md: Tensor) -> tuple[Tensor, Tensor]:
    """The scaling relations' centres: log10 rd and log10 mh given log10 md (notebook 004)."""
    return (log_md - 10.7) * 0.3 + 0.5, (log_md - 10.7) * 0.75 + 12.0


def _log_c_centre(mh: Tensor) -> Tensor:
    """The mass-concentration relation's centre, log10 c given the halo mass."""
    return 0.905 - 0.101 * (torch.log10(mh * HUBBLE / 100.0) - 12)


def scaling_relations(md: Tensor, scatter: Scatter, gen: torch.Generator | None) -> Tensor:
    """Notebook 004's scaling relations: (md,) -> (n, 4) [md, rd, mh, c], log-normal scatter in dex."""

    def noise(std: float) -> Tensor:
        if std == 0:
            return torch.zeros_like(md)
        return std * torch.randn(md.shape, generator=gen, dtype=md.dtype, device=md.device)

    log_rd, log_mh = _relations(torch.log10(md))
    rd = exp10(log_rd + noise(scatter.rd))
    mh = exp10(log_mh + noise(scatter.mh))
    c = exp10(_log_c_centre(mh) + noise(scatter.c))
    return torch.stack([md, rd, mh, c], dim=1)


def scaling_relations_log_density(log10_params: Tensor, scatter: Scatter) -> Tensor:
    """log p(log10 rd, log10 mh, log10 c | log10 md) of `scaling_relations`, up to a constant: (n, 4) -> (n,).

    Each of the three is Gaussian in log10 about its relation; a zero scatter is a relation held exactly,
    which has no density: such a parameter must be fixed by the caller, and is skipped here.
    """
    log_md, log_rd, log_mh, log_c = log10_params.unbind(dim=1)
    centre_rd, centre_mh = _relations(log_md)
    out = torch.zeros_like(log_md)
    for value, centre, std in (
        (log_rd, centre_rd, scatter.rd),
        (log_mh, centre_mh, scatter.mh),
        (log_c, _log_c_centre(exp10(log_mh)), scatter.c),
    ):
        if std > 0:
            out = out - 0.5 * ((value - centre) / std).square()
    return out


# --- a user's family (config/userfamilies.py registers its declaration in FAMILIES) ----------------


def user_formula(family: Family) -> Formula:
    """The formula of a user's family: its function f(x, p1, p2, ...) called with x as (1 or n, m) and each
    parameter as an (n, 1) column; the result is checked to be (n, m) (data/userfamily.py checks it first, on
    the prior, with a one-line error; here a wrong shape is a bug of the function met later)."""
    function = family.function

    def formula(x: Tensor, params: Tensor, options: Any, in_place: bool = False) -> Tensor:
        columns = params[:, :, None].unbind(dim=1)  # p columns (n, 1)
        out = function(rows(x), *columns)
        want = (params.shape[0], x.shape[-1])
        if not isinstance(out, Tensor) or out.shape != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"family {family.name} ({family.origin}) returned {got}, expected {want}")
        return out

    return formula


class Formulas(dict):
    """name -> Formula: the built-ins, and a user's family (from FAMILIES) adapted on first use."""

    def __missing__(self, name: str) -> Formula:
        family = FAMILIES.get(name)
        if family is None or family.function is None:
            raise KeyError(name)
        return user_formula(family)  # not cached: re-registering a name in one process takes the new one


FORMULAS: dict[str, Formula] = Formulas(normal=normal, beta=beta, rotation_curve=rotation_curve)
# name -> (params (k, p) in units, start (k,), count (k,), x, y, w) -> chi^2 (k,) float64, or None where it cannot
# serve: a family's likelihood fused into one native pass (the samplers' and the amortized check's), where it has one
CHI2: dict[str, Callable[..., Tensor | None]] = {"rotation_curve": rotation_chi2}

# (samples of the first parameter (n,), options, generator) -> all parameters (n, n_params)
DERIVED_PRIORS: dict[str, Callable[[Tensor, RotationOptions, torch.Generator | None], Tensor]] = {
    "rotation_curve": lambda first, o, gen: scaling_relations(first, o.scatter, gen),
}
# (log10 of all parameters (n, n_params), options) -> log density of the others given the first (n,)
DERIVED_LOG_PRIORS: dict[str, Callable[[Tensor, RotationOptions], Tensor]] = {
    "rotation_curve": lambda logp, o: scaling_relations_log_density(logp, o.scatter),
}
