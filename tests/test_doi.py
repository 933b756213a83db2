"""Distributions of interest: quadrature rules, the points a LineDoI draws and its
baseline forms, the NoiseDoI's groups and moments, and the anchors that population DoIs
stream from every accepted form of data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conftest import tolerance
from doi import RULES, ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI, Rows, nodes_and_weights
from doi._noise import SOBOL_MAX_DIMS
from influence import input_influence

F64 = torch.float64


def _all_rows(n: int, samples: int, ids: Tensor | None = None) -> Rows:
    """Every sample of ``n`` anchors, anchor-major (as the engine orders them)."""
    first_id = 0 if ids is None else int(ids[0])
    if ids is not None:
        assert torch.equal(ids, torch.arange(first_id, first_id + n)), "a chunk's anchor ids are consecutive"
    return Rows.build(0, n * samples, samples, first_id, torch.device("cpu"))


class Square(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * x


def quadratic(d: int = 5, classes: int = 3, seed: int = 0) -> nn.Sequential:
    """``f(x) = W2 (W1 x + b1)² + b2``: each class score is a quadratic polynomial, so
    its gradient is linear along a line and every quadrature rule with ≥ 1 Gauss node
    (here: gauss-legendre) integrates it exactly: integrated gradients are complete."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 6), Square(), nn.Linear(6, classes)).double()


# ---------------------------------------------------------------- quadrature rules


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [2, 3, 7, 16, 33])
def test_nodes_and_weights_basic(rule: str, n: int) -> None:
    """``n`` nodes in [0, 1], positive weights summing to 1, read-only float64 arrays."""
    alpha, weight = nodes_and_weights(rule, n)
    assert alpha.shape == weight.shape == (n,)
    assert alpha.dtype == weight.dtype == np.float64
    assert np.all(alpha >= 0) and np.all(alpha <= 1)
    assert np.all(weight > 0)
    assert abs(weight.sum() - 1.0) < 1e-14
    assert np.all(np.diff(alpha) > 0)
    assert not alpha.flags.writeable and not weight.flags.writeable


def test_single_node_rules() -> None:
    """n = 1: gauss-legendre and midpoint put the node at ½, left at 0, right at 1."""
    expected = {"gauss-legendre": 0.5, "midpoint": 0.5, "riemann-left": 0.0, "riemann-right": 1.0}
    for rule, node in expected.items():
        alpha, weight = nodes_and_weights(rule, 1)
        assert alpha.tolist() == pytest.approx([node], abs=1e-15) and weight.tolist() == [1.0]


@pytest.mark.parametrize("n", range(1, 13))
def test_gauss_legendre_exact_to_degree_2n_minus_1(n: int) -> None:
    """``Σ w_k α_k^d = ∫₀¹ α^d dα = 1/(d+1)`` to 1e-13 for ``d ≤ 2n − 1``; for ``d = 2n``
    the error is the Gauss remainder on [0, 1], ``(n!)⁴ f⁽²ⁿ⁾ / ((2n+1) ((2n)!)³)`` with
    ``f⁽²ⁿ⁾ = (2n)!``, i.e. ``(n!)⁴ / ((2n+1) ((2n)!)²)``, nonzero: the degree bound is
    sharp (checked while the remainder is well above rounding, n ≤ 8)."""
    alpha, weight = nodes_and_weights("gauss-legendre", n)
    for d in range(2 * n):
        assert abs(float(weight @ alpha**d) - 1.0 / (d + 1)) < 1e-13, d
    if n <= 8:
        error = 1.0 / (2 * n + 1) - float(weight @ alpha ** (2 * n))
        remainder = math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 2)
        assert error == pytest.approx(remainder, rel=1e-4)


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
@given(a=st.floats(-10, 10), b=st.floats(-10, 10), n=st.integers(2, 50))
@settings(max_examples=25, deadline=None)
def test_midpoint_and_trapezoid_exact_for_linear(rule: str, a: float, b: float, n: int) -> None:
    """``Σ w_k (a + b α_k) = a + b/2``."""
    alpha, weight = nodes_and_weights(rule, n)
    assert float(weight @ (a + b * alpha)) == pytest.approx(a + b / 2, abs=1e-12)


