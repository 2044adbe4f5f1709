"""Config loading: strict keys, types and ranges with dotted paths, overrides, round trips, shipped YAMLs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from funcae_cli.config import Config, config_from_dict, dump_config, load_config, parse_override
from funcae_cli.data.dataset import generate
from funcae_cli.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SWEEPS = CONFIGS / "sweeps"  # sweep files, not configs: tests/test_sweep_spec.py loads them
SHIPPED = sorted(p for p in {*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")} if SWEEPS not in p.parents)


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(raw: dict) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    return e.value


# --- numbers ------------------------------------------------------------------------------------


def test_exponent_notation_loads_as_float(tmp_path):
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # the PyYAML trap this guards against
    path = write(
        tmp_path,
        "train:\n  lr: 1e-3\n  eta: 1E-1\n  weight_decay: 5e-4\n"
        "family:\n  name: normal\n  params:\n    sigma: {dist: uniform, low: 5e-1, high: 3e0}\n",
    )
    cfg = load_config(path)
    assert type(cfg.train.lr) is float and cfg.train.lr == 0.001
    assert type(cfg.train.eta) is float and cfg.train.eta == 0.1
    assert cfg.train.weight_decay == 5e-4
    sigma = cfg.family.params["sigma"]
    assert (type(sigma.low), sigma.low, sigma.high) == (float, 0.5, 3.0)


def test_integer_written_in_exponent_notation_loads_as_int(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  n: 1e4\n"))
    assert type(cfg.data.n) is int and cfg.data.n == 10_000


def test_integer_field_rejects_a_fraction():
    e = error_of({"data": {"n": 1500.5}})
    assert "data.n" in str(e) and "1500.5" in str(e)


# --- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, where, suggestion",
    [
        ({"model": {"latnet_dim": 3}}, "model.latnet_dim", "model.latent_dim"),
        ({"famliy": {"name": "normal"}}, "famliy", "family"),
        ({"train": {"scheduler": {"gama": 0.9}}}, "train.scheduler.gama", "train.scheduler.gamma"),
        ({"family": {"name": "normal", "params": {"sgima": [1, 2]}}}, "family.params.sgima", "family.params.sigma"),
        (
            {"family": {"name": "normal", "params": {"sigma": {"dist": "uniform", "lo": 1, "high": 2}}}},
            "family.params.sigma.lo",
            "family.params.sigma.low",
        ),
        ({"family": {"name": "beta", "outptu": "pdf"}}, "family.outptu", "family.output"),
        ({"family": {"name": "rotation_curve", "scatter": {"rdd": 0.1}}}, "family.scatter.rdd", "family.scatter.rd"),
        ({"grid": {"kind": "linspace", "start": 0, "stop": 1, "nmu": 10}}, "grid.nmu", "grid.num"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unknown_key_names_the_dotted_path_and_the_closest_key(raw, where, suggestion):
    msg = str(error_of(raw))
    assert f"{where}:" in msg
    assert f"did you mean {suggestion}?" in msg


# --- wrong types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, where, shown",
    [
        ({"data": {"n": "many"}}, "data.n", "many"),
        ({"model": {"latent_dim": 2.5}}, "model.latent_dim", "2.5"),
        ({"train": {"lr": "fast"}}, "train.lr", "fast"),
        ({"model": {"hidden": "wide"}}, "model.hidden", "wide"),
        ({"model": {"hidden": [8, "x"]}}, "model.hidden[1]", "x"),
        ({"model": {"kind": "gan"}}, "model.kind", "gan"),
        ({"seed": True}, "seed", "True"),
        ({"train": {"batch_size": "all"}}, "train.batch_size", "all"),
        ({"model": "big"}, "model", "big"),
        ({"grid": {"kind": "linspace", "start": "zero", "stop": 1, "num": 10}}, "grid.start", "zero"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_type_names_the_dotted_path_and_the_value(raw, where, shown):
    msg = str(error_of(raw))
    assert f"{where}:" in msg
    assert shown in msg


def test_wrong_type_says_what_is_allowed():
    msg = str(error_of({"model": {"kind": "gan"}}))
    assert "ae" in msg and "vae" in msg


# --- ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, where, shown",
    [
        ({"family": {"name": "normal", "params": {"sigma": {"low": -1, "high": 2}}}}, "family.params.sigma.low", "-1"),
        ({"family": {"name": "beta", "params": {"alpha": {"dist": "fixed", "value": 0}}}}, "family.params.alpha", "0"),
        ({"train": {"lr": 0}}, "train.lr", "0"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "1.5"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim", "0"),
        ({"train": {"epochs": -3}}, "train.epochs", "-3"),
        ({"family": {"name": "rotation_curve", "scatter": {"rd": -0.1}}}, "family.scatter.rd", "-0.1"),
        ({"grid": {"kind": "linspace", "start": 0, "stop": 1, "num": 1}}, "grid.num", "1"),
        ({"model": {"hidden": [32, -3]}}, "model.hidden", "-3"),
        ({"model": {"decoder_hidden": [0]}}, "model.decoder_hidden", "0"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "0"),
        ({"seed": 2**70}, "seed", str(2**70)),  # torch.Generator.manual_seed overflows: exit 1 today
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_range_names_the_dotted_path_and_the_value(raw, where, shown):
    msg = str(error_of(raw))
    assert f"{where}" in msg
    assert shown in msg


def test_bad_range_says_what_is_allowed():
    msg = str(error_of({"family": {"name": "normal", "params": {"sigma": {"low": -1, "high": 2}}}}))
    assert "family.params.sigma.low: must be" in msg and "0" in msg and "normal" in msg


def test_uniform_low_may_equal_an_exclusive_domain_bound():
    # Beta's default U(0, 5): open at 0 (issue 2), so low = 0 is valid for a uniform law ...
    cfg = config_from_dict({"family": {"name": "beta", "params": {"alpha": {"dist": "uniform", "low": 0, "high": 5}}}})
    assert cfg.family.params["alpha"].low == 0.0
    # ... but not for a log-uniform law or a fixed value
    assert "family.params.alpha" in str(
        error_of({"family": {"name": "beta", "params": {"alpha": {"dist": "loguniform", "low": 0, "high": 5}}}})
    )


@pytest.mark.parametrize(
    "spec, where",
    [
        ({"dist": "uniform", "low": 3, "high": 1}, "family.params.mu"),
        ({"dist": "normal", "mean": 0}, "family.params.mu"),
        ({"dist": "fixed"}, "family.params.mu"),
        ({"dist": "gauss", "mean": 0, "std": 1}, "family.params.mu.dist"),
    ],
)
def test_incomplete_or_inconsistent_sampling_specs_are_errors(spec, where):
    assert where in str(error_of({"family": {"name": "normal", "params": {"mu": spec}}}))


def test_normal_law_is_refused_for_a_bounded_parameter():
    msg = str(error_of({"family": {"name": "normal", "params": {"sigma": {"dist": "normal", "mean": 1, "std": 0.1}}}}))
    assert "family.params.sigma" in msg


def test_grid_consistency_errors():
    assert "grid.stop" in str(error_of({"grid": {"kind": "linspace", "start": 1, "stop": 0, "num": 10}}))
    assert "grid.points" in str(error_of({"grid": {"kind": "points", "points": [0.3, 0.2, 0.1]}}))
    assert "grid" in str(error_of({"grid": {"kind": "logspace", "start": 0, "stop": 1}}))


def test_scaling_prior_refuses_params_it_derives():
    msg = str(error_of({"family": {"name": "rotation_curve", "params": {"rd": {"dist": "fixed", "value": 3}}}}))
    assert "family.params.rd" in msg


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line",
    [
        ("name: x\nseed: 0\nmodel:\n  latent_dim: 2\n hidden: [8]\n", 5),  # bad indentation on line 5
        ("name: x\nseed: 0\nmodel:\n\tlatent_dim: 2\n", 4),  # a tab on line 4
    ],
)
def test_malformed_yaml_reports_the_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"line {line}" in str(e.value)
    assert "exp.yaml" in str(e.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


def test_directory_instead_of_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


def test_unknown_family_lists_the_known_ones():
    msg = str(error_of({"family": {"name": "gauss"}}))
    assert "family.name" in msg and "gauss" in msg
    for known in ("normal", "beta", "rotation_curve"):
        assert known in msg


def test_all_problems_in_a_file_are_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "name: many\n"
        "family:\n  name: normal\n  params:\n    sigma: {dist: uniform, low: -1, high: 2}\n"
        "model:\n  latnet_dim: 3\n  kind: gan\n"
        "train:\n  lr: -1\n  epochs: lots\n",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    for where in ("family.params.sigma.low", "model.latnet_dim", "model.kind", "train.lr", "train.epochs"):
        assert where in msg
    assert len(e.value.problems) == 5


def test_name_defaults_to_the_file_stem_or_the_run_directory(tmp_path):
    assert load_config(write(tmp_path, "seed: 1\n", "my_exp.yaml")).name == "my_exp"
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    assert load_config(write(tmp_path / "runs" / "r1", "seed: 1\n", "config.yaml")).name == "r1"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_file_is_an_error_not_the_defaults(tmp_path, text):
    """An empty file is almost always a mistake (a wrong path, an unsaved editor): it must not train the
    defaults. A mapping with one key still gets every other default (next test)."""
    with pytest.raises(ConfigError, match="empty config"):
        load_config(write(tmp_path, text))
    cfg = load_config(write(tmp_path, "name: x\n"))
    assert cfg.family.name == "normal" and cfg.grid.num == 1000


def test_missing_family_section_gives_the_default_family_with_its_priors():
    cfg = config_from_dict({"data": {"n": 100}})
    assert cfg == config_from_dict({"data": {"n": 100}, "family": {"name": "normal"}})
    mu, sigma = cfg.family.params["mu"], cfg.family.params["sigma"]
    assert (mu.dist, mu.low, mu.high, sigma.low, sigma.high) == ("uniform", -3.0, 3.0, 0.5, 3.0)


# --- --set overrides ----------------------------------------------------------------------------


def test_overrides_set_nested_fields_with_yaml_values():
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        [
            "model.latent_dim=3",
            "train.lr=1e-4",
            "model.hidden=[8, 16]",
            "train.scheduler.name=cosine",
            "train.noise.kind=mask",
            "train.batch_size=full",
            "family.params.mu={dist: fixed, value: 0.5}",
            "invert.starts=4",
            "name=other",
            "grid.num=32",
        ],
    )
    assert cfg.model.latent_dim == 3
    assert type(cfg.train.lr) is float and cfg.train.lr == 1e-4
    assert cfg.model.hidden == [8, 16]
    assert cfg.train.scheduler.name == "cosine"
    assert cfg.train.noise.kind == "mask"
    assert cfg.train.batch_size == "full"
    assert (cfg.family.params["mu"].dist, cfg.family.params["mu"].value) == ("fixed", 0.5)
    assert cfg.invert.starts == 4
    assert cfg.name == "other"
    assert (cfg.grid.start, cfg.grid.stop, cfg.grid.num) == (-5.0, 5.0, 32)  # siblings kept


def test_overrides_can_switch_family_options():
    cfg = load_config(CONFIGS / "smoke.yaml", ["family={name: beta, output: pdf}", "grid=null"])
    assert cfg.family.name == "beta" and cfg.family.options.output == "pdf"
    assert cfg.grid.num == 100  # the family's default grid


def test_later_override_wins():
    assert load_config(CONFIGS / "smoke.yaml", ["seed=1", "seed=7"]).seed == 7


@pytest.mark.parametrize(
    "override, where",
    [
        ("model.latnet_dim=3", "model.latnet_dim"),
        ("model.latent_dim=0", "model.latent_dim"),
        ("train.lr=fast", "train.lr"),
        ("family.params.sigma.low=-1", "family.params.sigma.low"),
    ],
)
def test_overrides_are_validated_like_the_file(override, where):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert where in str(e.value)


def test_override_of_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "smoke.yaml", ["model.latnet_dim=3"])
    assert "did you mean model.latent_dim?" in str(e.value)


@pytest.mark.parametrize("bad", ["foo", "=3", "a..b=1", ".a=1", "model.=1", "model.latent_dim.x=1"])
def test_bad_override_syntax_is_a_config_error(bad):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "smoke.yaml", [bad])
    assert "--set" in str(e.value)


def test_parse_override_parses_the_value_as_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a={x: 1}") == ("a", {"x": 1})
    assert parse_override("a=x=y") == ("a", "x=y")


# --- dump / show round trips --------------------------------------------------------------------

VARIANTS = {
    "defaults": {},
    "beta_pdf": {"family": {"name": "beta", "output": "pdf", "params": {"alpha": [0.5, 2], "beta": 1.5}}},
    "rotation_scatter": {"family": {"name": "rotation_curve", "scatter": {"rd": 0.0, "mh": 0.1, "c": 0.2}}},
    "rotation_independent": {"family": {"name": "rotation_curve", "prior": "independent"}},
    "normal_laws": {
        "family": {"name": "normal", "params": {"mu": {"dist": "normal", "mean": 0.5, "std": 1e-1}, "sigma": 1.0}},
        "grid": {"kind": "points", "points": [-1, 0, 0.5, 2]},
        "train": {"batch_size": "full", "lr": 1e-10, "grad_clip": 1.0},
        "model": {"kind": "vae", "decoder_hidden": [4, 8]},
    },
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dump_config_loads_back_to_the_same_config(tmp_path, name):
    cfg = config_from_dict(copy.deepcopy(VARIANTS[name]))
    back = load_config(write(tmp_path, dump_config(cfg)))
    assert back == cfg


@pytest.mark.parametrize("path", SHIPPED + [None], ids=lambda p: "variants" if p is None else p.name)
def test_config_show_prints_yaml_that_loads_back(cli, tmp_path, path):
    if path is None:
        path = write(tmp_path, yaml.safe_dump(VARIANTS["normal_laws"]), "variant.yaml")
    result = cli("config", "show", path)
    assert result.exit_code == 0, result.output
    shown = write(tmp_path, result.stdout, "shown.yaml")
    assert load_config(shown) == load_config(path)


def test_config_show_applies_overrides(cli, tmp_path):
    result = cli("config", "show", CONFIGS / "smoke.yaml", "--set", "model.latent_dim=5", "--set", "train.lr=1e-4")
    assert result.exit_code == 0, result.output
    cfg = load_config(write(tmp_path, result.stdout, "shown.yaml"))
    assert cfg.model.latent_dim == 5 and cfg.train.lr == 1e-4


def test_config_check_exit_codes(cli, tmp_path):
    ok = cli("config", "check", CONFIGS / "smoke.yaml")
    assert ok.exit_code == 0, ok.output
    bad = cli("config", "check", write(tmp_path, "model:\n  latnet_dim: 3\n"))
    assert bad.exit_code == 2
    assert "model.latnet_dim" in bad.stderr


# --- every shipped config -----------------------------------------------------------------------


def test_shipped_configs_are_found():
    assert CONFIGS / "smoke.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads(path):
    cfg = load_config(path)  # raises ConfigError (the test fails) on any problem in the file
    assert isinstance(cfg, Config)
    assert cfg.grid is not None


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_generates_finite_curves(path):
    cfg = load_config(path)
    data_file = getattr(cfg.family.options, "path", None)  # dataset family: a user's file
    if data_file and not Path(data_file).expanduser().exists():
        pytest.skip(f"{path.name}: its data file {data_file} is absent (a user's file; see the config's header)")
    if cfg.family.name == "digits":
        pytest.importorskip("sklearn", reason="the digits family needs scikit-learn: pip install 'funcae[images]'")
    ds = generate(cfg, n=64)  # raises InputError on any non-finite curve
    assert tuple(ds.curves.shape) == (64, len(ds.grid))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_with_a_typo_is_rejected(tmp_path, path):
    """The loader that accepts the shipped files is strict: the same file plus one typo fails."""
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("model", {})
    raw["model"]["latnet_dim"] = 3
    with pytest.raises(ConfigError, match="model.latnet_dim"):
        load_config(write(tmp_path, yaml.safe_dump(raw), path.name))


def test_config_show_explain_documents_every_field(cli):
    """Every field of the resolved config, with its type, default, allowed range and help text."""
    import json

    r = cli("config", "show", str(CONFIGS / "rotation_curve.yaml"), "--explain", "--json")
    assert r.exit_code == 0, r.output
    docs = {d["key"]: d for d in json.loads(r.stdout)}
    cfg = load_config(CONFIGS / "rotation_curve.yaml")
    flat = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and not (prefix == "family.params."):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(cfg.to_dict(), "")
    assert set(flat) == set(docs)  # no field left out, none made up
    lr = docs["train.lr"]
    assert (lr["type"], lr["default"], lr["value"], lr["allowed"]) == ("a number", 1e-3, cfg.train.lr, "> 0")
    assert lr["help"] == "peak learning rate"
    assert docs["family.scatter.rd"]["help"].startswith("Log-normal scatter of the disc scale length")
    assert docs["family.params.md"]["value"] == {"dist": "loguniform", "low": 1e9, "high": 1e12}
    assert all(d["help"] for d in docs.values()), [k for k, d in docs.items() if not d["help"]]
    text = cli("config", "show", str(CONFIGS / "rotation_curve.yaml"), "--explain").stdout
    assert f"train.lr = {cfg.train.lr:g} (default 0.001)\n    a number; allowed > 0. peak learning rate" in text
