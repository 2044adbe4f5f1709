"""Figures of image data (rows that are h x w images): `data`, `reconstruction`, `filters`,
`decoder_grid` and `samples` for image runs (notebook 002).

Every figure here is a set of blocks of image panels laid out by hand in inches (constrained
layout costs seconds on a hundred axes and a regular grid does not need it): one block per
heading, one row per kind of image (original, corrupted input, reconstruction...), the row's
name on its left, an optional title above each panel. Panels carry no ticks; one colorbar gives
the value scale shared by every panel that uses it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from funcae_cli.plotting.base import REFERENCE_COLOR, latent_label, subsample

IMAGE_CMAP = "gray"  # data, reconstructions, decoded and sampled images
FILTER_CMAP = "RdBu_r"  # signed weights: red positive, blue negative, white zero
TITLE_FONT = 8  # panel titles
ROW_WRAP = 16  # characters per line of a row label
MIN_WIDTH = 7.0  # inches: room for a readable header above a few small panels


@dataclass
class ImageRow:
    """One row of image panels: its name (left of the row), the images, a title above each."""

    label: str
    images: np.ndarray  # (k, h, w)
    titles: Sequence[str] = ()
    limits: np.ndarray | None = None  # (k, 2) own (vmin, vmax) per panel; default: the figure's
    flagged: np.ndarray | None = None  # (k,) bool: framed in red (e.g. no training code in the cell)
    cmap: str | None = None  # default: the figure's


@dataclass
class Block:
    """Rows of images side by side under one heading; `footer`: a text below each column."""

    heading: str
    rows: list[ImageRow]
    footer: Sequence[str] = field(default_factory=tuple)


def as_images(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, h*w) rows -> (n, h, w) images (row-major pixels, as the data file stores them)."""
    return np.asarray(rows, dtype=np.float64).reshape(-1, *shape)


