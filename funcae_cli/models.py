"""MLP encoders/decoders, AE and VAE. Models know nothing about data, losses or training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class ModelArgs:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    kind: str  # "ae" | "vae"
    n_points: int  # input/output width
    latent_dim: int
    hidden: list[int] = field(default_factory=lambda: [64, 64, 64])
    decoder_hidden: list[int] | None = None  # default: hidden reversed
    activation: str = "tanh"
    dropout: float = 0.0
    input_dropout: float = 0.0  # dropout on the decoder input (notebook 002)

    def to_dict(self) -> dict:
        return asdict(self)


class Output(NamedTuple):
    """What a forward pass returns; the trainer needs nothing else."""

    recon: Tensor  # (batch, n_points), training space
    z: Tensor  # (batch, latent_dim): the code used for decoding
    kl: Tensor | None  # (batch,) KL(q(z|x) || N(0, I)) per curve; None for an AE
    mean: Tensor | None = None  # (batch, latent_dim), VAE only
    logvar: Tensor | None = None


def mlp(sizes: list[int], activation: str, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with activations between them; the last layer is linear (no squashing)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        widths = a.decoder_hidden if a.decoder_hidden is not None else list(reversed(a.hidden))
        self.input_dropout = nn.Dropout(a.input_dropout) if a.input_dropout > 0 else nn.Identity()
        self.net = mlp([a.latent_dim, *widths, a.n_points], a.activation, a.dropout)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.input_dropout(z))


class AE(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.encoder = mlp([args.n_points, *args.hidden, args.latent_dim], args.activation, args.dropout)
        self.decoder = Decoder(args)

    def encode(self, x: Tensor) -> Tensor:
        """Deterministic code `(batch, latent_dim)`."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, gen: torch.Generator | None = None) -> Output:
        z = self.encoder(x)
        return Output(self.decoder(z), z, None)


class VAE(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.trunk = nn.Sequential(
            mlp([args.n_points, *args.hidden], args.activation, args.dropout), ACTIVATIONS[args.activation]()
        )
        self.to_mean = nn.Linear(args.hidden[-1], args.latent_dim)
        self.to_logvar = nn.Linear(args.hidden[-1], args.latent_dim)
        self.decoder = Decoder(args)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return self.to_mean(h), self.to_logvar(h)

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean: the deterministic code."""
        return self.posterior(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, gen: torch.Generator | None = None) -> Output:
        mean, logvar = self.posterior(x)
        if self.training:
            # noise on the model's device, from the run's generator (notebook 001 drew it on the CPU)
            eps = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        else:
            z = mean
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)  # (batch,)
        return Output(self.decoder(z), z, kl, mean, logvar)


MODELS: dict[str, type[nn.Module]] = {"ae": AE, "vae": VAE}


def build_model(args: ModelArgs | dict) -> nn.Module:
    if isinstance(args, dict):
        args = ModelArgs(**args)
    return MODELS[args.kind](args)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


CHUNK = 8192  # rows per forward pass when a whole data set goes through a network: bounded memory


@torch.no_grad()
def chunked(fn: Callable[[Tensor], Tensor], x: Tensor, size: int = CHUNK) -> Tensor:
    """fn over row chunks of x, concatenated (no gradient): every batched encode/decode of a data set.

    fn must map (k, ...) rows to (k, ...) outputs; for no rows, fn sees the empty input once."""
    if x.shape[0] == 0:
        return fn(x)
    return torch.cat([fn(x[i : i + size]) for i in range(0, x.shape[0], size)])


def codes_of(model: nn.Module, x: Tensor) -> Tensor:
    """Deterministic codes (posterior means for a VAE) of curves in training space, (n, n_points) -> (n, d)."""
    was_training = model.training
    model.eval()
    try:
        return chunked(model.encode, x)
    finally:
        model.train(was_training)
