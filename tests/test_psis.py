"""PSIS against ArviZ's psislw on many random weight sets, and k-hat on weights of known tail shape; Laplace's
importance check on a banana (flagged) and on Gaussians (not flagged, quantiles reweighted to the exact ones);
k-hat through the real `funcae invert --posterior laplace`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from funcae_cli.inversion import seeding
from funcae_cli.inversion.calibration import split_by_flag
from funcae_cli.inversion.laplace_check import (
    FLAG,
    KHAT_MAX,
    check_laplace,
    student_draws_with_log_q,
    student_log_density,
)
from funcae_cli.inversion.psis import importance_ess, psis, tail_length

from .conftest import ok
from .test_posterior import _noisy_curves

with warnings.catch_warnings():  # arviz 0.23 announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


def _weight_sets(rng: np.random.Generator, rows: int, draws: int) -> np.ndarray:
    """Log weights of many shapes: Gaussian (light tails), Student t of 0.5-5 degrees of freedom (heavy), log of
    exponential (bounded), and a few -inf (draws outside the target's support)."""
    scale = rng.uniform(0.05, 4.0, (rows, 1))
    sets = [rng.standard_normal((rows, draws)) * scale,
            rng.standard_t(rng.uniform(0.5, 5.0, (rows, 1)), (rows, draws)) * scale,
            np.log(rng.exponential(size=(rows, draws))) * scale]  # fmt: skip
    out = np.concatenate(sets)
    out[rng.random(out.shape) < 0.01] = -np.inf
    return out


@pytest.mark.parametrize("draws", [30, 100, 500, 2000])
def test_psis_matches_arviz_psislw_on_random_weight_sets(draws: int) -> None:
    rng = np.random.default_rng(draws)
    lw = _weight_sets(rng, 40, draws)
    ref_lw, ref_k = az.psislw(lw.copy())
    got_lw, got_k = psis(lw)
    assert isinstance(got_k, np.ndarray) and got_lw.shape == lw.shape and got_k.shape == (lw.shape[0],)
    fitted = np.isfinite(ref_k)
    assert fitted.mean() > 0.9  # the comparison covers the fit, not only the rows ArviZ gives up on
    np.testing.assert_allclose(got_k[fitted], ref_k[fitted], rtol=1e-6, atol=1e-9)
    assert np.array_equal(np.isinf(got_k), np.isinf(ref_k))
    np.testing.assert_allclose(np.exp(got_lw), np.exp(ref_lw), rtol=1e-6, atol=1e-12)
    # rows in any batch, torch in: the same numbers
    t_lw, t_k = psis(torch.as_tensor(lw[::-1].copy()))
    np.testing.assert_allclose(t_k.numpy()[::-1], got_k, rtol=1e-12)
    one_lw, one_k = psis(lw[3])
    np.testing.assert_allclose(one_lw, got_lw[3], rtol=1e-12) and np.testing.assert_allclose(one_k, got_k[3])


def test_tail_length_is_vehtaris() -> None:
    for s in (10, 100, 225, 500, 2000, 10**6):
        assert tail_length(s) == math.ceil(min(0.2 * s, 3 * math.sqrt(s)))


def test_k_hat_of_gaussian_proposals_follows_the_weights_tail() -> None:
    """Target N(0, 1), proposal N(0, s^2): the weights exp(x^2 (1/s^2 - 1) / 2) under the proposal have a Pareto
    tail of shape k = 1 - s^2 (s < 1: heavy; s > 1: bounded weights, k < 0). Equal weights: no tail at all."""
    rng = np.random.default_rng(0)
    medians = {}
    for s in (0.3, 0.5, 0.8, 1.5):
        x = rng.standard_normal((100, 2000)) * s
        lw = stats.norm.logpdf(x) - stats.norm.logpdf(x, scale=s)
        _, k = psis(lw)
        medians[s] = float(np.median(k))
        if s < 1:
            assert abs(medians[s] - (1 - s**2)) < 0.15, (s, medians[s])
    assert medians[0.3] > KHAT_MAX and medians[1.5] < 0 and medians[0.3] > medians[0.5] > medians[0.8]
    flat_lw, flat_k = psis(np.full((2, 500), -3.0))
    assert np.all(flat_k == -np.inf)
    np.testing.assert_allclose(np.exp(flat_lw), 1 / 500, rtol=1e-12)
    dead_lw, dead_k = psis(np.full((1, 50), -np.inf))
    assert dead_k[0] == np.inf and np.isnan(dead_lw).all()
    # NaN (a density that failed) is no weight, as -inf: a row of them, or of both, never passes (torch's nan_to_num
    # would have made the -inf the lowest finite float: flat weights, k-hat -inf, every draw counted), and among
    # finite weights a NaN draw gets none
    mixed = np.full((3, 200), -np.inf)
    mixed[0] = np.nan
    mixed[1, ::2] = np.nan
    mixed[2] = rng.standard_normal(200)
    mixed[2, :50] = np.nan
    lw, k = psis(mixed)
    assert k[0] == np.inf and k[1] == np.inf and np.isfinite(k[2])
    ref_lw, ref_k = psis(np.where(np.isnan(mixed[2:]), -np.inf, mixed[2:]))
    assert k[2] == ref_k[0] and np.all(np.exp(lw[2, :50]) == 0)
    np.testing.assert_array_equal(lw[2], ref_lw[0])


# --- Laplace's importance check ----------------------------------------------------------------------


BANANA_SD = 0.03  # x2 | x1 ~ N(x1^2, BANANA_SD^2): a thin curved ridge
GAUSS_MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
GAUSS_COV = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)


