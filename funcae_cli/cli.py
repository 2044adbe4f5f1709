"""Typer root: registers the commands; maps every error to one line on stderr and a stable exit code.

Exit codes: 0 success; 1 unexpected failure (a bug: traceback shown); 2 bad usage, config or input; 3 a sweep's
trials failed (the others ran) or it ended short of its trials; 4 training diverged; 130/143 interrupted by
SIGINT/SIGTERM. The commands (commands/) import the library, and with it torch
and matplotlib, only when they run: `funcae --help`, `families` and `config check` answer without them.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from funcae_cli import console
from funcae_cli._version import __version__
from funcae_cli.commands import (
    amortize,
    config_cmd,
    encode,
    export,
    families_cmd,
    generate,
    init,
    invert,
    plot,
    runs,
    sample,
    sweep,
    train,
    validate,
)
from funcae_cli.commands.common import trust_run_code_in_this_process
from funcae_cli.errors import FuncaeError, Interrupted, user_message

EXIT_OK = 0


class Root(TyperGroup):
    """The root group: runs a command and turns what it raises into one line and an exit code (also under
    typer's CliRunner, which the tests use), instead of click's multi-line boxes."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # returns an exit code or None
        except FuncaeError as e:
            console.error(user_message(e))
            code = e.exit_code
        except typer.TyperException as e:  # click's usage errors: bad option, missing argument, bad value
            if type(e).__name__ == "NoArgsIsHelpError":
                typer.echo(e.ctx.get_help(), err=True)  # type: ignore[attr-defined]
            else:
                ctx = getattr(e, "ctx", None)
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                console.error(e.format_message() + hint)
            code = e.exit_code
        except typer.Abort:
            code = 130
        sys.exit(code if isinstance(code, int) else EXIT_OK)


app = typer.Typer(
    name="funcae",
    cls=Root,
    help="Train autoencoders on families of functions, then encode, invert, sample and plot.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"funcae {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    trust_run_code: bool = typer.Option(
        False,
        "--trust-run-code",
        help="Import the code a run directory's own formula family names (its `family.function`): it runs that "
        "code. Without it such a run stops with what it would import (FUNCAE_TRUST_RUN_CODE=1 does the same).",
    ),
) -> None:
    """funcae: autoencoders for function families."""
    if trust_run_code:
        trust_run_code_in_this_process()


# Family parameters (--mu, --md, ...) depend on the run's family: encode and invert take them as extra arguments.
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}

app.command("generate")(generate.generate)
app.command("train")(train.train)
app.command("families")(families_cmd.families)
app.command("init")(init.init)
app.command("encode", context_settings=EXTRA_ARGS)(encode.encode)
app.command("invert", context_settings=EXTRA_ARGS)(invert.invert)
app.command("sample")(sample.sample)
app.command("plot")(plot.plot)
app.command("validate")(validate.validate)
app.command("amortize")(amortize.amortize)
app.command("export")(export.export)
config_app = typer.Typer(help="Inspect and validate configs.", no_args_is_help=True, rich_markup_mode=None)
config_app.command("show")(config_cmd.show)
config_app.command("check")(config_cmd.check)
app.add_typer(config_app, name="config")


class DefaultGroup(TyperGroup):
    """A group whose first argument, when it names none of its subcommands, goes to the `default` one (so also no
    arguments at all when `bare` is). A callback taking an argument beside subcommands would read a subcommand's
    name as that argument."""

    default = ""
    bare = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if (not args and self.bare) or (args and args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


class SweepGroup(DefaultGroup):
    """`funcae sweep SWEEP.yaml ...` is `funcae sweep run SWEEP.yaml ...`; `funcae sweep show ...` reads one."""

    default = "run"


sweep_app = typer.Typer(
    cls=SweepGroup,
    help="Hyperparameter searches on Optuna: `funcae sweep SWEEP.yaml` runs one, `funcae sweep show` reads one.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
sweep_app.command("run")(sweep.run)
sweep_app.command("show")(sweep.show)
app.add_typer(sweep_app, name="sweep")


class RunsGroup(DefaultGroup):
    """`funcae runs [DIR] [--sort ...]` is `funcae runs list [DIR] ...`; `funcae runs compare A B` compares."""

    default, bare = "list", True


runs_app = typer.Typer(
    cls=RunsGroup,
    help="Run directories: `funcae runs [DIR]` lists them (status, metrics), `funcae runs compare A B` compares.",
    rich_markup_mode=None,
)
runs_app.command("list")(runs.list_)
runs_app.command("compare")(runs.compare)
app.add_typer(runs_app, name="runs")


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted("interrupted", signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and return its exit code."""
    # Raise our own exception on SIGINT/SIGTERM (click turns KeyboardInterrupt into exit 1).
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        app(args=argv, prog_name="funcae")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


def entry() -> None:
    sys.exit(main())
