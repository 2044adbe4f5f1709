"""The experiment config's schema: one dataclass per YAML section, each field with its help and range checks.

Each section's record is also the options record of the job that uses it: `invert` (and validate's inversion) takes
`InvertConfig`, `validate` `ValidateConfig`, `sample` `SampleConfig`; a command lays its options over the run's
section by field name (`rules.override`) and the result is checked by the same rules as the file, once, before any
work. The family section's own keys come from the family (families.py); rules.py parses and checks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from funcae_cli.config.families import FAMILIES, Family
from funcae_cli.config.loader import doc_field


@dataclass
class ParamSpec:
    """How one family parameter is sampled."""

    dist: Literal["uniform", "loguniform", "normal", "fixed"] = doc_field("uniform", "sampling law")
    low: float | None = doc_field(None, "lower bound (uniform, loguniform)")
    high: float | None = doc_field(None, "upper bound (uniform, loguniform)")
    mean: float | None = doc_field(None, "mean (normal)")
    std: float | None = doc_field(None, "standard deviation (normal)", gt=0)
    value: float | None = doc_field(None, "the value (fixed)")


@dataclass
class FamilyConfig:
    name: str = doc_field("normal", "function family: " + ", ".join(FAMILIES))
    params: dict[str, ParamSpec] = doc_field({}, "sampling law per parameter (defaults per family)")
    options: Any = None  # the family's own options dataclass, flattened into this section in YAML

    @property
    def family(self) -> Family:
        return FAMILIES[self.name]

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(height, width) when each row of the data is an image, else None (curves)."""
        return self.family.image_shape(self.options)


@dataclass
class GridConfig:
    kind: Literal["linspace", "logspace", "points", "index"] = doc_field(
        "linspace", "grid kind; index: 0, 1, ..., n_features - 1 (array families: dataset, digits)"
    )
    start: float | None = doc_field(None, "first point (logspace: exponent of 10)")
    stop: float | None = doc_field(None, "last point (logspace: exponent of 10)")
    num: int | None = doc_field(None, "number of points", min=2)
    points: list[float] | None = doc_field(None, "explicit points, increasing (kind: points)")


@dataclass
class DataConfig:
    n: int = doc_field(10_000, "number of curves generated", min=10)
    val_fraction: float = doc_field(0.1, "fraction held out for validation/model selection", gt=0, lt=1)
    test_fraction: float = doc_field(0.05, "fraction held out for the final test", min=0, lt=1)
    transform: Literal["none", "log"] = doc_field("none", "pointwise transform before training")
    normalize: Literal["none", "global", "per_point"] = doc_field("none", "standardization of curves")


@dataclass
class ModelConfig:
    kind: Literal["ae", "vae"] = doc_field("ae", "autoencoder or variational autoencoder")
    latent_dim: int = doc_field(2, "size of the latent code", min=1)
    hidden: list[int] = doc_field([64, 64, 64], "encoder hidden widths", min=1)
    decoder_hidden: list[int] | None = doc_field(None, "decoder hidden widths (default: hidden reversed)", min=1)
    activation: Literal["tanh", "relu", "gelu", "silu"] = doc_field("tanh", "hidden activation")
    dropout: float = doc_field(0.0, "dropout after each hidden layer", min=0, lt=1)
    input_dropout: float = doc_field(0.0, "dropout on the decoder input (notebook 002)", min=0, lt=1)


@dataclass
class SchedulerConfig:
    name: Literal["constant", "exponential", "cosine", "onecycle"] = doc_field("constant", "lr schedule")
    gamma: float = doc_field(0.98, "exponential: lr factor per epoch", gt=0, max=1)
    pct_start: float = doc_field(0.25, "onecycle: fraction of steps warming up", gt=0, lt=1)
    div_factor: float = doc_field(25.0, "onecycle: initial lr = lr / div_factor", gt=0)
    final_div_factor: float = doc_field(1e3, "onecycle/cosine: final lr = lr / final_div_factor", gt=0)