def value_range(images: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax) of the colour scale: the data's own range (0.05 .. 99.95 percentiles, so that one
    stray pixel does not wash out the rest); (0, 1) when the images are constant."""
    v = np.asarray(images, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = (float(t) for t in np.percentile(v, [0.05, 99.95]))
    if hi <= lo:
        lo, hi = min(lo, 0.0), max(hi, lo + 1.0)
    return lo, hi


def image_figure(
    blocks: list[Block],
    *,
    header: str,
    cmap: str = IMAGE_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    panel: float = 1.0,
    colorbar: str | None = None,
    colorbar_ticks: tuple[list[float], list[str]] | None = None,
) -> Figure:
    """Blocks of image panels side by side (all blocks with the same number of rows).

    panel: height of one image in inches (width follows the image's aspect, capped); colorbar:
    its label, or None for no colorbar; colorbar_ticks: (positions, labels) replacing the numbers.
    """
    nrows = max(len(b.rows) for b in blocks)
    h, w = next(r.images.shape[1:] for b in blocks for r in b.rows if len(r.images))
    pw, ph = panel * min(max(w / h, 0.5), 2.0), panel
    titled = any(any(t for t in r.titles) for b in blocks for r in b.rows)
    title_h = 0.2 if titled else 0.0  # inches above each panel for its title
    gap_w, gap_h, block_gap = 0.07, 0.1, 0.45
    footed = any(len(b.footer) for b in blocks)
    labels = [_wrap(r.label) for r in blocks[0].rows]
    longest = max((len(line) for lab in labels for line in lab.splitlines()), default=0)
    left = 0.2 + 0.075 * longest  # horizontal row labels, right-aligned against the panels
    tick_chars = max((len(t) for t in colorbar_ticks[1]), default=0) if colorbar_ticks else 4
    right = 0.75 + 0.07 * tick_chars if colorbar else 0.25
    widths = [len(max(b.rows, key=lambda r: len(r.images)).images) for b in blocks]
    block_w = [k * pw + (k - 1) * gap_w for k in widths]
    panels_w = left + sum(block_w) + block_gap * (len(blocks) - 1) + right
    fig_w = max(panels_w, MIN_WIDTH)
    # header lines wrapped to the figure's width (11 pt: about 0.085 inch a character)
    chars = int((fig_w - 0.4) / 0.085)
    header = "\n".join(textwrap.fill(line, chars) for line in header.splitlines())
    header_lines = header.count("\n") + 1 if header else 0
    headings = any(b.heading for b in blocks)
    top = 0.15 + 0.21 * header_lines + (0.32 if headings else 0.0)
    bottom = 0.42 if footed else 0.15
    fig_h = top + bottom + nrows * (ph + title_h) + (nrows - 1) * gap_h
    fig = Figure(figsize=(fig_w, fig_h))
    extra = fig_w - panels_w
    x0 = left + extra / 2  # a narrow grid in a figure of MIN_WIDTH: centred

    def box(x: float, y_top: float, width: float, height: float) -> list[float]:
        """Axes rectangle in figure fractions from inches measured from the top-left corner."""
        return [x / fig_w, 1 - (y_top + height) / fig_h, width / fig_w, height / fig_h]

    for b, bw in zip(blocks, block_w):
        if b.heading:
            fig.text((x0 + bw / 2) / fig_w, 1 - (top - 0.08) / fig_h, b.heading, ha="center", va="bottom", fontsize=10)
        for i, row in enumerate(b.rows):
            y = top + i * (ph + title_h + gap_h) + title_h
            for j, img in enumerate(row.images):
                ax = fig.add_axes(box(x0 + j * (pw + gap_w), y, pw, ph))
                lo, hi = row.limits[j] if row.limits is not None else (vmin, vmax)
                ax.imshow(img, cmap=row.cmap or cmap, vmin=lo, vmax=hi, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                flag = row.flagged is not None and row.flagged[j]
                for s in ax.spines.values():
                    s.set_linewidth(1.6 if flag else 0.5)
                    s.set_color(REFERENCE_COLOR if flag else "0.6")
                if j < len(row.titles) and row.titles[j]:
                    ax.set_title(row.titles[j], fontsize=TITLE_FONT, pad=2)
            if b is blocks[0] and row.label:
                fig.text(
                    (x0 - 0.1) / fig_w,
                    1 - (y + ph / 2) / fig_h,
                    _wrap(row.label),
                    ha="right",
                    va="center",
                    fontsize=9,
                )
        for j, text in enumerate(b.footer):
            y = top + nrows * (ph + title_h + gap_h) - gap_h + 0.05
            fig.text((x0 + j * (pw + gap_w) + pw / 2) / fig_w, 1 - y / fig_h, text, ha="center", va="top", fontsize=8)
        x0 += bw + block_gap
    if colorbar is not None:
        height = min(nrows * (ph + title_h) + (nrows - 1) * gap_h, 3.0)
        cax = fig.add_axes(box(x0 - block_gap + 0.2, top + title_h, 0.15, height - title_h))
        cb = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax)
        cb.set_label(colorbar, fontsize=9)
        cb.ax.tick_params(labelsize=8)
        if colorbar_ticks is not None:
            cb.set_ticks(colorbar_ticks[0], labels=colorbar_ticks[1])
    if header:
        fig.text(0.5, 1 - 0.1 / fig_h, header, ha="center", va="top", fontsize=11)
    return fig


def _wrap(label: str) -> str:
    """A row label wrapped to ROW_WRAP characters a line, keeping its own line breaks."""
    return "\n".join(textwrap.fill(line, ROW_WRAP) for line in label.splitlines())


def _label_titles(labels: np.ndarray | None, idx: np.ndarray) -> list[str]:
    return [f"label {int(labels[i])}" for i in idx] if labels is not None else []


# --- data -----------------------------------------------------------------------------------------


def image_examples_figure(
    rows: np.ndarray,
    shape: tuple[int, int],
    *,
    labels: np.ndarray | None = None,
    per_row: int = 10,
    n_rows: int = 4,
    title: str = "",
    value_label: str = "intensity",
) -> Figure:
    """Examples of an image data set: with at most 10 labels one row per label (its first
    `per_row` images), else the first n_rows x per_row images titled with their labels."""
    n = rows.shape[0]
    lo, hi = value_range(rows[: min(n, 5000)])
    classes = np.unique(labels) if labels is not None else np.array([])
    if 0 < len(classes) <= 10:
        image_rows = []
        for c in classes:
            idx = np.flatnonzero(labels == c)[:per_row]
            count = int((labels == c).sum())
            image_rows.append(ImageRow(f"label {int(c)}\n({count:,} images)", as_images(rows[idx], shape)))
        what = f"the first {per_row} images of each label; {n:,} images of {shape[0]} x {shape[1]} pixels"
    else:
        k = min(n, per_row * n_rows)
        image_rows = []
        for r in range(0, k, per_row):
            idx = np.arange(r, min(r + per_row, k))
            image_rows.append(ImageRow("", as_images(rows[idx], shape), _label_titles(labels, idx)))
        what = f"the first {k} of {n:,} images ({shape[0]} x {shape[1]} pixels)"
    header = "\n".join(s for s in (title, what) if s)
    return image_figure([Block("", image_rows)], header=header, vmin=lo, vmax=hi, colorbar=value_label)


# --- reconstruction -------------------------------------------------------------------------------


def image_reconstruction_figure(
    images: np.ndarray,
    recon: np.ndarray,
    shape: tuple[int, int],
    *,
    labels: np.ndarray | None = None,
    corrupted: np.ndarray | None = None,
    denoised: np.ndarray | None = None,
    noise: str = "",
    n_show: int = 10,
    n_worst: int = 5,
    seed: int = 0,
    split: str = "validation",
    title: str = "",
    value_label: str = "intensity",
) -> Figure:
    """Random images of the split above their reconstructions, and the worst `n_worst` by error.

    images, recon: (n, h*w) in data units. Denoising runs also pass `corrupted` (the inputs the
    model saw, data units) and `denoised` (their reconstructions): rows original, corrupted input,
    reconstruction of the corrupted input, reconstruction of the clean input; the worst are then
    ranked by the error of the denoised image against the clean one.
    """
    n = images.shape[0]
    sse = ((recon - images) ** 2).sum(axis=1)  # per-image sum of squares, data units
    dn = corrupted is not None and denoised is not None
    sse_dn = ((denoised - images) ** 2).sum(axis=1) if dn else None
    rank = sse_dn if dn else sse
    shown = np.sort(subsample(n, n_show, seed))
    worst = np.argsort(-rank)[:n_worst]
    lo, hi = value_range(images)

    def rows_for(idx: np.ndarray) -> list[ImageRow]:
        out = [ImageRow("original", as_images(images[idx], shape), _label_titles(labels, idx))]
        if dn:
            out.append(
                ImageRow(f"corrupted input ({noise})" if noise else "corrupted input", as_images(corrupted[idx], shape))
            )
            out.append(
                ImageRow(
                    "reconstruction of the corrupted input",
                    as_images(denoised[idx], shape),
                    [f"SSE {sse_dn[i]:#.3g}" for i in idx],
                )
            )
        out.append(
            ImageRow(
                "reconstruction of the clean input" if dn else "reconstruction",
                as_images(recon[idx], shape),
                [f"SSE {sse[i]:#.3g}" for i in idx],
            )
        )
        return out

    what = "reconstruction of the corrupted input" if dn else "reconstruction"
    blocks = [
        Block(f"{len(shown)} random {split} images" if len(shown) < n else f"all {n} {split} images", rows_for(shown)),
        Block(f"the worst {len(worst)} of {n:,} by SSE of the {what}", rows_for(worst)),
    ]
    panel = 0.85 if shape[0] * shape[1] <= 400 else 1.0  # small images (8 x 8 digits) need less room
    caption = (
        f"{split} split, {n:,} images: per-image SSE (data units) mean {sse.mean():.4g}, median {np.median(sse):.4g}"
    )
    if dn:
        sse_in = ((corrupted - images) ** 2).sum(axis=1)
        caption = (
            f"{split} split, {n:,} images; mean per-image SSE against the clean image (data units):\n"
            f"corrupted input ({noise}) {sse_in.mean():.4g}, its reconstruction {sse_dn.mean():.4g}; "
            f"reconstruction of the clean input {sse.mean():.4g}"
        )
    header = f"{title}\n{caption}" if title else caption
    return image_figure(blocks, header=header, vmin=lo, vmax=hi, panel=panel, colorbar=value_label)


# --- filters ------------------------------------------------------------------------------------


def filters_figure(
    weights: np.ndarray,
    shape: tuple[int, int],
    *,
    n: int = 24,
    per_row: int = 8,
    seed: int = 0,
    title: str = "",
    layer: str = "",
) -> Figure:
    """The first layer's weights of `n` hidden units chosen at random, each as an image (notebook 002).

    weights: (units, h*w), the first Linear's weight. Each panel has its own symmetric colour
    scale (+- its largest |w|, in its title), so that weak units show their pattern too.
    """
    units = weights.shape[0]
    idx = np.sort(subsample(units, n, seed))
    peak = np.abs(weights[idx]).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)
    rows = []
    for r in range(0, len(idx), per_row):
        part = idx[r : r + per_row]
        k = np.arange(r, r + len(part))
        rows.append(
            ImageRow(
                "",
                as_images(weights[part] / peak[k, None], shape),
                [f"unit {u}: ±{p:#.2g}" for u, p in zip(part, peak[k])],
                cmap=FILTER_CMAP,
            )
        )
    chosen = f"{len(idx)} of {units} units chosen at random (seed {seed})" if len(idx) < units else f"all {units} units"
    lines = [
        title,
        f"first-layer weights{f' ({layer})' if layer else ''} as {shape[0]} x {shape[1]} images: {chosen}",
        "each panel on its own symmetric scale ±max|w| (in its title); red: positive, blue: negative",
    ]
    return image_figure(
        [Block("", rows)],
        header="\n".join(s for s in lines if s),
        cmap=FILTER_CMAP,
        vmin=-1.0,
        vmax=1.0,
        panel=1.15,
        colorbar="weight / max|w| of the unit",
        colorbar_ticks=([-1.0, -0.5, 0.0, 0.5, 1.0], ["-max", "-max/2", "0", "+max/2", "+max"]),
    )


# --- decoder grid -------------------------------------------------------------------------------


def image_decoder_grid_figure(
    decoded: np.ndarray,
    codes: np.ndarray,
    dims: tuple[int, ...],
    shape: tuple[int, int],
    *,
    support: np.ndarray | None = None,
    value_range_: tuple[float, float] = (0.0, 1.0),
    title: str = "",
    note: str = "",
    value_label: str = "intensity",
) -> Figure:
    """Decoded images on a grid of codes (grid_codes' order: rows z_b high -> low, columns z_a
    low -> high); the codes on the left and below. Cells without training codes are framed in red."""
    n = int(round(len(codes) ** (1 / len(dims))))
    nrows, ncols = (n, n) if len(dims) == 2 else (1, n)
    mask = None if support is None else np.asarray(support).reshape(nrows, ncols)
    imgs = as_images(decoded, shape).reshape(nrows, ncols, *shape)
    a = dims[0]
    rows = []
    for r in range(nrows):
        label = f"{latent_label(dims[1])} = {codes[r * ncols, dims[1]]:.2f}" if len(dims) == 2 else ""
        rows.append(ImageRow(label, imgs[r], flagged=None if mask is None else ~mask[r]))
    footer = [f"{codes[c, a]:.2f}" for c in range(ncols)]
    names = " and ".join(latent_label(i) for i in dims)
    lines = [title, f"decoded images on a grid of {names} {note}".strip()]
    lines.append(f"columns: {latent_label(a)} (below)" + (f"; rows: {latent_label(dims[1])}" if len(dims) == 2 else ""))
    if mask is not None and not mask.all():
        lines[-1] += "; red frame: no training code in that cell (the decoder extrapolates)"
    lo, hi = value_range_
    return image_figure(
        [Block("", rows, footer)],
        header="\n".join(s for s in lines if s),
        vmin=lo,
        vmax=hi,
        panel=0.85,
        colorbar=value_label,
    )


# --- samples ------------------------------------------------------------------------------------


def image_samples_figure(
    real: np.ndarray,
    sampled: np.ndarray,
    shape: tuple[int, int],
    *,
    per_row: int = 10,
    n_rows: int = 3,
    seed: int = 0,
    title: str = "",
    note: str = "",
    value_label: str = "intensity",
) -> Figure:
    """Images sampled from the model beside as many real ones, on the same colour scale."""
    k = min(per_row * n_rows, len(sampled), len(real))
    isamp = np.sort(subsample(len(sampled), k, seed + 1))
    ireal = np.sort(subsample(len(real), k, seed))
    lo, hi = value_range(real[ireal])
    cols = int(np.ceil(k / np.ceil(k / per_row))) if k else 1  # rows as full as possible: 12 -> 2 x 6

    def rows(x: np.ndarray, idx: np.ndarray) -> list[ImageRow]:
        return [ImageRow("", as_images(x[idx[r : r + cols]], shape)) for r in range(0, len(idx), cols)]

    blocks = [
        Block(f"{k} of {len(real):,} data images" if k < len(real) else f"{k} data images", rows(real, ireal)),
        Block(
            f"{k} of {len(sampled):,} sampled images" if k < len(sampled) else f"{k} sampled images",
            rows(sampled, isamp),
        ),
    ]
    header = "\n".join(s for s in (title, note) if s)
    return image_figure(blocks, header=header, vmin=lo, vmax=hi, panel=0.85, colorbar=value_label)