def test_riemann_sums_are_not_exact_for_linear() -> None:
    """Left/right sums of ``α``: ``(n−1)/(2n)`` and ``(n+1)/(2n)``, off by ``∓1/(2n)``."""
    n = 10
    left, wl = nodes_and_weights("riemann-left", n)
    right, wr = nodes_and_weights("riemann-right", n)
    assert float(wl @ left) == pytest.approx(0.5 - 1 / (2 * n), abs=1e-15)
    assert float(wr @ right) == pytest.approx(0.5 + 1 / (2 * n), abs=1e-15)


@pytest.mark.parametrize("rule, order", [("riemann-left", 1), ("riemann-right", 1), ("midpoint", 2), ("trapezoid", 2)])
def test_error_orders(rule: str, order: int) -> None:
    """On ``∫₀¹ eᵅ dα = e − 1`` the error of a rule of order ``p`` falls by ``2^p``
    when ``n`` doubles; leading terms: left ``−(e−1)/(2n)``, right ``+(e−1)/(2n)``,
    midpoint ``−(e−1)/(24n²)``, trapezoid ``+(e−1)/(12 (n−1)²)``."""
    exact = math.e - 1

    def error(n: int) -> float:
        alpha, weight = nodes_and_weights(rule, n)
        return float(weight @ np.exp(alpha)) - exact

    n = 64
    assert error(n) / error(2 * n) == pytest.approx(2**order, rel=0.02)
    h = 1 / (n - 1) if rule == "trapezoid" else 1 / n
    leading = {"riemann-left": -exact * h / 2, "riemann-right": exact * h / 2, "midpoint": -exact * h * h / 24, "trapezoid": exact * h * h / 12}
    assert error(n) == pytest.approx(leading[rule], rel=0.02)


def test_gauss_legendre_is_spectrally_accurate() -> None:
    """8 Gauss nodes integrate ``eᵅ`` to ~1e-15 (the remainder is ``e^ξ (8!)⁴/(17 (16!)³)``)."""
    alpha, weight = nodes_and_weights("gauss-legendre", 8)
    assert abs(float(weight @ np.exp(alpha)) - (math.e - 1)) < 1e-14


def test_trapezoid_rejects_fewer_than_two_nodes() -> None:
    with pytest.raises(ValueError, match="trapezoid.*>= 2"):
        nodes_and_weights("trapezoid", 1)
    with pytest.raises(ValueError, match="steps must be >= 2 for rule 'trapezoid'"):
        LineDoI(steps=1, rule="trapezoid")
    with pytest.raises(ValueError, match="rule must be one of"):
        nodes_and_weights("simpson", 4)
    with pytest.raises(ValueError, match="rule must be one of"):
        LineDoI(rule="simpson")  # type: ignore[arg-type]


# ---------------------------------------------------------------- LineDoI points and baselines


@pytest.mark.parametrize("rule", RULES)
def test_line_draws_points_on_the_segment(rng: torch.Generator, rule: str) -> None:
    """Row ``r`` (anchor ``i``, sample ``k``) is ``b_i + α_k (x_i − b_i)`` with weight ``w_k``."""
    steps = 5
    x = torch.randn(3, 2, 4, generator=rng, dtype=F64)
    b = torch.randn(3, 2, 4, generator=rng, dtype=F64)
    doi = LineDoI(baseline=b, steps=steps, rule=rule)
    rows = _all_rows(3, steps)
    ref = doi.reference(x, torch.arange(3))
    points, weights = doi.draw(x, ref, rows, seed=0)
    alpha, weight = nodes_and_weights(rule, steps)
    assert points.shape == (15, 2, 4) and weights.shape == (15,)
    assert points.dtype == weights.dtype == F64
    for r in range(15):
        i, k = int(rows.anchor[r]), int(rows.index[r])
        torch.testing.assert_close(points[r], b[i] + alpha[k] * (x[i] - b[i]), **tolerance(F64))
        assert float(weights[r]) == weight[k]