@dataclass
class NoiseConfig:
    kind: Literal["none", "mask", "gaussian"] = doc_field("none", "input corruption (denoising AE)")
    rate: float = doc_field(0.2, "mask: fraction of inputs zeroed", min=0, lt=1)
    std: float = doc_field(0.2, "gaussian: noise std in training units", min=0)


@dataclass
class TrainConfig:
    epochs: int = doc_field(50, "number of epochs", min=1)
    batch_size: int | Literal["full"] = doc_field(256, "curves per step, or `full` for full batch", min=1)
    optimizer: Literal["adam", "adamw", "sgd"] = doc_field("adam", "optimizer")
    lr: float = doc_field(1e-3, "peak learning rate", gt=0)
    weight_decay: float = doc_field(0.0, "optimizer weight decay", min=0)
    momentum: float = doc_field(0.9, "sgd momentum", min=0, lt=1)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: float | None = doc_field(None, "clip gradient norm to this value", gt=0)
    loss: Literal["sse", "mse", "gaussian"] = doc_field(
        "sse", "reconstruction: per-curve sum / mean of squares, or Gaussian likelihood with `eta`"
    )
    eta: float = doc_field(1.0, "gaussian loss: observation noise (notebook 001)", gt=0)
    kl_weight: float = doc_field(1.0, "VAE: weight of the KL term (beta-VAE)", min=0)
    kl_warmup_epochs: int = doc_field(0, "VAE: linear KL warm-up epochs", min=0)
    weight_penalty: float = doc_field(0.0, "gamma * mean(W^2) summed over layers (notebook 002)", min=0)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    patience: int | None = doc_field(None, "early stopping: epochs without val improvement", min=1)
    checkpoint_every: int = doc_field(1, "save last.pt every N epochs", min=1)
    eval_batch_size: int = doc_field(
        2048, "curves per forward pass in evaluation (larger chunks page-fault on CPU: ~4x slower)", min=1
    )
    engine: Literal["auto", "native", "mlp", "autograd"] = doc_field(
        "auto",
        "training step: `native` (MLP AE on the CPU, narrow middle in compiled C), `mlp` (hand-written "
        "torch step for MLP AEs), `autograd` (any model); `auto` times those that can train the model and "
        "takes the fastest (cached per CPU and shape)",
    )


