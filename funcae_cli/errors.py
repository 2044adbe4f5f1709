"""Errors a user can cause. Each carries the exit code the CLI maps it to."""

from __future__ import annotations


class FuncaeError(Exception):
    """Bad usage, config or input: a one-line message and exit code 2."""

    exit_code = 2


def user_message(e: BaseException) -> str:
    """The one line shown for a user's error: library errors of one argument name its CLI flag."""
    return e.cli_message() if hasattr(e, "cli_message") else str(e)


class ConfigError(FuncaeError):
    """A config file or a --set override is invalid. Holds every problem found."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = prefix + self.problems[0]
        else:
            msg = prefix + f"{len(self.problems)} problems:\n  " + "\n  ".join(self.problems)
        super().__init__(msg)


class InputError(FuncaeError):
    """A data file, curve file, parameter value or run directory is invalid."""


class OptionError(InputError):
    """A bad value of one named argument of a library function (which the CLI exposes as an option).

    The message reads `name: what is wrong` from Python; the CLI shows the option's flag instead of the
    name (`cli_message`: color_by -> --color-by), so library code never spells command-line flags.
    """

    def __init__(self, option: str, message: str):
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")

    def cli_message(self) -> str:
        return f"{self.flag}: {self.message}"


class CheckpointError(FuncaeError):
    """A checkpoint is missing, truncated, foreign or unsafe."""


class DivergedError(FuncaeError):
    """Training produced a non-finite loss (exit 4)."""

    exit_code = 4


class Interrupted(FuncaeError):
    """Training stopped by SIGINT (exit 130) or SIGTERM (exit 143) after saving."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class TrialsFailed(FuncaeError):
    """A sweep ran, but some of its trials failed, or it ended short of its trials (exit 3)."""

    exit_code = 3


class MissedRequirement(FuncaeError):
    """A check ran and its result fell short of a requirement the user set (`validate --require-coverage`): exit 5.
    Not a usage error (2) and not a bug (1)."""

    exit_code = 5
