"""Figures: one function per figure kind, each returning a matplotlib Figure (Agg backend)."""

from funcae_cli.plotting.base import save_figure
from funcae_cli.plotting.data import data_preview

__all__ = ["data_preview", "save_figure"]