@dataclass
class InvertConfig:
    method: Literal["encoder", "nelder-mead", "lbfgs", "adam"] = doc_field(
        "lbfgs", "refinement method of the latent code"
    )
    starts: int = doc_field(0, "extra random starts from the latent distribution", min=0)
    max_iter: int = doc_field(200, "iterations of the refinement", min=1)
    lr: float = doc_field(0.05, "adam: step size", gt=0)
    prior: Literal["density", "none"] = doc_field(
        "density", "latent prior: the training codes' density (MAP: the search stays on the manifold), or none"
    )
    physics: bool = doc_field(True, "refine the parameters by fitting the family's formula (families with one)")
    bounds: Literal["prior", "domain"] = doc_field(
        "prior", "physics refit inside the run's prior support, or anywhere in the family's domain"
    )
    physics_starts: int = doc_field(4, "physics refit: starts per target (the decoder's estimate + spread ones)", min=1)
    physics_max_iter: int = doc_field(50, "physics refit: Levenberg-Marquardt iterations", min=1)
    posterior: Literal["none", "laplace", "mcmc", "amortized", "auto"] = doc_field(
        "none",
        "uncertainty: none, a Laplace (Gaussian) approximation at the optimum, MCMC samples, the run's trained "
        "posterior network (`funcae amortize RUN`), importance-checked, or auto: amortized, and mcmc for the "
        "targets its check flags",
    )
    walkers: int | Literal["auto"] = doc_field(
        "auto",
        "mcmc: walkers per target (a multiple of 2 x groups), or auto: groups x max(8, 4 x parameters), rounded up "
        "to an even count per ensemble",
        min=4,
    )
    steps: int | Literal["auto"] = doc_field(
        "auto", "mcmc: steps kept per walker, or auto: until >= 50 autocorrelation times and R-hat < 1.01", min=10
    )
    burn: int = doc_field(200, "mcmc: steps discarded first", min=0)
    max_steps: int = doc_field(
        5000, "mcmc, steps auto: the most steps a target runs (then flagged unconverged)", min=10
    )
    groups: int = doc_field(4, "mcmc: independent ensembles per target (R-hat across them)", min=2)
    proposal: Literal["auto", "flow", "none"] = doc_field(
        "auto",
        "mcmc (formula families): an independence proposal beside the ensemble's local moves, in blocks of steps: "
        "flow = the run's posterior network (`funcae amortize RUN`), auto = flow where the run has one, none = the "
        "local moves alone",
    )
    draws: int = doc_field(500, "amortized: posterior draws per target", min=10)
    check: bool = doc_field(
        True, "amortized: weigh the draws by the likelihood and prior (PSIS k-hat per target; reweighted quantiles)"
    )
    samples: Literal["auto", "always", "never"] = doc_field(
        "auto",
        "posterior draws written to invert/<name>_samples.npz: always, never, or auto: when they take at most "
        "256 MB (a catalogue's draws only when asked: 100,000 targets x 500 draws x 4 parameters are 800 MB)",
    )
    seed: int | None = doc_field(None, "seed of random starts and samplers (default: the run's seed)", min=0)

    def problems(self) -> list[tuple[str, str]]:
        if self.walkers != "auto" and self.walkers % (2 * self.groups):
            return [("walkers", f"must be a multiple of 2 x groups ({2 * self.groups}), got {self.walkers}")]
        return []


@dataclass
class ValidateConfig:
    """`funcae validate`: how its curves are simulated and judged (the inversion itself: the `invert` section)."""

    n: int = doc_field(1000, "simulated curves", min=1)
    noise: float = doc_field(0.05, "relative one-sigma error of the simulated points", gt=0, lt=1)
    points: list[int] = doc_field([10, 40], "points per simulated curve, [min, max] inclusive", min=2)
    posterior: Literal["laplace", "mcmc", "amortized", "auto"] = doc_field(
        "mcmc", "the posterior whose calibration is measured"
    )
    require_coverage: float | None = doc_field(
        None, "a tolerance: exit 5 when a coverage misses its nominal level by more", gt=0, lt=1
    )
    # 50: a median over 50 curves is known to ~0.18 of the curves' spread (1.25 / sqrt(50)), enough to see a flow that
    # covers its levels on average but is wide or off curve by curve; mcmc on 50 curves costs ~13 s on 2 CPU cores
    # (smoke run: 13.4 s; rotation curves: 175 in ~42 s, issue 23). 0 turns it off; issue 23's criterion uses 200
    compare_mcmc: int = doc_field(
        50, "amortized: also mcmc on the first N curves, compared (median shift in mcmc sigmas, width ratio)", min=0
    )

    def problems(self) -> list[tuple[str, str]]:
        if len(self.points) != 2 or self.points[0] > self.points[1]:
            return [("points", f"expected [MIN, MAX] with MIN <= MAX, got {self.points}")]
        return []


