"""The `plot` job: every figure of a trained run, the `PLOTS` registry and `render_plots`.

`RunPlots` loads what the figures need lazily and at most once (the data set, the codes of the
training split, the history), so drawing every kind encodes the data once. Each registry entry
turns a `RunPlots` into one Figure; `render_plots` writes them through RunDir and reports what
was written and what was skipped (and why). Nothing here prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from funcae_cli.data.dataset import Dataset
from funcae_cli.device import resolve_device
from funcae_cli.errors import OptionError
from funcae_cli.files import save_figure
from funcae_cli.jobs.results import read_inversions, read_posterior_samples, read_samples
from funcae_cli.models import linear_layers
from funcae_cli.plotting.base import subsample
from funcae_cli.plotting.data import data_preview
from funcae_cli.plotting.images import (
    filters_figure,
    image_decoder_grid_figure,
    image_reconstruction_figure,
    image_samples_figure,
    value_range,
)
from funcae_cli.plotting.inversion import inversions_figure
from funcae_cli.plotting.latent import corner_figure, decoder_grid_figure, grid_codes, latent_figure, support_mask
from funcae_cli.plotting.posterior import corner_posterior_figure
from funcae_cli.plotting.reconstruction import pca_figure, reconstruction_figure
from funcae_cli.plotting.samples import samples_comparison_figure
from funcae_cli.plotting.training import loss_figure
from funcae_cli.store.dataset import dataset_for
from funcae_cli.store.rundir import RunDir, slugify
from funcae_cli.store.trained import Trained, load_trained
from funcae_cli.training.evaluation import PCA_ROWS, eval_chunks, pca_sse, run_noise

__all__ = ["PLOTS", "PlotOptions", "render_plots"]

FORMATS = ("png", "pdf", "svg")
DEFAULT_RANGE = {"ae": 1.0, "vae": 3.0}  # decoder grid half-width per model kind (notebooks 000, 001)
MAX_INVERSIONS = 6  # rows of the `invert` figure


@dataclass
class PlotOptions:
    """How the figures are drawn (the `funcae plot` options)."""

    color_by: str | None = None
    """Parameter colouring codes and curves, or `label` [default: the label for labelled data, else
    the family's first parameter]."""
    latent_range: float | None = None
    """decoder_grid: half-width R of the [-R, R] square [default: 1 for an AE, 3 for a VAE]."""
    max_points: int = 20_000
    """Most points in one scatter (a random subsample beyond, said in the caption)."""
    n_curves: int = 40
    """Curves drawn in the reconstruction and samples panels."""
    grid_size: int = 10
    """decoder_grid: panels per side."""
    n_filters: int = 24
    """filters: hidden units shown (chosen at random by the seed)."""
    n_images: int = 10
    """reconstruction of image runs: random images shown (and the worst five beside them)."""
    n_posteriors: int = 12
    """posterior: targets drawn (the first ones of the latest posterior draws)."""
    seed: int = 0
    """Seed of the subsamples."""
    fmt: str = "png"
    """File format: png, pdf or svg."""
    dpi: int = 110
    """Resolution of raster output."""


class RunPlots:
    """A trained run and the arrays its figures share, each computed on first use."""

    def __init__(self, trained: Trained, options: PlotOptions):
        self.trained = trained
        self.options = options
        self.cfg = trained.cfg
        self.family = trained.family
        self.rd = trained.rd

    # --- labels ---------------------------------------------------------------------------
    @property
    def title(self) -> str:
        """'run smoke: normal, AE, latent 2' (every figure says which run it shows)."""
        c = self.cfg
        return f"run {self.rd.root.name}: {c.family.name}, {c.model.kind.upper()}, latent {c.model.latent_dim}"

    @property
    def model_kind(self) -> str:
        return self.cfg.model.kind

    @property
    def latent_dim(self) -> int:
        return int(self.cfg.model.latent_dim)

    # --- data -------------------------------------------------------------------------------
    @cached_property
    def dataset(self) -> Dataset:
        return dataset_for(self.cfg, self.rd)

    def split(self, name: str) -> slice:
        start, stop = self.trained.data["splits"][("train", "val", "test").index(name)]
        return slice(int(start), int(stop))

    @property
    def x(self) -> np.ndarray:
        return self.trained.grid.numpy()

    def curves(self, name: str) -> torch.Tensor:
        return self.dataset.curves[self.split(name)]

    def params(self, name: str) -> np.ndarray:
        return self.dataset.params[self.split(name)].numpy()

    @property
    def has_params(self) -> bool:
        return self.dataset.params.ndim == 2 and self.dataset.params.shape[1] > 0

    def plot_values(self, params: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Parameters on the scale they are plotted on (log10 for positive scale parameters) and their
        axis labels with units."""
        out = params.astype(np.float64).copy()
        known = {p.name: p for p in self.family.params}
        labels = []
        for j, name in enumerate(self.trained.param_names[: params.shape[1]]):
            p = known.get(name)  # data from a file may carry parameters the family does not describe
            if p is not None and p.log_scale:
                out[:, j] = np.log10(np.clip(out[:, j], 1e-300, None))
            labels.append(p.axis_label() if p is not None else name)
        return out, labels

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(height, width) for image runs, None for curves."""
        return self.cfg.family.image_shape

    @property
    def value_label(self) -> str:
        """What a pixel value is ('intensity' for digits), for image colorbars."""
        return self.family.y_label

    def labels(self, name: str) -> np.ndarray | None:
        """The split's integer labels (image/tabular data), None when the data has none."""
        return None if self.dataset.labels is None else self.dataset.labels[self.split(name)].numpy()

    @property
    def by_label(self) -> bool:
        """Colour by label: labelled data and --color-by not naming a parameter."""
        return self.dataset.labels is not None and self.options.color_by in (None, "label")

    def color(self, name: str) -> tuple[np.ndarray | None, str]:
        """Values colouring the split's points/curves by --color-by, and the colorbar label."""
        if not self.has_params or self.options.color_by == "label":
            return None, ""
        names = list(self.trained.param_names)
        j = names.index(self.options.color_by) if self.options.color_by else 0
        values, labels = self.plot_values(self.params(name))
        return values[:, j], labels[j]

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        if self.rd.history_json.exists():
            try:
                return list(json.loads(self.rd.history_json.read_text()))
            except ValueError:
                pass
        return list(self.trained.ckpt.get("train_state", {}).get("history", []))

    # --- the model, batched -----------------------------------------------------------------
    def encode(self, curves: torch.Tensor) -> np.ndarray:
        """Curves (n, n_points) in family units -> codes (n, latent_dim); VAE: posterior means."""
        return self.trained.encode(curves).cpu().double().numpy()

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Codes (n, latent_dim) -> curves (n, n_points) in family units."""
        return self.trained.decode(torch.as_tensor(z, dtype=torch.float32)).cpu().double().numpy()

    @cached_property
    def train_codes(self) -> np.ndarray:
        return self.encode(self.curves("train"))

    @cached_property
    def val_reconstruction(self) -> tuple[np.ndarray, np.ndarray]:
        """(curves, reconstructions) of the validation split, family units."""
        curves = self.curves("val")
        return curves.double().numpy(), self.decode(self.encode(curves))

    @cached_property
    def val_denoising(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Denoising runs: (corrupted inputs, their reconstructions) of the validation split, family
        units; None when the run was not trained on corrupted inputs.

        The corruption comes from `evaluation.eval_chunks`, as in training's evaluation: on the device the
        run was trained on, these are the very inputs of the validation metrics' noisy_* figures.
        """
        noise = run_noise(self.cfg)
        if noise is None:
            return None
        t = self.trained
        x = t.normalizer.encode(self.curves("val").to(t.device, torch.float32))
        corrupted, recon = [], []
        with torch.no_grad():
            for _, xc in eval_chunks(x, self.cfg.train.eval_batch_size, noise, self.cfg.seed):
                corrupted.append(t.normalizer.decode(xc).cpu())
                recon.append(t.normalizer.decode(t.model.decode(t.model.encode(xc))).cpu())
        return torch.cat(corrupted).double().numpy(), torch.cat(recon).double().numpy()


# --- one function per kind: RunPlots -> Figure ---------------------------------------------------


def _data(r: RunPlots) -> Figure:
    return data_preview(
        r.dataset, r.family, n=min(5, r.dataset.curves.shape[0]), title=r.title, image_shape=r.image_shape
    )


def _loss(r: RunPlots) -> Figure:
    t = r.cfg.train
    return loss_figure(r.history, vae=r.model_kind == "vae", loss=t.loss, kl_weight=t.kl_weight, title=r.title)


def _latent(r: RunPlots) -> Figure:
    color, label = r.color("train")
    o = r.options
    what = "training codes" + (" (posterior means)" if r.model_kind == "vae" else "")
    return latent_figure(
        r.train_codes,
        model_kind=r.model_kind,
        color=None if r.by_label else color,
        color_label=label,
        labels=r.labels("train") if r.by_label else None,
        max_points=o.max_points,
        seed=o.seed,
        title=r.title,
        what=what,
    )


def _decoder_grid(r: RunPlots) -> Figure:
    z = r.train_codes
    d = r.latent_dim
    lim = r.options.latent_range or DEFAULT_RANGE.get(r.model_kind, 1.0)
    if d <= 2:
        dims = tuple(range(d))
        center = np.zeros(d)
        note = f"over [{-lim:g}, {lim:g}]" + ("²" if d == 2 else "")
    else:
        var = z.var(axis=0)
        dims = tuple(int(i) for i in np.sort(np.argsort(-var)[:2]))
        center = z.mean(axis=0)
        held = ", ".join(f"z{i + 1} = {center[i]:.2f}" for i in range(d) if i not in dims)
        note = (
            f"over [{-lim:g}, {lim:g}]² (the two dimensions of largest variance of the training codes); "
            f"the others at their training means: {held}"
        )
    codes, ticks = grid_codes(center, dims, lim, r.options.grid_size)
    decoded = r.decode(codes)
    support = support_mask(z, dims, ticks)
    if r.image_shape is not None:
        return image_decoder_grid_figure(
            decoded,
            codes,
            dims,
            r.image_shape,
            support=support,
            value_range_=value_range(r.curves("train")[:5000].numpy()),  # the data's scale: decoded values clip
            title=r.title,
            note=note,
            value_label=r.value_label,
        )
    return decoder_grid_figure(r.x, decoded, codes, dims, r.family, support=support, title=r.title, note=note)


def _reconstruction(r: RunPlots) -> Figure:
    curves, recon = r.val_reconstruction
    if r.image_shape is not None:
        noisy = r.val_denoising
        noise = r.cfg.train.noise
        desc = (
            f"mask, {noise.rate:.0%} of pixels zeroed" if noise.kind == "mask" else f"{noise.kind}, std {noise.std:g}"
        )
        return image_reconstruction_figure(
            curves,
            recon,
            r.image_shape,
            labels=r.labels("val"),
            corrupted=None if noisy is None else noisy[0],
            denoised=None if noisy is None else noisy[1],
            noise=desc if noisy is not None else "",
            n_show=r.options.n_images,
            seed=r.options.seed,
            split="validation",
            title=r.title,
            value_label=r.value_label,
        )
    color, label = r.color("val")
    return reconstruction_figure(
        r.x,
        curves,
        recon,
        r.family,
        params=r.params("val") if r.has_params else None,
        color=color,
        color_label=label,
        n_show=r.options.n_curves,
        seed=r.options.seed,
        split="validation",
        title=r.title,
    )


def _corner(r: RunPlots) -> Figure:
    values, labels = r.plot_values(r.params("train"))
    what = "training codes" + (" (posterior means)" if r.model_kind == "vae" else "")
    return corner_figure(
        r.train_codes, values, labels, max_points=r.options.max_points, seed=r.options.seed, title=r.title, what=what
    )


@torch.no_grad()
def _pca(r: RunPlots) -> Figure:
    """Per-curve SSE of the model and of PCA with latent_dim components, fitted in training space
    on (at most 20,000) training curves as metrics.json's baseline, on the test split (else val)."""
    norm = r.trained.normalizer
    part = "test" if r.split("test").stop > r.split("test").start else "val"
    curves = r.curves(part).to(r.trained.device)
    train = norm.encode(r.curves("train")[:PCA_ROWS].to(r.trained.device))
    sse_pca = pca_sse(norm, train, norm.encode(curves), r.latent_dim)  # metrics.json's baseline, per curve
    raw = curves.double()
    sse_model = ((torch.as_tensor(r.decode(r.encode(curves.cpu()))) - raw.cpu()).square().sum(dim=1)).numpy()
    label = "VAE (posterior mean)" if r.model_kind == "vae" else "autoencoder"
    return pca_figure(
        sse_model,
        sse_pca,
        components=r.latent_dim,
        model_label=label,
        split="test" if part == "test" else "validation",
        max_points=r.options.max_points,
        seed=r.options.seed,
        title=r.title,
    )


def _filters(r: RunPlots) -> Figure:
    shape = r.image_shape
    first = linear_layers(r.trained.model)[0]  # the encoder's first layer: (units, pixels)
    w = first.weight.detach().double().cpu().numpy()
    layer = f"{w.shape[1]} pixels → {w.shape[0]} units"
    if r.cfg.data.normalize != "none" or r.cfg.data.transform != "none":
        layer += f"; inputs {r.cfg.data.transform}/{r.cfg.data.normalize}"
    return filters_figure(w, shape, n=r.options.n_filters, seed=r.options.seed, title=r.title, layer=layer)


def _invert(r: RunPlots) -> Figure:
    found, problems = read_inversions(r.rd.invert_results(), limit=MAX_INVERSIONS + 1)
    if not found:
        raise SkipPlot(f"no inversion result in {r.rd.invert_dir} holds target, fit and x arrays")
    shown = found[:MAX_INVERSIONS]
    note = f"the latest from {r.rd.invert_dir.name}/, newest file first"
    if len(found) > len(shown):
        note += "; more not shown"
    if problems:
        note += f"; unreadable: {'; '.join(problems[:2])}"
    return inversions_figure(shown, r.family, title=r.title, note=note)


def _samples(r: RunPlots) -> Figure:
    try:
        s = read_samples(r.rd.samples)
    except (OSError, ValueError, KeyError) as e:
        raise SkipPlot(f"{r.rd.samples}: not readable as samples ({e})") from None
    x = s.grid if s.grid is not None and s.grid.shape[0] == s.curves.shape[1] else r.x
    if x.shape[0] != s.curves.shape[1]:
        raise SkipPlot(f"{r.rd.samples}: curves have {s.curves.shape[1]} points, the run's grid {x.shape[0]}")
    rows = "images" if r.image_shape is not None else "curves"
    real, z_real, what = s.real, s.z_real, f"fresh {rows} stored with the samples"
    if real is None or real.shape[1] != s.curves.shape[1]:
        train = r.curves("train")
        pick = np.sort(subsample(train.shape[0], 1000, r.options.seed))  # never the whole split in float64
        real, z_real, what = train[pick].double().numpy(), None, "training split"
    z_sampled = s.z if s.z is not None and s.z.shape[1] == r.latent_dim else None
    if z_sampled is not None and (z_real is None or z_real.shape[1] != r.latent_dim):
        z_real = r.train_codes  # the codes the AE's empirical latent distribution is drawn from
    note = f"from {r.rd.samples.name}" + (f" (latent: {s.latent})" if s.latent else "") + f"; data: {what}"
    if r.image_shape is not None:
        return image_samples_figure(
            real, s.curves, r.image_shape, seed=r.options.seed, title=r.title, note=note, value_label=r.value_label
        )
    return samples_comparison_figure(
        x,
        real,
        s.curves,
        r.family,
        z_real=z_real if z_sampled is not None else None,
        z_sampled=z_sampled,
        n_show=r.options.n_curves,
        seed=r.options.seed,
        title=r.title,
        note=note,
    )


# --- the registry -------------------------------------------------------------------------------


class SkipPlot(Exception):
    """Raised by a kind's function when the run turns out to lack what the figure needs."""


def _needs_params(t: Trained) -> str | None:
    return None if t.param_names else "the run's data has no physical parameters"


def _needs_images(t: Trained) -> str | None:
    shape = t.cfg.family.image_shape
    if shape is None:
        return "the run's rows are curves, not images (filters are drawn for image data: family.image_shape)"
    pixels = shape[0] * shape[1]
    if linear_layers(t.model)[0].in_features != pixels:
        return f"the first layer takes {linear_layers(t.model)[0].in_features} inputs, not {pixels} pixels"
    return None


def _needs_inversions(t: Trained) -> str | None:
    if t.rd.invert_results():
        return None
    return f"no inversion results in {t.rd.invert_dir}; run `funcae invert` first"


def _posterior(r: RunPlots) -> dict[str, Figure]:
    """Corner figures of the latest posterior draws (`funcae invert --posterior`), one per target."""
    path = r.rd.posterior_samples()[0]
    try:
        post = read_posterior_samples(path)
    except (OSError, ValueError, KeyError) as e:
        raise SkipPlot(f"{path}: not readable as posterior samples ({e})") from None
    known = {p.name: p for p in r.family.params}
    labels = [known[n].axis_label().removeprefix("log10 ") if n in known else n for n in post.names]
    log10 = r.family.log_scale(post.names)
    out = {}
    for i, target in enumerate(post.ids[: r.options.n_posteriors]):
        truth = None if post.truth is None else post.truth[i]
        out[slugify(target)] = corner_posterior_figure(
            post.samples[i], labels, truth=truth, log10=log10, title=f"{r.title}: {target}",
            note=f"{post.kind} posterior, {post.samples.shape[1]:,} draws ({path.name})",
        )  # fmt: skip
    return out


def _needs_posterior(t: Trained) -> str | None:
    if t.rd.posterior_samples():
        return None
    return f"no posterior draws in {t.rd.invert_dir}; run `funcae invert --posterior mcmc` (or laplace) first"


def _needs_samples(t: Trained) -> str | None:
    return None if t.rd.samples.exists() else f"no {t.rd.samples}; run `funcae sample` first"


def _needs_history(t: Trained) -> str | None:
    if t.rd.history_json.exists() or t.ckpt.get("train_state", {}).get("history"):
        return None
    return f"no training history ({t.rd.history_json})"


def _needs_pca_room(t: Trained) -> str | None:
    if t.cfg.model.latent_dim < len(t.data["grid"]):
        return None
    return "latent_dim is not smaller than the number of grid points; PCA would be exact"


@dataclass(frozen=True)
class PlotKind:
    """One figure kind: how to draw it, when it applies, whether `train` draws it."""

    draw: Callable[[RunPlots], Figure | dict[str, Figure]]  # several figures: name_<key>
    help: str
    unmet: Callable[[Trained], str | None] = field(default=lambda t: None)
    """Why the kind does not apply to a run; None when it does."""
    default: bool = False
    """Drawn at the end of `funcae train` (unless --no-plots)."""

    def applies(self, trained: Trained) -> bool:
        return self.unmet(trained) is None


PLOTS: dict[str, PlotKind] = {
    "data": PlotKind(_data, "five curves of the data set labelled with their parameters; images: a grid by label"),
    "loss": PlotKind(_loss, "loss per epoch (VAE: reconstruction and KL apart), learning rate", _needs_history, True),
    "latent": PlotKind(
        _latent,
        "histograms and scatter of the codes (by label when labelled); pair plot for latent_dim > 2",
        default=True,
    ),
    "decoder_grid": PlotKind(_decoder_grid, "10 x 10 decoded curves (or images) over the latent square", default=True),
    "reconstruction": PlotKind(
        _reconstruction,
        "validation curves or images (with corrupted inputs), reconstructions, worst five",
        default=True,
    ),
    "filters": PlotKind(_filters, "first-layer weights of random hidden units as images", _needs_images, True),
    "corner": PlotKind(_corner, "each latent dimension against each physical parameter", _needs_params),
    "invert": PlotKind(_invert, "the latest inversion results (funcae invert)", _needs_inversions),
    "samples": PlotKind(_samples, "curves sampled from the model beside real ones (funcae sample)", _needs_samples),
    "posterior": PlotKind(
        _posterior,
        "corner plots of the latest posterior draws, one per target (funcae invert --posterior)",
        _needs_posterior,
    ),
    "pca": PlotKind(_pca, "per-curve error of the model against PCA with as many components", _needs_pca_room),
}


def select_kinds(kinds: list[str] | None, default_only: bool = False) -> list[str]:
    """The kinds to draw, in registry order; names may be given comma-separated. Unknown -> InputError."""
    if not kinds:
        return [k for k, p in PLOTS.items() if p.default or not default_only]
    wanted = [k.strip() for item in kinds for k in item.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in PLOTS]
    if unknown:
        raise OptionError("kind", f"unknown plot kind {unknown[0]!r}; known: {', '.join(PLOTS)}")
    return [k for k in PLOTS if k in wanted]


def check_options(options: PlotOptions, trained: Trained, has_labels: Callable[[], bool] = lambda: False) -> None:
    """User errors in the options, found before anything is drawn; has_labels: whether the run's
    data has labels (called only for --color-by label)."""
    if options.fmt not in FORMATS:
        raise OptionError("format", f"expected one of {', '.join(FORMATS)}, got {options.fmt!r}")
    if not 10 <= options.dpi <= 1200:
        raise OptionError("dpi", f"expected 10..1200, got {options.dpi}")
    if options.latent_range is not None and not options.latent_range > 0:
        raise OptionError("range", f"expected a positive number, got {options.latent_range}")
    if options.color_by == "label":
        if not has_labels():
            raise OptionError("color_by", "label: this run's data has no labels")
    elif options.color_by is not None:
        names = trained.param_names
        if not names:
            raise OptionError("color_by", f"{options.color_by}: this run's data has no physical parameters")
        if options.color_by not in names:
            raise OptionError("color_by", f"unknown parameter {options.color_by!r}; this run's: {', '.join(names)}")


@dataclass
class PlotReport:
    written: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "written": {k: str(v) for k, v in self.written.items()},
            "skipped": dict(self.skipped),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def render_plots(
    rd: RunDir,
    kinds: list[str] | None = None,
    *,
    default_only: bool = False,
    options: PlotOptions | None = None,
    device: str | torch.device = "cpu",
    on_written: Callable[[str, Path], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> PlotReport:
    """Draw the chosen kinds (default: every kind, or the `default` ones) of a trained run into
    rd.plots/<kind>.<fmt>. Kinds that do not apply are skipped with the reason in the report."""
    options = options or PlotOptions()
    names = select_kinds(kinds, default_only)
    trained = load_trained(rd, resolve_device(device))
    ctx = RunPlots(trained, options)
    check_options(options, trained, lambda: ctx.dataset.labels is not None)
    report = PlotReport()
    for name in names:
        kind = PLOTS[name]
        why = kind.unmet(trained)
        if why is None:
            t0 = time.perf_counter()
            try:
                drawn = kind.draw(ctx)
            except SkipPlot as e:
                why = str(e)
            else:  # one figure, or several named name_<suffix> (posterior: one per target)
                figures = drawn if isinstance(drawn, dict) else {"": drawn}
                for suffix, fig in figures.items():
                    key = f"{name}_{suffix}" if suffix else name
                    report.written[key] = save_figure(fig, rd.plot(key, options.fmt), options.fmt, options.dpi)
                    if on_written:
                        on_written(key, report.written[key])
                report.seconds[name] = time.perf_counter() - t0
                continue
        report.skipped[name] = why
        if on_skip:
            on_skip(name, why)
    return report