def _bananas_then_gaussians(x: torch.Tensor) -> torch.Tensor:
    """Log densities (n, S) of draws (n, S, 2): the first half bananas, x1 ~ N(0, 1) and x2 | x1 ~ N(x1^2,
    BANANA_SD^2), whose mode is 0 with Hessian diag(1, 1 / BANANA_SD^2); the second half N(GAUSS_MEAN, GAUSS_COV)."""
    h = x.shape[0] // 2
    b = x[:h]
    banana = -0.5 * b[..., 0].square() - 0.5 * ((b[..., 1] - b[..., 0].square()) / BANANA_SD).square()
    d = x[h:] - GAUSS_MEAN
    gauss = -0.5 * ((d @ torch.linalg.inv(GAUSS_COV)) * d).sum(dim=2)
    return torch.cat([banana, gauss])


def test_laplace_check_flags_bananas_and_reweights_gaussians_to_their_exact_quantiles() -> None:
    """20 bananas with their exact Laplace Gaussian N(0, diag(1, BANANA_SD^2)) and 20 Gaussians whose Laplace is
    a little off (mean shifted by 0.3 sd, covariance 1.4x), in one batch. k-hat estimates vary draw to draw (on
    such bananas 97% of 200 exceed 0.7 at 4000 draws): at least 18 of the 20 bananas are flagged, no Gaussian
    is, and the Gaussians' reweighted draws have the exact quantiles where the raw ones do not."""
    n = 20
    mean = torch.cat([torch.zeros(n, 2, dtype=torch.float64),
                      (GAUSS_MEAN + 0.3 * GAUSS_COV.diagonal().sqrt()).expand(n, 2)])  # fmt: skip
    cov = torch.cat([torch.diag(torch.tensor([1.0, BANANA_SD**2], dtype=torch.float64)).expand(n, 2, 2),
                     (1.4 * GAUSS_COV).expand(n, 2, 2)])  # fmt: skip
    names = [f"banana{i}" for i in range(n)] + [f"gauss{i}" for i in range(n)]
    check = check_laplace(mean, cov, _bananas_then_gaussians, 4000, seeding.mix64(torch.arange(2 * n)), names)
    assert check.unreliable[:n].sum() >= 18 and np.median(check.k_hat[:n]) > KHAT_MAX
    assert not check.unreliable[n:].any() and check.k_hat[n:].max() < 0.5
    assert np.array_equal(check.unreliable, check.k_hat >= KHAT_MAX)
    assert len(check.warnings) == 1 and FLAG in check.warnings[0] and "gauss" not in check.warnings[0]
    first = names[int(np.argmax(check.unreliable))]
    assert f"{first} (k-hat" in check.warnings[0]
    probs = [0.025, 0.16, 0.5, 0.84, 0.975]
    exact = stats.norm.ppf(np.array(probs)[:, None], GAUSS_MEAN.numpy(), GAUSS_COV.diagonal().sqrt().numpy())
    got = np.quantile(check.draws[n:].numpy(), probs, axis=1)  # (probs, targets, 2)
    np.testing.assert_allclose(np.median(got, axis=1), exact, atol=0.05)
    assert np.abs(got - exact[:, None]).max() < 0.15
    raw = check_laplace(mean, cov, None, 4000, seeding.mix64(torch.arange(2 * n)), names)
    assert np.isnan(raw.k_hat).all() and not raw.unreliable.any()
    raw_q = np.median(np.quantile(raw.draws[n:].numpy(), probs, axis=1), axis=1)
    assert np.abs(raw_q - exact).max() > 0.15  # the raw Gaussian's quantiles are off: the check moved them