@dataclass
class AmortizedConfig:
    """`funcae amortize RUN`: the posterior network (inversion/amortized.py) and the observations it is trained on,
    drawn fresh every step from the run's prior (points per curve, the range they cover, errors all random)."""

    epochs: int = doc_field(30, "epochs", min=1)
    steps: int = doc_field(100, "steps per epoch, each on a fresh batch of simulated observations", min=1)
    batch_size: int = doc_field(256, "simulated observations per step", min=1)
    lr: float = doc_field(1e-3, "Adam's peak learning rate (cosine decay to 0)", gt=0)
    hidden: list[int] = doc_field([64, 64], "hidden widths of the set encoder and of the flow's networks", min=1)
    embed: int = doc_field(32, "size of the observation's embedding", min=1)
    transforms: int = doc_field(3, "spline transforms of the flow", min=1)
    passes: int | None = doc_field(
        2,
        "sequential passes of each transform's inverse (sampling): 2 = coupling (one network evaluation per draw "
        "and transform), null = fully autoregressive (one per parameter but the first; networks trained before "
        "this option)",
        min=1,
    )
    points: list[int] = doc_field([5, 60], "points per simulated observation, [min, max] inclusive", min=2)
    frac: list[float] = doc_field([0.01, 0.2], "relative one-sigma error per observation, [min, max]", gt=0, lt=1)
    scatter: float = doc_field(0.3, "point-to-point scatter of the errors, relative", min=0, lt=1)
    floor: float = doc_field(0.01, "absolute error floor, as a fraction of the curve's largest |value|", min=0)
    min_span: float = doc_field(0.3, "fraction of the grid's range an observation covers at least", gt=0, max=1)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for name in ("points", "frac"):
            v = getattr(self, name)
            if len(v) != 2 or v[0] > v[1]:
                out.append((name, f"expected [MIN, MAX] with MIN <= MAX, got {v}"))
        return out


@dataclass
class SampleConfig:
    """`funcae sample`: new curves from the model."""

    n: int = doc_field(16, "number of curves", min=1)
    latent: Literal["auto", "prior", "empirical", "gaussian"] = doc_field(
        "auto",
        "auto = prior N(0, I) for a VAE, empirical (training codes, each marginal resampled) for an AE; gaussian "
        "= a Gaussian fitted to the training codes",
    )
    seed: int | None = doc_field(None, "seed (default: the run's seed)", min=0)
    real: int = doc_field(200, "fresh curves of the run's prior drawn beside them for comparison", min=0)


@dataclass
class MlflowTrackConfig:
    tracking_uri: str | None = doc_field(
        None, "http(s)://server, sqlite:///file.db, ... (default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)"
    )
    experiment: str | None = doc_field(None, "experiment name (default: the run's name; a sweep's study name)")
    artifact_location: str | None = doc_field(
        None, "where a new experiment keeps its artifacts (default: the server's; runs/mlartifacts with the default)"
    )


@dataclass
class TrackConfig:
    """Experiment tracking (`pip install funcae[tracking]`); `--track NAME` turns a backend on from the CLI."""

    tensorboard: bool = doc_field(
        False, "TensorBoard event files in <run dir>/tensorboard (`tensorboard --logdir runs`)"
    )
    mlflow: bool | MlflowTrackConfig | None = doc_field(
        None, "MLflow: true, or a mapping of tracking_uri, experiment, artifact_location (null: off)"
    )
    timeout: float = doc_field(30.0, "seconds the end of a run waits for tracking writes still pending", gt=0)


@dataclass
class Config:
    name: str = doc_field("run", "run name; default run directory runs/<name>")
    """Letters, digits, '.', '_' and '-' only: it names the run directory."""
    seed: int = doc_field(0, "seed for data, initialization and batching", min=0, max=2**63 - 1)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    grid: GridConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    amortized: AmortizedConfig = field(default_factory=AmortizedConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# --- generic strict parsing ------------------------------------------------------------------


def config_to_dict(cfg: Any) -> Any:
    if isinstance(cfg, FamilyConfig):
        out: dict[str, Any] = {"name": cfg.name}
        if cfg.options is not None:
            out.update(config_to_dict(cfg.options))
        out["params"] = {
            k: {kk: vv for kk, vv in dataclasses.asdict(v).items() if vv is not None} for k, v in cfg.params.items()
        }
        return out
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [config_to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
