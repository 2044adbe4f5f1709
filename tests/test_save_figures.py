"""files.save_figures: figures rendered side by side in forked processes write the same bytes as one after the
other, a child's failure surfaces as the parent's error, and no child is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from funcae_cli.files import save_figure, save_figures


def _figure(k: int) -> Figure:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    x = np.linspace(0.1, 10, 50)
    ax.loglog(x, x**k, label=f"x^{k}")
    ax.set_xlabel("r (kpc)")
    ax.legend()
    return fig


def _no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


class _Recording:
    """A figure that notes which process rendered it."""

    def __init__(self, fig: Figure, log: Path):
        self.fig, self.log = fig, log

    def savefig(self, *args, **kwargs):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.fig.savefig(*args, **kwargs)


@pytest.mark.parametrize("ways", [None, 3])
def test_side_by_side_writes_the_bytes_one_process_writes(tmp_path: Path, ways: int | None):
    figs = [_figure(k) for k in range(1, 6)]
    for i, fig in enumerate(figs):
        save_figure(fig, tmp_path / f"serial_{i}.png")
    log = tmp_path.parent / f"{tmp_path.name}.pids"
    save_figures({tmp_path / f"forked_{i}.png": _Recording(fig, log) for i, fig in enumerate(figs)}, ways=ways)
    pids = log.read_text().split()
    assert len(pids) == 5 and str(os.getpid()) in pids
    if ways == 3:  # whatever the cores: three processes, each its share (figures 0 and 3 here, 1 and 4, 2)
        assert len(set(pids)) == 3
    for i in range(len(figs)):
        forked = (tmp_path / f"forked_{i}.png").read_bytes()
        assert forked[:8] == b"\x89PNG\r\n\x1a\n"
        assert forked == (tmp_path / f"serial_{i}.png").read_bytes()
    assert _no_children_left()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"serial_{i}.png" for i in range(5)] + [f"forked_{i}.png" for i in range(5)]
    )  # no temp files left


class _Broken:
    """A figure whose rendering fails, wherever it runs."""

    def savefig(self, *args, **kwargs):
        raise ValueError("cannot render this one")


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_failure_in_any_process_is_raised_here_and_the_others_are_written(tmp_path: Path, position: int):
    figs: dict[Path, object] = {tmp_path / f"f{i}.png": _figure(i + 1) for i in range(3)}
    bad = tmp_path / f"f{position}.png"
    figs[bad] = _Broken()
    with pytest.raises(ValueError, match="cannot render this one"):
        save_figures(figs, ways=3)
    assert _no_children_left()
    assert not bad.exists()
    written = sorted(p.name for p in tmp_path.iterdir())
    # the broken figure's own process stops at it; the figures rendered elsewhere are complete PNGs
    for name in written:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not [n for n in written if not n.endswith(".png")]  # no temp files
