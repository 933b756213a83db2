"""The Monte Carlo machinery: honest standard errors, reproducible seeds, quasi-random
variance reduction and the counter-based random numbers behind them.

Every statistical check runs on fixed seeds, so it is deterministic; its tolerance is
still derived from the sampling distribution (several standard deviations), so that it
would pass for almost any seed and is not tuned to these ones.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch import Tensor, nn

from conftest import tolerance
from doi import DatasetDoI, NoiseDoI, PointDoI, Rows
from doi._random import BLOCK, key, mix64
from influence import input_influence
from models import mlp

F64 = torch.float64


class Quadratic(nn.Module):
    """``f(x) = Σ_j a_j x_j²`` as a ``(B, 1)`` output; its gradient is ``2 a ⊙ x``."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (self.a * x * x).sum(1, keepdim=True)


A = torch.tensor([1.0, -0.5, 2.0, 0.25, -3.0, 0.7, 1.5, -1.2], dtype=F64)


def _ratio_tolerance(dof: float, cells: int, k: float = 5.0) -> float:
    """``k`` standard deviations of the mean over ``cells`` independent ratios
    ``s²/σ²`` with ``dof`` degrees of freedom (each has variance ``2/dof``)."""
    return k * math.sqrt(2.0 / dof / cells)


# --- 1. the standard error is right ----------------------------------------------------


def test_noise_stderr_matches_spread_of_estimates_and_closed_form(rng):
    """``f(x) = Σ a_j x_j²``, ``NoiseDoI(σ, S, "random")``.

    Sample ``k`` is ``x + σ ε_k`` with ``ε_k ~ N(0, I)``, so its gradient is
    ``2 a_j (x_j + σ ε_kj)``: standard deviation ``2|a_j|σ`` per coordinate. The estimate
    is the mean of ``S`` of them, ``2 a_j (x_j + σ ε̄_j)``, unbiased for ``2 a_j x_j`` with
    standard deviation ``2|a_j|σ/√S``; the reported stderr is the sample sd over
    ``√S`` (``E[stderr²] = (2 a_j σ)²/S``).

    Over 200 seeds (200 independent estimates of each of ``N·D = 32`` coordinates):
    (a) the empirical sd of the estimates matches the reported stderr within 15%;
    (b) the reported stderr matches the closed form ``2|a_j|σ/√S`` (its square has mean
    ``(2a_jσ)²/S``; over 6400 values the mean ratio is within a few 0.5%);
    (c) the estimates are centred on ``2 a x`` within 5 standard errors of their mean.
    Ratios are pooled over coordinates (normalised by the closed form) to be tight.
    """
    sigma, S, seeds = 0.3, 16, 200
    model = Quadratic(A)
    x = torch.randn(4, A.numel(), generator=rng, dtype=F64)
    doi = NoiseDoI(sigma, samples=S, sampler="random")
    runs = [input_influence(model, 0, doi, x, seed=s) for s in range(seeds)]
    values = torch.stack([r.values for r in runs])  # (200, N, D)
    stderr = torch.stack([r.stderr for r in runs])
    assert all(r.samples == x.shape[0] * S and r.stderr.dtype == F64 for r in runs)

    closed = (2 * A.abs() * sigma / math.sqrt(S)).expand_as(x)  # (N, D)
    empirical_var = values.var(0)  # unbiased, 199 dof per cell
    reported_var = (stderr**2).mean(0)

    # (a) empirical sd vs reported stderr (both normalised by the closed form)
    ratio = math.sqrt(float((empirical_var / closed**2).mean() / (reported_var / closed**2).mean()))
    assert abs(ratio - 1) < 0.15, ratio
    # (b) reported stderr vs closed form; each stderr²/closed² is χ²_{S-1}/(S-1)
    mean_ratio = float((stderr**2 / closed**2).mean())
    assert abs(mean_ratio - 1) < _ratio_tolerance(S - 1, stderr.numel()), mean_ratio
    assert abs(math.sqrt(float((empirical_var / closed**2).mean())) - 1) < 0.15
    # (c) unbiased
    z = (values.mean(0) - 2 * A * x) / (closed / math.sqrt(seeds))
    assert z.abs().max() < 5, z