def test_line_draws_only_the_rows_asked_for(rng: torch.Generator) -> None:
    """A subset of rows (as a batch that splits anchors) gives exactly those points."""
    x = torch.randn(4, 3, generator=rng, dtype=F64)
    doi = LineDoI(baseline=0.25, steps=6)
    ref = doi.reference(x, torch.arange(4))
    full, wfull = doi.draw(x, ref, _all_rows(4, 6), 0)
    part, wpart = doi.draw(x, ref, Rows.build(5, 17, 6, 0, torch.device("cpu")), 0)
    assert torch.equal(part, full[5:17]) and torch.equal(wpart, wfull[5:17])


def test_baseline_scalar(rng: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 4, generator=rng, dtype=F64)
    ref = LineDoI(baseline=-0.5).reference(x, torch.arange(2))
    assert torch.equal(ref, torch.full_like(x, -0.5))


def test_baseline_per_channel_broadcast(rng: torch.Generator) -> None:
    """A ``(3, 1, 1)`` tensor (e.g. a per-channel mean) is broadcast to every point."""
    x = torch.randn(2, 3, 4, 4, generator=rng, dtype=F64)
    mean = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float32).view(3, 1, 1)
    ref = LineDoI(baseline=mean).reference(x, torch.arange(2))
    assert ref.shape == x.shape and ref.dtype == F64
    for c in range(3):
        assert torch.all(ref[:, c] == mean[c].double())


def test_baseline_one_point_broadcast(rng: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 4, generator=rng, dtype=F64)
    point = torch.randn(3, 4, 4, generator=rng, dtype=F64)
    ref = LineDoI(baseline=point).reference(x, torch.arange(2))
    assert torch.equal(ref, point.expand_as(x))


def test_baseline_per_point_rows_indexed_by_anchor_id(rng: torch.Generator) -> None:
    """``(N, *shape)`` baselines: the anchor with global id ``j`` gets row ``j``, also in a
    chunk that holds a later part of the stream (ids ``[3, 1]``)."""
    x = torch.randn(2, 3, 4, 4, generator=rng, dtype=F64)
    rows = torch.randn(5, 3, 4, 4, generator=rng, dtype=F64)
    doi = LineDoI(baseline=rows)
    ids = torch.tensor([3, 1])
    assert torch.equal(doi.reference(x, ids), rows[ids])
    with pytest.raises(ValueError, match="baseline has 5 rows but point 5 needs one"):
        doi.reference(x, torch.tensor([4, 5]))


def test_baseline_callable(rng: torch.Generator) -> None:
    x = torch.randn(4, 6, generator=rng, dtype=F64)
    ref = LineDoI(baseline=lambda a: 0.5 * a.flip(0)).reference(x, torch.arange(4))
    torch.testing.assert_close(ref, 0.5 * x.flip(0), rtol=0, atol=0)


def test_baseline_of_wrong_shape_is_refused(rng: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 4, generator=rng, dtype=F64)
    with pytest.raises(ValueError, match=r"does not fit inputs of shape \(3, 4, 4\)"):
        LineDoI(baseline=torch.zeros(4, 1, 1)).reference(x, torch.arange(2))
    with pytest.raises(ValueError, match=r"does not fit"):
        LineDoI(baseline=torch.zeros(2, 3, 5, 5)).reference(x, torch.arange(2))
    with pytest.raises(TypeError, match="baseline must be"):
        LineDoI(baseline="black")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returning a tensor"):
        LineDoI(baseline=lambda a: 0.0).reference(x, torch.arange(2))


def test_per_point_baselines_end_to_end_completeness(rng: torch.Generator) -> None:
    """Integrated gradients with one baseline row per point, in chunks of one anchor
    (batch_size 4, steps 8): ``Σ_u IG_i[u] = f_c(x_i) − f_c(b_i)`` for each ``i`` with its
    own ``b_i`` (exact: the quadratic model's gradient is linear on the line)."""
    model = quadratic()
    x = torch.randn(5, 5, generator=rng, dtype=F64)
    b = torch.randn(5, 5, generator=rng, dtype=F64)
    res = input_influence(model, 1, LineDoI(baseline=b, steps=8), x, batch_size=4, multiply_activation=True)
    with torch.no_grad():
        expected = model(x)[:, 1] - model(b)[:, 1]
    torch.testing.assert_close(res.values.sum(1), expected, **tolerance(F64))


