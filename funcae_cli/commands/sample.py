from __future__ import annotations

from typing import Annotated

import typer

from funcae_cli import console
from funcae_cli.device import resolve_device
from funcae_cli.jobs import run_sample
from funcae_cli.options import DeviceOpt, JsonOpt, RunOpt, SeedOpt
from funcae_cli.rundir import resolve_run
from funcae_cli.runs import load_trained
from funcae_cli.sampling import LATENTS


def sample(
    run: RunOpt = None,
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Number of curves.")] = 16,
    latent: Annotated[
        str,
        typer.Option(
            "--latent",
            help=f"{' | '.join(LATENTS)}: auto = prior N(0, I) for a VAE, empirical (training codes, each "
            "marginal resampled) for an AE; gaussian = a Gaussian fitted to the training codes.",
        ),
    ] = "auto",
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """New curves from the model; writes samples.npz (curves, z, grid) and samples.png."""
    rd = resolve_run(run)
    trained = load_trained(rd, resolve_device(device))
    out = run_sample(trained, n, latent, trained.cfg.seed if seed is None else seed)
    if out["finite_fraction"] < 1:
        console.warn(f"{100 * (1 - out['finite_fraction']):.1f}% of the sampled curves have non-finite values")
    if json_:
        console.emit_json(out)
        return
    console.info(
        f"sampled {out['n']} curves from the {out['latent']} latent distribution of {out['run']} "
        f"(values in [{out['value_min']:.4g}, {out['value_max']:.4g}]); wrote " + ", ".join(out["files"].values())
    )