def test_population_stderr_matches_spread_over_datasets_and_closed_form():
    """``DatasetDoI(X, each=PointDoI())`` over ``N`` points ``x_i ~ N(μ, diag τ²)``, same
    quadratic model: the influence is ``(1/N) Σ_i 2 a_j x_ij = 2 a_j x̄_j``, whose sd is
    ``2|a_j|τ_j/√N``; the reported stderr is the sd of the per-point gradients over
    ``√N``. The 200 estimates come from 200 independent data sets (generator seeds
    0..199). Checks as in the pointwise test: empirical sd vs reported stderr within
    15%, reported stderr vs the closed form ``2|a_j|τ_j/√N`` within 5 sd of its mean
    ratio, estimates centred on ``2 a μ``.
    """
    N, seeds = 40, 200
    model = Quadratic(A)
    mu = torch.linspace(-1.0, 1.0, A.numel(), dtype=F64)
    tau = torch.linspace(0.2, 1.5, A.numel(), dtype=F64)
    values, stderr = [], []
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        data = mu + tau * torch.randn(N, A.numel(), generator=g, dtype=F64)
        r = input_influence(model, 0, DatasetDoI(data, each=PointDoI()), batch_size=16)
        assert r.pooled and r.anchors == N and r.values.shape == A.shape
        values.append(r.values)
        stderr.append(r.stderr)
    v, se = torch.stack(values), torch.stack(stderr)
    closed = 2 * A.abs() * tau / math.sqrt(N)

    empirical_var = v.var(0)
    reported_var = (se**2).mean(0)
    ratio = math.sqrt(float((empirical_var / closed**2).mean() / (reported_var / closed**2).mean()))
    assert abs(ratio - 1) < 0.15, ratio
    mean_ratio = float((se**2 / closed**2).mean())
    assert abs(mean_ratio - 1) < _ratio_tolerance(N - 1, se.numel()), mean_ratio
    z = (v.mean(0) - 2 * A * mu) / (closed / math.sqrt(seeds))
    assert z.abs().max() < 5, z


def test_single_point_population_reports_its_own_monte_carlo_error():
    """With one anchor there is no spread across anchors: the pooled stderr is that
    anchor's own Monte Carlo stderr, identical to the pointwise result's."""
    model = Quadratic(A)
    x = torch.linspace(-1, 1, A.numel(), dtype=F64)[None]
    doi = NoiseDoI(0.2, samples=32, sampler="random")
    point = input_influence(model, 0, doi, x, seed=3)
    pooled = input_influence(model, 0, DatasetDoI(x, each=doi), seed=3)
    torch.testing.assert_close(pooled.values, point.values[0], **tolerance(F64))
    torch.testing.assert_close(pooled.stderr, point.stderr[0], **tolerance(F64))
    assert bool((pooled.stderr > 0).all())


# --- 2. seeds reproduce results --------------------------------------------------------


@pytest.fixture
def net() -> nn.Module:
    return mlp(in_features=4, hidden=8, classes=3, seed=0).double()


@pytest.fixture
def points(rng) -> Tensor:
    return torch.randn(5, 4, generator=rng, dtype=F64)


def _query(net: nn.Module, points: Tensor, sampler: str, pooled: bool, seed: int | None):
    doi = NoiseDoI(0.4, samples=12, sampler=sampler)
    if pooled:
        return input_influence(net, 1, DatasetDoI(points, each=doi), seed=seed, batch_size=16)
    return input_influence(net, 1, doi, points, seed=seed, batch_size=16)


@pytest.mark.parametrize("pooled", [False, True], ids=["pointwise", "pooled"])
@pytest.mark.parametrize("sampler", ["random", "sobol"])
def test_fixed_seed_reproduces_bit_for_bit(net, points, sampler, pooled):
    """Same seed: ``torch.equal`` values and stderrs (CPU); another seed: different
    values; ``seed=None`` draws a seed, records it in ``query["seed"]``, and that seed
    given back reproduces the result exactly."""
    a = _query(net, points, sampler, pooled, seed=11)
    b = _query(net, points, sampler, pooled, seed=11)
    assert torch.equal(a.values, b.values) and torch.equal(a.stderr, b.stderr)
    assert a.query["seed"] == 11

    c = _query(net, points, sampler, pooled, seed=12)
    assert not torch.equal(a.values, c.values)
    assert not torch.equal(a.stderr, c.stderr)

    d = _query(net, points, sampler, pooled, seed=None)
    seed = d.query["seed"]
    assert isinstance(seed, int) and not isinstance(seed, bool)
    e = _query(net, points, sampler, pooled, seed=seed)
    assert torch.equal(d.values, e.values) and torch.equal(d.stderr, e.stderr)


