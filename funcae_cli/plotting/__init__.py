"""Figures: one function per figure kind, taking arrays and returning a matplotlib Figure (Agg backend).

Image runs (rows that are h x w images) get image versions of the figures (images.py). Loading a run and
choosing what to draw is the plot job's (runs/plot.py); nothing here reads a run directory.
"""
