"""One options record per job: a command's options are laid over the run's config section by field name and checked
by the same rules as the config file. So `funcae config check` refuses every value `invert`, `validate` and
`sample` would refuse, with the same words, and a bad option fails before any work."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from funcae_cli.config import InvertConfig, SampleConfig, ValidateConfig, override
from funcae_cli.errors import OptionError

from .conftest import ok, usage_error

# (section, field, bad value as the CLI spells it (None: a config-only field), the YAML value, the rule's words)
BAD = [
    ("invert", "walkers", "12", 12, "must be a multiple of 2 x groups (8), got 12"),
    ("invert", "walkers", "2", 2, "must be >= 4, got 2"),
    ("invert", "walkers", "lots", "lots", "expected an integer or one of auto, got 'lots'"),
    ("invert", "steps", "3", 3, "must be >= 10, got 3"),
    ("invert", "steps", "many", "many", "expected an integer or one of auto, got 'many'"),
    ("invert", "max_steps", "5", 5, "must be >= 10, got 5"),
    ("invert", "groups", None, 1, "must be >= 2, got 1"),
    ("invert", "burn", "-1", -1, "must be >= 0, got -1"),
    ("invert", "starts", "-2", -2, "must be >= 0, got -2"),
    ("invert", "max_iter", "0", 0, "must be >= 1, got 0"),
    ("invert", "lr", "-1", -1.0, "must be > 0, got -1.0"),
    ("invert", "seed", "-3", -3, "must be >= 0, got -3"),
    ("invert", "method", "newton", "newton", "expected one of encoder, nelder-mead, lbfgs, adam, got 'newton'"),
    ("invert", "prior", "flat", "flat", "expected one of density, none, got 'flat'"),
    ("invert", "bounds", "box", "box", "expected one of prior, domain, got 'box'"),
    ("invert", "posterior", "hmc", "hmc", "expected one of none, laplace, mcmc, amortized, auto, got 'hmc'"),
    ("invert", "proposal", "kde", "kde", "expected one of auto, flow, none, got 'kde'"),
    ("invert", "draws", "3", 3, "must be >= 10, got 3"),
    ("invert", "samples", "some", "some", "expected one of auto, always, never, got 'some'"),
    ("invert", "physics_starts", None, 0, "must be >= 1, got 0"),
    ("invert", "physics_max_iter", None, 0, "must be >= 1, got 0"),
    ("sample", "n", "0", 0, "must be >= 1, got 0"),
    ("sample", "seed", "-1", -1, "must be >= 0, got -1"),
    ("sample", "real", None, -1, "must be >= 0, got -1"),
    ("sample", "latent", "uniform", "uniform", "expected one of auto, prior, empirical, gaussian, got 'uniform'"),
    ("validate", "n", "0", 0, "must be >= 1, got 0"),
    ("validate", "noise", "1.5", 1.5, "must be < 1, got 1.5"),
    ("validate", "noise", "0", 0.0, "must be > 0, got 0.0"),
    ("validate", "require_coverage", "2", 2.0, "must be < 1, got 2.0"),
    ("validate", "posterior", "none", "none", "expected one of laplace, mcmc, amortized, auto, got 'none'"),
    ("validate", "compare_mcmc", "-1", -1, "must be >= 0, got -1"),
]
RECORDS = {"invert": InvertConfig, "sample": SampleConfig, "validate": ValidateConfig}
COMMAND = {"invert": ["invert", "--mu", "0.3", "--sigma", "1.2"], "sample": ["sample"], "validate": ["validate"]}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


@pytest.mark.parametrize("section, field, cli_value, yaml_value, words", BAD)
def test_config_check_and_the_command_refuse_a_value_with_the_same_words(
    cli, workdir, smoke_run, section, field, cli_value, yaml_value, words
):
    """From the file: `config check` says `<file>: invert.walkers: <words>`; from the command line: the command
    says `--walkers: <words>`; both exit 2 before any work (nothing is written to the run)."""
    bad = workdir / "bad.yaml"
    bad.write_text((workdir / "configs" / "smoke.yaml").read_text() + f"\n{section}:\n  {field}: {yaml_value!r}\n")
    r = cli("config", "check", bad)
    usage_error(r, f"{section}.{field}: {words}")
    if cli_value is None:
        return
    run = workdir / "run"
    shutil.copytree(smoke_run, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    args = [*COMMAND[section], *(["--run", run] if section != "validate" else [run]), _flag(field), cli_value]
    r = cli(*args)
    usage_error(r, f"{_flag(field)}: {words}")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # refused before any work


def test_validate_points_rule_between_fields(cli, workdir, smoke_run):
    bad = workdir / "bad.yaml"
    bad.write_text((workdir / "configs" / "smoke.yaml").read_text() + "\nvalidate:\n  points: [30, 10]\n")
    usage_error(cli("config", "check", bad), "validate.points: expected [MIN, MAX] with MIN <= MAX, got [30, 10]")
    usage_error(cli("validate", smoke_run, "--points", "30:10"), "--points: expected [MIN, MAX] with MIN <= MAX")
    usage_error(cli("validate", smoke_run, "--points", "1:10"), "--points: must be >= 2, got 1")


def test_override_keeps_the_record_and_changes_only_the_given_fields():
    base = InvertConfig(walkers=16, steps=50)
    out = override(base, {"walkers": 24, "steps": None, "method": "adam"})
    assert out.walkers == 24 and out.steps == 50 and out.method == "adam"
    assert dataclasses.replace(out, walkers=16, method="lbfgs") == base
    with pytest.raises(OptionError) as e:
        override(base, {"walkers": 12})
    assert e.value.cli_message() == "--walkers: must be a multiple of 2 x groups (8), got 12"


def test_walkers_auto_gives_each_ensemble_four_walkers_per_parameter_and_at_least_eight():
    from funcae_cli.inversion.posterior import Sampling

    auto = Sampling("auto", "auto", 200, 5000, 4)
    assert [auto.walkers_for(q) for q in (1, 2, 3, 4, 5, 7)] == [32, 32, 48, 64, 80, 112]
    assert all(auto.walkers_for(q) % (2 * 4) == 0 for q in range(1, 12))  # even ensembles, as the rule asks
    assert Sampling("auto", "auto", 200, 5000, 2).walkers_for(4) == 32
    assert Sampling(24, "auto", 200, 5000, 4).walkers_for(4) == 24  # asked for: as given
    assert InvertConfig().walkers == "auto" and InvertConfig(walkers="auto").problems() == []


def test_every_range_check_of_the_records_is_exercised_here():
    """Each field of the three records that declares a rule has a bad case above, so a new rule gets a test."""
    ruled = {
        (section, f.name)
        for section, cls in RECORDS.items()
        for f in dataclasses.fields(cls)
        if {"min", "gt", "max", "lt", "multiple_of"} & set(f.metadata) or "Literal" in str(f.type)
    }
    ruled -= {("validate", "points")}  # a list: its own test above
    assert ruled <= {(s, f) for s, f, *_ in BAD}


def test_a_good_option_runs(cli, workdir, smoke_run):
    run = workdir / "run"
    shutil.copytree(smoke_run, run)
    ok(cli("sample", "--run", run, "-n", "3", "--latent", "gaussian", "--seed", "2"))
