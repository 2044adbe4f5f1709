"""Figures: one function per figure kind, each returning a matplotlib Figure (Agg backend).

Image runs (rows that are h x w images) get image versions of the figures (plotting/images.py).
`PLOTS` maps each kind of `funcae plot` to its drawing function; `render_plots` / `plot_run`
draw a trained run's figures into its plots/ folder.
"""

from funcae_cli.plotting.base import save_figure
from funcae_cli.plotting.data import data_preview
from funcae_cli.plotting.images import filters_figure, image_examples_figure, image_reconstruction_figure
from funcae_cli.plotting.latent import corner_figure, decoder_grid_figure, latent_figure
from funcae_cli.plotting.reconstruction import pca_figure, reconstruction_figure
from funcae_cli.plotting.results import inversions_figure, samples_comparison_figure
from funcae_cli.plotting.run import PLOTS, PlotKind, PlotOptions, PlotReport, plot_run, render_plots
from funcae_cli.plotting.training import loss_figure

__all__ = [
    "PLOTS",
    "PlotKind",
    "PlotOptions",
    "PlotReport",
    "corner_figure",
    "data_preview",
    "decoder_grid_figure",
    "filters_figure",
    "image_examples_figure",
    "image_reconstruction_figure",
    "inversions_figure",
    "latent_figure",
    "loss_figure",
    "pca_figure",
    "plot_run",
    "reconstruction_figure",
    "render_plots",
    "samples_comparison_figure",
    "save_figure",
]