# ---------------------------------------------------------------- NoiseDoI


@pytest.mark.parametrize("samples", [2, 3, 4, 6, 9, 10, 12, 14, 15, 16, 21, 25, 32, 35, 49, 64, 100])
def test_noise_default_replicates(samples: int) -> None:
    """``G`` = the largest divisor of ``S`` in 2..8."""
    expected = max(g for g in range(2, 9) if samples % g == 0)
    assert NoiseDoI(samples=samples).groups == expected


@pytest.mark.parametrize("samples", [1, 5, 7, 11, 13])
def test_noise_default_replicates_without_small_divisor(samples: int) -> None:
    """No divisor in 2..8: ``G = S`` (a prime below 8 is its own largest divisor there;
    above, every point is its own replicate)."""
    assert NoiseDoI(samples=samples).groups == samples


def test_noise_replicates_and_sampler_options() -> None:
    assert NoiseDoI(samples=12, replicates=3).groups == 3
    assert NoiseDoI(samples=12, sampler="random").groups == 12
    with pytest.raises(ValueError, match=r"replicates \(5\) must divide samples \(12\)"):
        NoiseDoI(samples=12, replicates=5)
    with pytest.raises(ValueError, match="replicates applies to sampler='sobol' only"):
        NoiseDoI(samples=12, sampler="random", replicates=3)
    with pytest.raises(ValueError, match="sigma must be"):
        NoiseDoI(sigma=0.0)


@pytest.mark.parametrize("sampler, samples, replicates", [("sobol", 24, None), ("sobol", 24, 3), ("random", 10, None)])
def test_noise_weights_per_group_sum_to_one(rng: torch.Generator, sampler: str, samples: int, replicates: int | None) -> None:
    """Samples ``k`` with ``⌊k/(S/G)⌋ = g`` form group ``g``; each group's weights sum to 1."""
    doi = NoiseDoI(sigma=0.3, samples=samples, sampler=sampler, replicates=replicates)  # type: ignore[arg-type]
    x = torch.randn(2, 4, generator=rng, dtype=F64)
    points, weights = doi.draw(x, None, _all_rows(2, samples), seed=5)
    assert points.shape == (2 * samples, 4)
    per_group = weights.view(2, doi.groups, samples // doi.groups).sum(-1)
    torch.testing.assert_close(per_group, torch.ones_like(per_group), **tolerance(F64))


@pytest.mark.parametrize("sampler", ["sobol", "random"])
def test_noise_points_have_mean_x_and_sd_sigma(rng: torch.Generator, sampler: str) -> None:
    """``(x_ik − x_i)/σ`` over all rows and coordinates: mean 0 and sd 1 within 5
    standard errors (``1/√n`` and ``1/√(2n)`` for ``n`` normals)."""
    sigma, samples = 0.7, 256
    x = torch.randn(2, 32, generator=rng, dtype=F64)
    doi = NoiseDoI(sigma=sigma, samples=samples, sampler=sampler)  # type: ignore[arg-type]
    rows = _all_rows(2, samples)
    points, _ = doi.draw(x, None, rows, seed=11)
    eps = (points - x[rows.anchor]) / sigma
    n = eps.numel()
    assert abs(float(eps.mean())) < 5 / math.sqrt(n)
    assert abs(float(eps.std()) - 1.0) < 5 / math.sqrt(2 * n)
    per_anchor = eps.view(2, samples, 32).mean(1)  # each anchor's cloud is centred on it
    assert float(per_anchor.abs().max()) < 5 / math.sqrt(samples)


def test_noise_draws_do_not_depend_on_batching(rng: torch.Generator) -> None:
    """Draws are keyed by (seed, anchor id, sample index): the rows of a later chunk
    equal the same rows drawn with the whole stream."""
    doi = NoiseDoI(sigma=0.2, samples=8)
    x = torch.randn(3, 5, generator=rng, dtype=F64)
    full, _ = doi.draw(x, None, _all_rows(3, 8), seed=3)
    part, _ = doi.draw(x[2:], None, _all_rows(1, 8, ids=torch.tensor([2])), seed=3)
    assert torch.equal(part, full[16:])
    other, _ = doi.draw(x, None, _all_rows(3, 8), seed=4)
    assert not torch.equal(other, full)


def test_sobol_refuses_too_many_dimensions() -> None:
    """More than ``SOBOL_MAX_DIMS`` coordinates per point: a ValueError naming the
    sampler and the way out."""
    doi = NoiseDoI(samples=4)
    x = torch.zeros(1, SOBOL_MAX_DIMS + 1)
    with pytest.raises(ValueError, match=rf"sampler='sobol' supports up to {SOBOL_MAX_DIMS} dimensions.*use sampler='random'"):
        doi.draw(x, None, _all_rows(1, 4), seed=0)
    points, _ = NoiseDoI(samples=4, sampler="random").draw(x, None, _all_rows(1, 4), seed=0)
    assert points.shape == (4, SOBOL_MAX_DIMS + 1)


def test_sobol_refusal_through_a_query() -> None:
    torch.manual_seed(0)
    model = nn.Linear(SOBOL_MAX_DIMS + 1, 2)
    with pytest.raises(ValueError, match="sampler='sobol'"):
        input_influence(model, 0, NoiseDoI(samples=2), torch.zeros(1, SOBOL_MAX_DIMS + 1), seed=0)


# ---------------------------------------------------------------- population DoIs: anchors


def _labelled(rng: torch.Generator, n: int = 10) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, 5, generator=rng, dtype=F64)
    y = torch.tensor([0, 2, 1, 2, 2, 0, 1, 2, 0, 2])[:n]
    return x, y


