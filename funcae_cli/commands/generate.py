"""`funcae generate`: sample parameters, evaluate the family on the grid, write data.npz and a preview."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import config_and_run_dir
from funcae_cli.options import ConfigArg, ConfigSeedOpt, ForceOpt, JsonOpt, RunDirOpt, SetOpt


def generate(
    config: ConfigArg,
    run_dir: RunDirOpt = None,
    n: Annotated[Optional[int], typer.Option("--n", "-n", help="Number of curves (default: data.n).")] = None,
    seed: ConfigSeedOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Sample parameters, evaluate the family on the grid; write data.npz and data_preview.png."""
    from funcae_cli.jobs.generate import run_generate  # torch: loaded only when a command runs, not for --help

    # --n and --seed are overrides like any other: validated with the config, recorded in config.yaml.
    extra = ([f"data.n={n}"] if n is not None else []) + ([f"seed={seed}"] if seed is not None else [])
    cfg, rd = config_and_run_dir(config, [*(set_ or []), *extra], run_dir)
    out = run_generate(cfg, rd, force=force)
    if json_:
        console.emit_json(out)
        return
    parts = [f"generated {out['shape'][0]:,} curves x {out['shape'][1]} points in {out['seconds']:.2f}s"]
    parts += [f"{k} in [{v['min']:.4g}, {v['max']:.4g}]" for k, v in out["params"].items()]
    parts.append(f"values in [{out['value_min']:.4g}, {out['value_max']:.4g}]")
    console.info("; ".join(parts))
    console.info(f"wrote {out['data']} and {out['preview']}")
