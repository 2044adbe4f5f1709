"""`funcae families`: the function families, their parameters and default priors (no torch needed)."""

from __future__ import annotations

from funcae_cli import console
from funcae_cli.config.families import FAMILIES
from funcae_cli.config.userfamilies import entry_point_names
from funcae_cli.options import JsonOpt


def families(json_: JsonOpt = False) -> None:
    """List the function families, their parameters and default priors."""
    rows = {
        name: {
            "description": f.description,
            "params": {p.name: {"unit": p.unit, "domain": [p.low, p.high], "default": p.default} for p in f.params},
            "default_grid": f.default_grid,
        }
        for name, f in FAMILIES.items()
    }
    for name in entry_point_names():  # installed packages' families, loaded when a config names them
        rows.setdefault(name, {"description": "an installed package's family, loaded when used", "params": {}})
    if json_:
        console.emit_json(rows)
        return
    for name, r in rows.items():
        params = ", ".join(f"--{p}" for p in r["params"])
        print(f"{name:16} {r['description']}\n{'':16} params: {params}")