def _stream(doi: ClassDoI | DatasetDoI, batch_size: int) -> Tensor:
    """The concatenated anchors; batches never exceed ``batch_size`` unless the data is a
    DataLoader (which keeps its own batch size)."""
    parts = list(doi.anchors(batch_size))
    if not isinstance(doi.data, DataLoader):
        assert all(p.shape[0] <= batch_size for p in parts)
    return torch.cat(parts)


@pytest.mark.parametrize("form", ["tensors", "list", "dataset", "loader"])
def test_class_doi_filters_by_label(rng: torch.Generator, form: str) -> None:
    """The anchors stream equals ``x[y == label]`` in order, from ``(x, y)``, a
    TensorDataset, or a DataLoader whose batch size (4) does not divide N (10)."""
    x, y = _labelled(rng)
    data = {
        "tensors": (x, y),
        "list": [x, y],
        "dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False),
    }[form]
    for label in (0, 1, 2):
        assert torch.equal(_stream(ClassDoI(data, label), 3), x[y == label])


def test_class_doi_refusals(rng: torch.Generator) -> None:
    x, y = _labelled(rng)
    with pytest.raises(ValueError, match=r"label 7 does not occur in the data \(labels present: \[0, 1, 2\]\)"):
        ClassDoI((x, y), 7)
    with pytest.raises(ValueError, match="label 7 does not occur"):
        list(ClassDoI(TensorDataset(x, y), 7).anchors(4))
    with pytest.raises(ValueError, match="no labels"):
        ClassDoI(x, 0)
    with pytest.raises(ValueError, match="no labels"):
        list(ClassDoI(TensorDataset(x), 0).anchors(4))
    with pytest.raises(TypeError, match="label must be an int"):
        ClassDoI((x, y), 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="each must be a pointwise DoI"):
        ClassDoI((x, y), 1, each=ClassDoI((x, y), 1))  # type: ignore[arg-type]


