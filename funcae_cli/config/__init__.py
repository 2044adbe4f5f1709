"""The experiment config: what a YAML file may say, checked strictly (the bottom layer: imports nothing of funcae's
but errors).

- families.py: what each function family is (parameters, domains, default priors and grids, its own options): the
  schema of the `family:` section; no numerics (data/formulas.py computes the curves)
- schema.py: one dataclass per section, each field with its help and range checks; a section's record is also the
  options record of the job that uses it (invert, validate, sample)
- loader.py: the strict YAML reader under every funcae file (configs and sweep files): dataclasses as schemas,
  dotted-path errors with did-you-mean, --set overrides
- rules.py: the rules between fields and sections (family keys and priors, grid and domain, name, splits);
  `load_config`, `config_from_dict`; `override` lays a command's options over a section by the same rules
- explain.py: every field documented (`funcae config show --explain`)
"""

from funcae_cli.config.explain import FieldDoc, explain
from funcae_cli.config.families import FAMILIES, Family, Param
from funcae_cli.config.loader import apply_overrides, doc_field, parse_override, parse_section, read_yaml, set_dotted
from funcae_cli.config.rules import EMPTY_CONFIG, NAME_RE, config_from_dict, load_config, override
from funcae_cli.config.schema import (
    AmortizedConfig,
    Config,
    DataConfig,
    FamilyConfig,
    GridConfig,
    InvertConfig,
    MlflowTrackConfig,
    ModelConfig,
    NoiseConfig,
    ParamSpec,
    SampleConfig,
    SchedulerConfig,
    TrackConfig,
    TrainConfig,
    ValidateConfig,
    config_to_dict,
    dump_config,
)

__all__ = [
    "EMPTY_CONFIG",
    "AmortizedConfig",
    "FAMILIES",
    "NAME_RE",
    "Config",
    "DataConfig",
    "FamilyConfig",
    "FieldDoc",
    "Family",
    "GridConfig",
    "InvertConfig",
    "MlflowTrackConfig",
    "ModelConfig",
    "NoiseConfig",
    "Param",
    "ParamSpec",
    "SampleConfig",
    "SchedulerConfig",
    "TrackConfig",
    "TrainConfig",
    "ValidateConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "doc_field",
    "dump_config",
    "explain",
    "load_config",
    "override",
    "parse_override",
    "parse_section",
    "read_yaml",
    "set_dotted",
]