def test_laplace_check_on_an_exact_gaussian_and_a_bounded_posterior() -> None:
    """Laplace exact: weights equal up to rounding, k-hat < 0, not flagged. A posterior truncated to x >= 0 (a
    bound of the prior) with Laplace's N(0.5, 1): reweighted draws inside the support, with the truncated
    normal's quantiles."""
    mean = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    cov = torch.ones(2, 1, 1, dtype=torch.float64)

    def log_post(x: torch.Tensor) -> torch.Tensor:
        exact = -0.5 * x[0, :, 0].square()
        half = torch.where(x[1, :, 0] >= 0, -0.5 * (x[1, :, 0] - 0.5).square(), -math.inf)
        return torch.stack([exact, half])

    # 16000 draws: the 84% quantile of the resample varies by ~0.014 run to run (0.027 at 4000 draws, measured
    # over 60 seeds), so 0.05 is > 3 sd
    check = check_laplace(mean, cov, log_post, 16000, seeding.mix64(torch.arange(2)), ["exact", "bounded"])
    assert check.k_hat[0] < 0 and not check.unreliable.any() and check.warnings == []
    assert bool((check.draws[1] >= 0).all())
    truncated = stats.truncnorm(-0.5, np.inf, loc=0.5)
    np.testing.assert_allclose(np.quantile(check.draws[1, :, 0].numpy(), [0.16, 0.5, 0.84]),
                               truncated.ppf([0.16, 0.5, 0.84]), atol=0.05)  # fmt: skip