def test_unseeded_queries_differ(net, points):
    """Two ``seed=None`` queries draw different seeds (so different noise)."""
    a = _query(net, points, "random", False, seed=None)
    b = _query(net, points, "random", False, seed=None)
    assert a.query["seed"] != b.query["seed"]
    assert not torch.equal(a.values, b.values)


def test_seed_does_not_touch_global_rng(net, points):
    """A seeded query neither reads nor advances torch's global generator."""
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    _query(net, points, "sobol", False, seed=5)
    assert torch.equal(torch.rand(3), expected)


# --- 3. Sobol beats random draws, without bias -----------------------------------------


def _smooth_net() -> nn.Module:
    return mlp(in_features=3, hidden=16, classes=2, act=nn.Softplus, seed=0).double()


def test_sobol_stderr_smaller_than_random():
    """On a smooth (softplus) network of 3 inputs, ``S = 256`` samples: randomised
    Sobol (8 shifted replicates of 32 points) reports a smaller stderr than plain
    random draws, on average over anchors and coordinates and for every one of them."""
    model = _smooth_net()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    for sigma in (0.3, 1.0):
        rnd = input_influence(model, 0, NoiseDoI(sigma, 256, "random"), x, seed=0)
        sob = input_influence(model, 0, NoiseDoI(sigma, 256, "sobol"), x, seed=0)
        assert sob.stderr.mean() < 0.75 * rnd.stderr.mean(), (sob.stderr.mean(), rnd.stderr.mean())
        assert bool((sob.stderr < rnd.stderr).all())


def test_sobol_estimate_is_unbiased_and_its_stderr_honest():
    """Each Cranley–Patterson replicate is an unbiased estimate, so the mean of the
    Sobol estimates over 64 seeds agrees with a 16384-sample random estimate: the
    z-score ``(mean_sobol − random) / √(var_sobol/64 + stderr_random²)`` is below 5
    for all 12 coordinates. The reported Sobol stderr is honest: its mean square over
    seeds agrees with the empirical variance of the estimates across seeds (pooled
    over coordinates; each empirical variance has 63 dof, so 5 sd of the pooled ratio
    is about 0.35 if the 12 coordinates were fully correlated; we allow 0.3 since they
    are not)."""
    model = _smooth_net()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    doi, seeds = NoiseDoI(0.5, 256, "sobol"), 64
    runs = [input_influence(model, 0, doi, x, seed=s) for s in range(seeds)]
    values = torch.stack([r.values for r in runs])
    reported_var = torch.stack([r.stderr**2 for r in runs]).mean(0)
    reference = input_influence(model, 0, NoiseDoI(0.5, 2**14, "random"), x, seed=10**6, batch_size=4096)

    z = (values.mean(0) - reference.values) / torch.sqrt(values.var(0) / seeds + reference.stderr**2)
    assert z.abs().max() < 5, z
    honesty = float(reported_var.sum() / values.var(0).sum())
    assert abs(honesty - 1) < 0.3, honesty


# --- 4. the keyed random numbers ---------------------------------------------------------

_U64 = (1 << 64) - 1


def _splitmix64_reference(z: int) -> int:
    """Pure-Python SplitMix64 output for state ``z`` (Steele, Lea & Flood 2014):
    ``z += γ``; two xor-shift-multiply rounds; a final xor-shift. Unsigned 64-bit."""
    z = (z + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


EDGE = [0, 1, 2, 2**32, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 123456789012345678]


def test_mix64_matches_pure_python_splitmix64():
    """``mix64`` on 64-bit edge values equals an independent reference."""
    assert [mix64(v) for v in EDGE] == [_splitmix64_reference(v) for v in EDGE]


def test_mix64_reproduces_published_splitmix64_stream():
    """SplitMix64 seeded with 0 (the reference C code) starts
    ``e220a8397b1dcdaf, 6e789e6aa1b965f4, 06c45d188009454f, f88bb8a8724c81ec``;
    output ``k`` is ``mix64(k·γ)``."""
    gamma = 0x9E3779B97F4A7C15
    got = [mix64((k * gamma) & _U64) for k in range(4)]
    assert got == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]


