"""funcae: autoencoders on families of functions, and the Python API for notebooks.

    import funcae_cli as fa
    run = fa.train("configs/normal.yaml", run_dir="runs/normal")   # or fa.load_run("runs/normal")
    res = run.invert(x=r, y=v, yerr=e)

`train`, `load_run`, `Run` and `Inversion` are the jobs' API (jobs/api.py), loaded on first use so that importing
funcae_cli (and `funcae --help`) stays light: torch is imported only when one of them is. `UserFamily` and
`Param` declare your own formula family (README, "Your own family").
"""

from funcae_cli._version import __version__

API = ("train", "load_run", "Run", "Inversion")
DECLARATIONS = ("UserFamily", "Param")  # your own formula family (config/families.py; README "Your own family")
__all__ = ["__version__", *API, *DECLARATIONS]


def __getattr__(name: str):
    if name in API:
        from funcae_cli.jobs import api  # torch and the libraries load here, on first use

        return getattr(api, name)
    if name in DECLARATIONS:
        from funcae_cli.config import families  # light (no torch): a user's family module imports these

        return getattr(families, name)
    raise AttributeError(f"module 'funcae_cli' has no attribute {name!r}")
