"""`funcae sample`: new curves from a trained model."""

from __future__ import annotations

from funcae_cli import console
from funcae_cli.commands.common import resolve_run
from funcae_cli.options import DeviceOpt, JsonOpt, LatentOpt, RunOpt, SampleNOpt, SampleSeedOpt


def sample(
    run: RunOpt = None,
    n: SampleNOpt = None,
    latent: LatentOpt = None,
    seed: SampleSeedOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """New curves from the model; writes samples.npz (curves, z, grid) and samples.png."""
    from funcae_cli.jobs.sample import run_sample  # torch: loaded only when a command runs, not for --help

    out = run_sample(resolve_run(run), {"n": n, "latent": latent, "seed": seed}, device)
    if out["finite_fraction"] < 1:
        console.warn(f"{100 * (1 - out['finite_fraction']):.1f}% of the sampled curves have non-finite values")
    if json_:
        console.emit_json(out)
        return
    console.info(
        f"sampled {out['n']} curves from the {out['latent']} latent distribution of {out['run']} "
        f"(values in [{out['value_min']:.4g}, {out['value_max']:.4g}]); wrote " + ", ".join(out["files"].values())
    )
