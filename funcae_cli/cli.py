"""Typer root: registers the commands; maps errors to one-line messages and stable exit codes.

Exit codes: 0 success; 1 unexpected failure (a bug: traceback shown); 2 bad usage, config or
input; 4 training diverged; 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable

import typer

from funcae_cli import __version__
from funcae_cli.commands import config_cmd, encode, families_cmd, generate, invert, plot, sample, train
from funcae_cli.errors import FuncaeError, Interrupted

EXIT_OK = 0

app = typer.Typer(
    name="funcae",
    help="Train autoencoders on families of functions, then encode, invert, sample and plot.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"funcae {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """funcae: autoencoders for function families."""


def guarded(fn: Callable) -> Callable:
    """Run a command; a FuncaeError becomes its one-line message and exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FuncaeError as e:
            from funcae_cli import console

            console.error(str(e))
            raise typer.Exit(e.exit_code) from None

    return wrapper


def command(parent: typer.Typer, name: str, fn: Callable, **kwargs) -> None:
    parent.command(name, **kwargs)(guarded(fn))


command(app, "generate", generate.generate)
command(app, "train", train.train)
command(app, "families", families_cmd.families)
command(app, "encode", encode.encode, context_settings=encode.CONTEXT)
command(app, "invert", invert.invert, context_settings=encode.CONTEXT)
command(app, "sample", sample.sample)
command(app, "plot", plot.plot)
config_app = typer.Typer(help="Inspect and validate configs.", no_args_is_help=True)
command(config_app, "show", config_cmd.show)
command(config_app, "check", config_cmd.check)
app.add_typer(config_app, name="config")


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted("interrupted", signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and translate outcomes into exit codes."""
    from funcae_cli import console
    from funcae_cli.device import flush_denormals

    flush_denormals()  # before torch starts its worker threads, which inherit the mode
    # Raise our own exception on SIGINT/SIGTERM (click turns KeyboardInterrupt into exit 1).
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        app(args=argv, prog_name="funcae")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except FuncaeError as e:
        console.error(str(e))
        return e.exit_code
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


def entry() -> None:
    sys.exit(main())