def test_keys_are_valid_seeds_and_distinct():
    """``key`` gives 63-bit values (valid generator seeds) that differ when any part
    differs, including parts that are permutations of each other."""
    parts = [(s, t, a, b) for s in (0, 1, 2**62) for t in (1, 2) for a in range(20) for b in range(20)]
    keys = [key(*p) for p in parts]
    assert all(0 <= k < 2**63 for k in keys)
    assert len(set(keys)) == len(keys)
    assert key(1, 2, 3) != key(3, 2, 1)


def test_normals_pass_kolmogorov_smirnov():
    """The noise a ``NoiseDoI`` adds, ``(point − anchor)/σ``, vs N(0, 1) for both samplers
    (Sobol marginals are exactly uniform after a random shift): fixed seed, so the
    p-value is a fixed number; it must not be tiny (``> 1e-3``). Group weights sum to 1."""
    anchors = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for sampler in ("random", "sobol"):
        doi = NoiseDoI(0.25, samples=128, sampler=sampler)
        rows = _rows(anchors.shape[0], doi.samples, 0, anchors.shape[0] * doi.samples)
        pts, w = doi.draw(anchors, None, rows, seed=3)
        eps = ((pts - anchors[rows.anchor]) / 0.25).flatten()
        assert scipy.stats.kstest(eps.numpy(), "norm").pvalue > 1e-3, sampler
        torch.testing.assert_close(w.sum(), torch.tensor(float(anchors.shape[0] * doi.groups), dtype=F64))


def test_noise_of_different_anchors_and_blocks_is_uncorrelated():
    """Correlations between the noise of two anchors, and between the first and second
    block of one anchor's samples, are within 5/√n of 0."""
    anchors = torch.zeros(2, 64, dtype=F64)
    doi = NoiseDoI(1.0, samples=2 * BLOCK, sampler="random")
    pts, _ = doi.draw(anchors, None, _rows(2, doi.samples, 0, 2 * doi.samples), seed=5)
    e = pts.view(2, 2, BLOCK, 64)
    for a, b in ((e[0], e[1]), (e[0, 0], e[0, 1])):
        corr = float((a * b).mean() / (a.std() * b.std()))
        assert abs(corr) < 5 / math.sqrt(a.numel()), corr


def _rows(n: int, samples: int, start: int, stop: int, offset: int = 0) -> Rows:
    return Rows.build(start, stop, samples, offset, torch.device("cpu"))


@pytest.mark.parametrize("sampler", ["random", "sobol"])
def test_draws_do_not_depend_on_how_rows_are_batched(sampler):
    """Drawing all rows at once or in pieces of 1, 5 or 7 rows gives bitwise the same
    points: each draw is a function of (seed, anchor id, sample index, coordinate)."""
    anchors = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    doi = NoiseDoI(0.5, samples=16, sampler=sampler)
    total = anchors.shape[0] * doi.samples
    whole, _ = doi.draw(anchors, None, _rows(3, 16, 0, total, offset=10), seed=42)
    for size in (1, 5, 7):
        parts = [doi.draw(anchors, None, _rows(3, 16, i, min(i + size, total), offset=10), seed=42)[0] for i in range(0, total, size)]
        assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("pooled", [False, True], ids=["pointwise", "pooled"])
@pytest.mark.parametrize("sampler", ["random", "sobol"])
def test_results_do_not_depend_on_batch_size(net, points, sampler, pooled):
    """The same NoiseDoI query with ``batch_size`` 1, 5 and 64 gives the same values and
    stderrs (float64: equal up to the order of summation)."""
    doi = NoiseDoI(0.4, samples=12, sampler=sampler)
    target = DatasetDoI(points, each=doi) if pooled else doi
    inputs = None if pooled else points
    results = [input_influence(net, 2, target, inputs, seed=8, batch_size=b) for b in (1, 5, 64)]
    for r in results[1:]:
        torch.testing.assert_close(r.values, results[0].values, **tolerance(F64))
        torch.testing.assert_close(r.stderr, results[0].stderr, **tolerance(F64))