class BareTensors(Dataset):
    """A map-style Dataset whose items are bare tensors (no labels)."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


@pytest.mark.parametrize("form", ["tensor", "pair", "bare", "loader"])
def test_dataset_doi_streams_every_point(rng: torch.Generator, form: str) -> None:
    x, y = _labelled(rng)
    data = {"tensor": x, "pair": (x, y), "bare": BareTensors(x), "loader": DataLoader(BareTensors(x), batch_size=3)}[form]
    doi = DatasetDoI(data)
    assert isinstance(doi.each, PointDoI)
    assert torch.equal(_stream(doi, 4), x)


@pytest.mark.parametrize("form", ["loader", "bare"])
def test_population_influence_is_the_mean_of_pointwise(rng: torch.Generator, form: str) -> None:
    """``χ(ClassDoI(data, c, each=D)) = (1/N_c) Σ_{y_i = c} χ_D(x_i)`` and likewise for
    DatasetDoI over a Dataset of bare tensors; ``anchors`` counts the members."""
    model = quadratic()
    x, y = _labelled(rng)
    each = LineDoI(baseline=0.1, steps=3)
    if form == "loader":
        doi: ClassDoI | DatasetDoI = ClassDoI(DataLoader(TensorDataset(x, y), batch_size=4), 2, each=each)
        members = x[y == 2]
    else:
        doi = DatasetDoI(BareTensors(x), each=each)
        members = x
    pooled = input_influence(model, 0, doi, batch_size=5)
    pointwise = input_influence(model, 0, each, members, batch_size=5)
    assert pooled.pooled and pooled.anchors == members.shape[0] and pooled.values.shape == (5,)
    torch.testing.assert_close(pooled.values, pointwise.values.mean(0), **tolerance(F64))
    n = members.shape[0]
    torch.testing.assert_close(pooled.stderr, pointwise.values.std(0) / math.sqrt(n), **tolerance(F64))


# ---------------------------------------------------------------- expected gradients


class RandomRows:
    """A baseline callable drawing, for each anchor, a random row of a background set
    (expected gradients); it records what it drew."""

    def __init__(self, background: Tensor, seed: int) -> None:
        self.background = background
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: list[Tensor] = []

    def __call__(self, anchors: Tensor) -> Tensor:
        idx = torch.randint(0, self.background.shape[0], (anchors.shape[0],), generator=self.generator)
        rows = self.background[idx].to(anchors)
        self.drawn.append(rows)
        return rows


def test_expected_gradients_completeness(rng: torch.Generator) -> None:
    """``DatasetDoI(data, each=LineDoI(baseline=random rows))`` with
    ``multiply_activation``: each anchor's attribution sums to ``f_c(x_i) − f_c(b_i)``
    for the baseline ``b_i`` it drew, so ``Σ_u χ[u] = mean_i f_c(x_i) − mean_i f_c(b_i)``
    exactly; in expectation over the draws ``Σ_u χ[u] = E f_c(x) − E_{b~bg} f_c(b)``,
    checked within 5 standard errors ``sd_bg(f_c)/√N``."""
    model = quadratic()
    x = torch.randn(64, 5, generator=rng, dtype=F64)
    background = torch.randn(40, 5, generator=rng, dtype=F64) * 0.5 + 0.3
    baseline = RandomRows(background, seed=9)
    res = input_influence(model, 2, DatasetDoI(x, each=LineDoI(baseline=baseline, steps=2)), batch_size=32, multiply_activation=True)
    drawn = torch.cat(baseline.drawn)
    assert drawn.shape == x.shape
    with torch.no_grad():
        fx, fb, fbg = model(x)[:, 2], model(drawn)[:, 2], model(background)[:, 2]
    total = res.values.sum()
    torch.testing.assert_close(total, fx.mean() - fb.mean(), **tolerance(F64))
    stderr = float(fbg.std()) / math.sqrt(x.shape[0])
    assert abs(float(total) - float(fx.mean() - fbg.mean())) < 5 * stderr


def test_take_reads_the_stream_out_of_order(rng: torch.Generator) -> None:
    """``take(a, b)`` gives points ``a..b`` of the anchors' stream where the data can be
    indexed (a tensor, a pair, a map-style Dataset), and ``None`` where it can only be
    read in order (a DataLoader; a ClassDoI whose labels are inside a Dataset)."""
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(13, 2, 3, generator=rng)
    y = torch.arange(13) % 3
    stream = lambda doi: torch.cat(list(doi.anchors(4)))  # noqa: E731
    for data in (x, (x, y), TensorDataset(x, y)):
        doi = DatasetDoI(data)
        assert torch.equal(doi.take(3, 11), stream(doi)[3:11])
    assert torch.equal(ClassDoI((x, y), 1).take(1, 4), stream(ClassDoI((x, y), 1))[1:4])
    assert DatasetDoI(DataLoader(TensorDataset(x), batch_size=4)).take(0, 2) is None
    assert ClassDoI(TensorDataset(x, y), 1).take(0, 2) is None