def test_laplace_check_recovers_a_heavy_tailed_posterior_through_its_student_proposal() -> None:
    """A posterior heavier-tailed than Laplace's Gaussian: Student t with 3 degrees of freedom, whose Laplace
    variance is 3 / 4 (the curvature at the mode). Importance weights from the Gaussian itself grow without bound
    in the tails (k-hat ~ 1: the old check flagged such targets or, where k-hat came out under 0.7 by chance,
    reported intervals too narrow); from the check's Student proposal (PROPOSAL_DF = 5) they grow like x^2, a
    Pareto tail of k = 0.4. So: not flagged, and the reweighted draws have scipy's t3 quantiles, the 95%
    interval included, which the Gaussian's draws miss by ~1.5."""
    n = 8
    mean = torch.zeros(n, 1, dtype=torch.float64)
    cov = torch.full((n, 1, 1), 0.75, dtype=torch.float64)

    def log_post(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(stats.t.logpdf(x[..., 0].numpy(), 3))

    check = check_laplace(mean, cov, log_post, 16000, seeding.mix64(torch.arange(n)), [f"t{i}" for i in range(n)])
    assert not check.unreliable.any() and check.k_hat.max() < 0.6, check.k_hat
    probs = [0.025, 0.16, 0.5, 0.84, 0.975]
    got = np.median(np.quantile(check.draws[..., 0].numpy(), probs, axis=1), axis=1)
    np.testing.assert_allclose(got, stats.t.ppf(probs, 3), atol=0.12)
    gaussian = stats.norm.ppf(0.975, scale=math.sqrt(0.75))
    assert stats.t.ppf(0.975, 3) - gaussian > 1.4  # what the raw Gaussian would have reported


def test_student_log_density_is_scipys_multivariate_t_and_its_draws_own() -> None:
    """The t density the amortized check weighs by (laplace_check.student_log_density) against scipy's
    multivariate_t at random points, and at the t's own draws equal to the log q those draws come with."""
    gen = np.random.default_rng(3)
    n, q, df = 3, 4, 5
    a = gen.normal(size=(n, q, q))
    cov = torch.as_tensor(a @ a.transpose(0, 2, 1) + 0.1 * np.eye(q))
    mean = torch.as_tensor(gen.normal(size=(n, q)))
    x = torch.as_tensor(gen.normal(size=(n, 7, q)) * 3)
    got = student_log_density(x, mean, cov, df).numpy()
    for i in range(n):
        ref = stats.multivariate_t(mean[i].numpy(), cov[i].numpy(), df=df).logpdf(x[i].numpy())
        np.testing.assert_allclose(got[i], ref, rtol=1e-10)
    _, t, log_q = student_draws_with_log_q(mean, cov, 50, seeding.mix64(torch.arange(n)), df)
    np.testing.assert_allclose(student_log_density(t, mean, cov, df).numpy(), log_q.numpy(), rtol=1e-10)


def test_invert_laplace_reports_k_hat(cli, smoke_copy: Path) -> None:
    """The real command: each target's k-hat in the JSON (and its flag exactly where k-hat >= 0.7, named in a
    warning) and in the CSV; the batch's median k-hat in the summary."""
    _noisy_curves(smoke_copy.parent.parent / "obs.csv", 4)
    r = cli("invert", "--curves", "obs.csv", "--posterior", "laplace", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    k = [row["k_hat"] for row in rec["targets"]]
    assert all(isinstance(v, float) and -5 < v < 5 for v in k), k
    flagged = [row["name"] for row in rec["targets"] if FLAG in row["flags"]]
    assert flagged == [row["name"] for row in rec["targets"] if row["k_hat"] >= KHAT_MAX]
    assert sum(v < KHAT_MAX for v in k) >= 2  # well-measured normal curves: near-Gaussian posteriors
    named = [w for w in rec["warnings"] if FLAG in w]
    assert all(name in named[0] for name in flagged) if flagged else not named
    assert rec["summary"]["posterior"]["k_hat_median"] == pytest.approx(float(np.median(k)))
    ess = [row["importance_ess"] for row in rec["targets"]]
    draws = rec["summary"]["posterior"]["draws_per_target"]
    assert all(1 <= v <= draws for v in ess), ess  # effective draws of the S weighed ones
    assert rec["summary"]["posterior"]["importance_ess_median"] == pytest.approx(float(np.median(ess)))
    assert rec["summary"]["flags"][FLAG] == len(flagged)
    header = (smoke_copy / "invert" / "obs.csv").read_text().splitlines()[0].split(",")
    assert "k_hat" in header


def test_importance_ess_is_the_analytic_efficiency_of_a_wide_gaussian_proposal() -> None:
    """Weights N(0, 1) / N(0, s^2) of draws from the proposal: E_q[w^2] = s^2 / sqrt(2 s^2 - 1), so the Kish ESS of
    S draws is S sqrt(2 s^2 - 1) / s^2 (s = 2: 0.661 S; s = 1: S). Equal weights give S, one weight 1."""
    rng = np.random.default_rng(5)
    s_draws = 200_000
    rows = []
    for s in (1.0, 1.5, 2.0, 3.0):
        x = rng.normal(0, s, s_draws)
        rows.append(stats.norm.logpdf(x) - stats.norm.logpdf(x, 0, s))
    lw = torch.as_tensor(np.array(rows))
    lw = lw - torch.logsumexp(lw, dim=1, keepdim=True)
    want = [s_draws * math.sqrt(2 * s**2 - 1) / s**2 for s in (1.0, 1.5, 2.0, 3.0)]
    assert importance_ess(lw).numpy() == pytest.approx(want, rel=0.02)
    flat = torch.full((1, 50), -math.log(50), dtype=torch.float64)
    one = torch.tensor([[0.0] + [-math.inf] * 49], dtype=torch.float64)
    assert importance_ess(torch.cat([flat, one])).numpy() == pytest.approx([50.0, 1.0])


def test_validate_splits_coverage_by_flag() -> None:
    """split_by_flag on exact posteriors (truth and draws from the same N(m_i, 1)), except that the flagged
    targets' draws sit 10 sd away: unflagged coverage is nominal (within 3 binomial errors), flagged 0, and every
    flagged target is counted among the misses."""
    rng = np.random.default_rng(3)
    n, s = 2000, 400
    m = rng.uniform(-5, 5, (n, 1))
    truth = m + rng.standard_normal((n, 1))
    draws = m[:, None, :] + rng.standard_normal((n, s, 1))
    flagged = rng.random(n) < 0.3
    draws[flagged] += 10
    out = split_by_flag(truth, draws, ["x"], [False], flagged)
    assert out["count"] == flagged.sum() and out["fraction"] == pytest.approx(flagged.mean())
    assert out["missed_95_flagged"] == flagged.sum()
    unflagged = (~flagged).sum()
    assert out["missed_95"] - flagged.sum() == pytest.approx(
        0.05 * unflagged, abs=3 * math.sqrt(0.05 * 0.95 * unflagged)
    )
    for level, cov in out["coverage_unflagged"]["x"].items():
        p = float(level)
        assert abs(cov - p) < 3 * math.sqrt(p * (1 - p) / unflagged)
    assert all(v == 0 for v in out["coverage_flagged"]["x"].values())
    assert split_by_flag(truth, draws, ["x"], [False], np.zeros(n, dtype=bool))["coverage_flagged"] is None
