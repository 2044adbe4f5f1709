"""mcmc's independence proposal (ensemble.Independent, used in blocks beside the local moves): the posterior stays
exact whatever the proposal, a mode the local moves never reach is found and weighed right, and a target's chain is
the same alone and in a batch. References: the analytic mixture (its weights and moments), not the sampler."""

from __future__ import annotations

import math

import torch

from funcae_cli.inversion.ensemble import Independent, sample

WEIGHT = 0.7  # the right mode's share of the mass
CENTRE = 6.0  # the modes at (-6, 0) and (6, 0), unit covariance: 12 sigma apart
SPREAD = 6.0  # the proposal: N(0, 6^2 I), the same for every target


def _log_density(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """log of (1 - w) N(x; (-c, 0), I) + w N(x; (c, 0), I), unnormalized, the same for every target."""
    left = -0.5 * ((x[:, 0] + CENTRE).square() + x[:, 1].square())
    right = -0.5 * ((x[:, 0] - CENTRE).square() + x[:, 1].square())
    return torch.logaddexp(left + math.log(1 - WEIGHT), right + math.log(WEIGHT))


def _gaussian(x: torch.Tensor) -> torch.Tensor:
    z = x / SPREAD
    return (-0.5 * z.square() - math.log(SPREAD) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)


WIDE = Independent(lambda rows, eps: (SPREAD * eps, _gaussian(SPREAD * eps)), lambda x, rows: _gaussian(x), "wide")


def _chains(
    n: int, proposal: Independent | None, seeds: torch.Tensor, rows: slice = slice(None), steps: int = 800
) -> torch.Tensor:
    """Targets `rows` of n, every walker started in the left mode (32: 4 ensembles of 8): (n, draws, 2) of `steps`
    after 200 of burn-in."""
    x0 = torch.tensor([-CENTRE, 0.0], dtype=torch.float64) + 0.5 * torch.randn(
        n, 32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    (cohort,) = sample(_log_density, x0[rows], 4, steps, 200, steps, seeds[rows], proposal)
    return cohort.chain.double().reshape(cohort.chain.shape[0], -1, 2)


def test_the_proposal_finds_and_weighs_a_mode_the_local_moves_never_reach() -> None:
    seeds = torch.tensor([11, 12, 13])
    local = _chains(3, None, seeds)
    assert float((local[:, :, 0] > 0).double().mean()) < 0.01  # the test can fail: stuck in the start's mode
    mixed = _chains(3, WIDE, seeds)
    right = (mixed[:, :, 0] > 0).double().mean(dim=1)
    # across 30 seeds the share had sd 0.018 per target: each within 4.4 sd, their mean within 3.8 sd
    assert torch.all((right - WEIGHT).abs() < 0.08) and abs(float(right.mean()) - WEIGHT) < 0.04, right
    for side, draws in ((1, mixed[0][mixed[0, :, 0] > 0]), (-1, mixed[0][mixed[0, :, 0] < 0])):
        assert abs(float(draws[:, 0].mean()) - side * CENTRE) < 0.1 and abs(float(draws[:, 1].mean())) < 0.1
        assert torch.allclose(draws.std(dim=0), torch.ones(2, dtype=torch.float64), atol=0.08)


def test_a_targets_chain_with_the_proposal_is_the_same_alone_and_in_a_batch() -> None:
    seeds = torch.tensor([21, 22, 23, 24, 25])
    batch = _chains(5, WIDE, seeds, steps=100)
    alone = _chains(5, WIDE, seeds, slice(2, 3), steps=100)
    assert torch.equal(alone[0], batch[2])
