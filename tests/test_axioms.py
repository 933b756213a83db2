"""The attribution axioms, checked on networks whose influence is known in closed form
and on random networks (``hypothesis``: random widths, depths, seeds, inputs, baselines).

Notation: ``f = g ∘ h`` is the model split at a slice, ``q`` a quantity of interest,
``χ(x) = E_{z ~ D(x)} ∇(q∘g)(z)`` the influence of ``q`` under a distribution of interest
``D`` and, with ``multiply_activation``, ``A(x) = χ(x) ⊙ (h(x) − h(b))`` the attribution
(integrated gradients for a line DoI).

1. Linear agreement   — for ``f(x) = Wx + c`` every DoI gives ``χ = W[c]``; inside a
                         linear network ``χ`` is the product of the downstream weights.
2. Completeness       — ``Σ_i A_i(x) = q(g(h(x))) − q(g(h(b)))`` (smooth nets, quadrature;
                         ReLU nets in the limit of many steps; Gauss–Legendre exactly for
                         polynomial integrands).
3. Sensitivity        — one differing feature carries the whole output difference.
4. Dummy              — a feature the function ignores gets exactly zero.
5. Symmetry           — symmetric features at a symmetric point get equal attributions.
6. Linearity          — in the distribution (mixtures) and in the quantity of interest.
7. Slice invariance   — the realisations of ``g ∘ h`` (sequential, graph, hook, functions)
                         give the same influence.
8. Preprocessing      — internal influence at a slice is the input influence of ``g`` at
                         ``h(x)``.
And batch-size invariance of every estimate.

Exactness is asserted in float64 (models, inputs and ``dtype=torch.float64``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from conftest import tolerance
from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from models import control_flow_net, mlp, res_cnn
from qoi import ClassQoI, ComparativeQoI, NeuronQoI
from slices import Slice

F64 = torch.float64
EXACT = tolerance(F64)
# Completeness of a Gauss-Legendre rule on a smooth net: 1e-4 relative (the observed error
# is ~1e-14 when the rule has enough nodes for the line: see the smooth-MLP test); the
# absolute floor only matters when q(x) ≈ q(b).
COMPLETE = {"rtol": 1e-4, "atol": 1e-9}
# Batch-size invariance: the same sums in a different order.
BATCH = {"rtol": 1e-12, "atol": 1e-12}

FEW = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------- helpers


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def q_at(model: nn.Module, q, x: Tensor) -> Tensor:  # noqa: ANN001
    with torch.no_grad():
        return q(model(x))


def smooth_mlp(d: int, hidden: int, classes: int, act: type[nn.Module], seed: int) -> nn.Sequential:
    return mlp(d, hidden, classes, act=act, seed=seed).double()


def sum_units(values: Tensor) -> Tensor:
    """Per-anchor sum of an attribution ``(N, *unit) -> (N,)``."""
    return values.flatten(1).sum(1)


def pointwise_dois(baseline: Tensor | float) -> list:
    """Point, line (Gauss-Legendre, trapezoid) and noise (random, sobol) DoIs."""
    return [
        PointDoI(),
        LineDoI(baseline=baseline, steps=7),
        LineDoI(baseline=baseline, steps=6, rule="trapezoid"),
        NoiseDoI(sigma=0.3, samples=8, sampler="random"),
        NoiseDoI(sigma=0.3, samples=8, sampler="sobol"),
    ]


@st.composite
def linear_stacks(draw: st.DrawFn) -> tuple[list[int], int, int]:
    """Widths ``[d_0, ..., d_L]`` of a stack of ``L`` linear layers, a class, a seed."""
    widths = draw(st.lists(st.integers(1, 5), min_size=2, max_size=5))
    c = draw(st.integers(0, widths[-1] - 1))
    return widths, c, draw(seeds)


def linear_stack(widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths, widths[1:])]).double()


# ------------------------------------------------------------------ 1. linear agreement


@FEW
@given(d=st.integers(1, 6), classes=st.integers(1, 4), seed=seeds, data=st.data())
def test_linear_model_influence_is_weight_row_under_every_doi(d: int, classes: int, seed: int, data: st.DataObject) -> None:
    """``f(x) = Wx + b``: ``∇_x f_c = W[c]`` everywhere, and every DoI is a probability
    measure (weights sum to 1), so ``χ = W[c]`` for point, line (any rule, any
    baseline), noise (random, sobol), class and dataset DoIs."""
    c = data.draw(st.integers(0, classes - 1))
    torch.manual_seed(seed)
    model = nn.Linear(d, classes).double()
    g = gen(seed)
    x, base = randn(g, 5, d), randn(g, 5, d)
    y = torch.tensor([0, 1, 0, 2, 1])
    w = model.weight[c].detach()
    for doi in pointwise_dois(base):
        r = input_influence(model, ClassQoI(c), doi, x, dtype=F64, seed=seed)
        torch.testing.assert_close(r.values, w.expand(5, d), **EXACT)
    for doi in [ClassDoI((x, y), 1, each=LineDoI(baseline=0.5, steps=3)), DatasetDoI(x), DatasetDoI((x, y), each=NoiseDoI(samples=4))]:
        r = input_influence(model, ClassQoI(c), doi, dtype=F64, seed=seed, batch_size=3)
        torch.testing.assert_close(r.values, w, **EXACT)


@FEW
@given(stack=linear_stacks())
def test_linear_network_internal_influence_is_product_of_downstream_weights(stack: tuple[list[int], int, int]) -> None:
    """In ``f = W_L ⋯ W_1 x`` (+ biases) cut after layer ``k``, ``g(z) = W_L ⋯ W_{k+1} z + β``
    so ``χ = (W_L ⋯ W_{k+1})[c]`` (the unit row ``e_c`` when cut after the last layer),
    for every realisation and for point, input-space line and slice-space line DoIs."""
    widths, c, seed = stack
    model = linear_stack(widths, seed)
    layers = list(model)
    g = gen(seed)
    x = randn(g, 3, widths[0])
    for k in range(len(layers)):
        downstream = torch.eye(widths[-1], dtype=F64)
        for layer in reversed(layers[k + 1 :]):
            downstream = downstream @ layer.weight.detach()  # rows: classes, cols: units at cut
        expected = downstream[c].expand(3, widths[k + 1])
        for realisation in ("sequential", "graph", "hook"):
            s = Slice(model, str(k), realisation=realisation)
            assert s.realisation == realisation
            for doi in [PointDoI(), LineDoI(baseline=randn(g, widths[0]), steps=4), LineDoI(baseline=1.0, steps=3, space="slice")]:
                r = internal_influence(s, ClassQoI(c), doi, x, dtype=F64)
                torch.testing.assert_close(r.values, expected, **EXACT)


# ---------------------------------------------------------------------- 2. completeness


# The Gauss-Legendre error on an analytic integrand falls like ρ^(-2n) in the number of nodes
# n, where ρ - 1 is about the distance, in units of half the path, from the path to the
# nearest complex singularity of the integrand. A tanh unit whose pre-activation changes by Δ
# along the path has poles at Im α = π/(2Δ) (softplus: branch points at π/Δ); at scale 3 a
# slice-space line from h(x) to a random z_b sweeps a unit by |Δ| up to ~14 (about 3 σ), so
# ρ ≈ 1 + π/|Δ| ≈ 1.2 (observed: 32 more nodes cut the error 3e5-fold, ρ = 1.22) and 32 nodes
# leave an error of ~1e-6 of the integrand's size. That is far below 1e-4 of the difference
# of q at the two ends unless that difference is small by cancellation: in the pinned example
# (layer "0", tanh, 9 units, Δ = -13.5 on one unit) it is -0.0119 for anchor 3 and the error
# at 32 nodes is 7.4e-6, 6.2e-4 relative: a quadrature error, not a bug (1.8e-9 at 64 nodes,
# 6e-14 at 128). 64 nodes square the factor (ρ^-128 ≈ 1e-11), which leaves seven orders of
# magnitude for such cancellations at scales up to 3 and costs nothing on nets this small;
# the tolerance and the input range stay as they are.
COMPLETENESS_NODES = 64


@FEW
@example(d=1, hidden=9, classes=1, act=nn.Tanh, seed=460, scale=3.0, c=0, layer="0")  # 6.2e-4 at 32 nodes: above
@given(
    d=st.integers(1, 7),
    hidden=st.integers(1, 12),
    classes=st.integers(1, 4),
    act=st.sampled_from([nn.Softplus, nn.Tanh]),
    seed=seeds,
    scale=st.floats(0.1, 3.0),
    c=st.integers(0, 3),
    layer=st.sampled_from(["0", "1", "2", "3"]),
)
def test_completeness_smooth_mlp_input_and_slice(
    d: int, hidden: int, classes: int, act: type[nn.Module], seed: int, scale: float, c: int, layer: str
) -> None:
    """Integrated gradients with 64 Gauss–Legendre nodes on a smooth MLP:
    ``Σ_i (x − b)_i ∫₀¹ ∂_i q(b + α(x − b)) dα = q(x) − q(b)``; at a slice with a
    slice-space line between ``h(x)`` and an activation ``z_b``,
    ``Σ_j (h(x) − z_b)_j ∫ ∂_j (q∘g) = q(g(h(x))) − q(g(z_b))``."""
    c %= classes
    model = smooth_mlp(d, hidden, classes, act, seed)
    g = gen(seed)
    x, base = randn(g, 4, d, scale=scale), randn(g, 4, d, scale=scale)
    q = ClassQoI(c)
    doi = LineDoI(baseline=base, steps=COMPLETENESS_NODES)
    r = input_influence(model, q, doi, x, multiply_activation=True, dtype=F64)
    torch.testing.assert_close(sum_units(r.values), q_at(model, q, x) - q_at(model, q, base), **COMPLETE)

    s = Slice(model, layer)
    with torch.no_grad():
        z_b = randn(g, 4, hidden, scale=scale)  # any activation, one per anchor
        expected = q(s.g(s.h(x))) - q(s.g(z_b))
    doi = LineDoI(baseline=z_b, steps=COMPLETENESS_NODES, space="slice")
    r = internal_influence(s, q, doi, x, multiply_activation=True, dtype=F64)
    torch.testing.assert_close(sum_units(r.values), expected, **COMPLETE)


@pytest.mark.parametrize("seed", [0, 1])
def test_completeness_res_cnn_input_and_slices(seed: int) -> None:
    """``res_cnn`` (softplus, residual blocks), 32 Gauss–Legendre nodes: the attributions
    at the input sum to ``q(x) − q(b)``; at ``stem``, ``layer1``, ``down``, ``layer2`` with a
    slice-space line from the activation ``h(b)`` they sum to ``q(g(h(x))) − q(g(h(b)))``."""
    model = res_cnn(seed).double()
    g = gen(seed)
    x, base = randn(g, 3, 3, 8, 8), randn(g, 3, 3, 8, 8)
    q = ClassQoI(2)
    r = input_influence(model, q, LineDoI(baseline=base, steps=32), x, multiply_activation=True, dtype=F64)
    torch.testing.assert_close(sum_units(r.values), q_at(model, q, x) - q_at(model, q, base), **COMPLETE)
    for layer in ["stem", "layer1", "down", "layer2"]:
        s = Slice(model, layer)
        with torch.no_grad():
            h_b = s.h(base)
            expected = q(s.g(s.h(x))) - q(s.g(h_b))
        r = internal_influence(s, q, LineDoI(baseline=h_b, steps=32, space="slice"), x, multiply_activation=True, dtype=F64)
        torch.testing.assert_close(sum_units(r.values), expected, **COMPLETE)


@pytest.mark.parametrize("seed", [0, 3])
def test_completeness_relu_in_the_limit(seed: int) -> None:
    """On a ReLU MLP ``α ↦ q(b + α(x − b))`` is piecewise linear, so the integrand is
    piecewise constant and the midpoint rule with ``n`` steps errs by ``O(1/n)``. The
    completeness gap ``Σ_anchors |Σ_i A_i − (q(x) − q(b))| / Σ_anchors |q(x) − q(b)|``
    shrinks at every quadrupling of ``n = 4 … 4096``, by more than 100× overall, and is
    below 1e-3 at 4096 steps."""
    model = smooth_mlp(6, 16, 4, nn.ReLU, seed)
    g = gen(seed)
    x, base = randn(g, 16, 6), randn(g, 16, 6)
    q = ClassQoI(1)
    diff = q_at(model, q, x) - q_at(model, q, base)
    gaps = []
    for k in range(1, 7):
        doi = LineDoI(baseline=base, steps=4**k, rule="midpoint")
        r = input_influence(model, q, doi, x, multiply_activation=True, dtype=F64, batch_size=4096)
        gaps.append(float((sum_units(r.values) - diff).abs().sum() / diff.abs().sum()))
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < gaps[0] / 100, gaps
    assert gaps[-1] < 1e-3, gaps


class PowerSum(nn.Module):
    """``z ↦ Σ_j z_j^p`` as a ``(B, 1)`` output."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.p = p

    def forward(self, z: Tensor) -> Tensor:
        return (z**self.p).sum(1, keepdim=True)


def power_net(d: int, k: int, p: int, seed: int) -> nn.Sequential:
    """``f(x) = Σ_j ((Ax)_j)^p``, ``A`` a random ``k × d`` matrix."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, k, bias=False), PowerSum(p)).double()


def exact_power_ig(a: Tensor, x: Tensor, base: Tensor, p: int) -> Tensor:
    """Closed-form IG of ``f(x) = Σ_j (a_j·x)^p``: with ``u = Ab``, ``v = A(x − b)``,
    ``∫₀¹ p (u_j + α v_j)^{p−1} dα = ((u_j + v_j)^p − u_j^p) / v_j``, so
    ``IG_i = (x − b)_i Σ_j A_{ji} ((u_j + v_j)^p − u_j^p) / v_j``."""
    u, v = base @ a.T, (x - base) @ a.T
    return (x - base) * ((((u + v) ** p - u**p) / v) @ a)


@FEW
@given(d=st.integers(1, 5), k=st.integers(1, 4), p=st.integers(2, 7), seed=seeds)
def test_gauss_legendre_exact_for_polynomial_integrands(d: int, k: int, p: int, seed: int) -> None:
    """For ``f(x) = Σ_j ((Ax)_j)^p`` the path integrand ``∂_i f(b + α(x − b))`` is a
    polynomial of degree ``p − 1`` in ``α``; Gauss–Legendre with ``n`` nodes integrates
    degree ``≤ 2n − 1`` exactly, so ``n = ⌈p/2⌉`` nodes give the closed-form IG (and
    completeness) to float64 rounding; at a slice-space cut after ``A`` the same holds for
    ``g(z) = Σ z_j^p``."""
    model = power_net(d, k, p, seed)
    g = gen(seed)
    x, base = randn(g, 3, d), randn(g, 3, d)
    n = math.ceil(p / 2)
    q = ClassQoI(0)
    r = input_influence(model, q, LineDoI(baseline=base, steps=n), x, multiply_activation=True, dtype=F64)
    a = model[0].weight.detach()
    scale = {"rtol": 1e-10, "atol": 1e-10 * float(exact_power_ig(a, x, base, p).abs().max() + 1)}
    torch.testing.assert_close(r.values, exact_power_ig(a, x, base, p), **scale)
    torch.testing.assert_close(sum_units(r.values), q_at(model, q, x) - q_at(model, q, base), **scale)

    s = Slice(model, "0")
    z, z_b = s.h(x).detach(), s.h(base).detach()
    r = internal_influence(s, q, LineDoI(baseline=z_b, steps=n, space="slice"), x, multiply_activation=True, dtype=F64)
    expected = z**p - z_b**p  # separable: each unit's IG is its own difference
    torch.testing.assert_close(r.values, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max() + 1))


@pytest.mark.parametrize("p", [3, 4, 5, 6, 7])
def test_gauss_legendre_one_node_short_is_not_exact(p: int) -> None:
    """The degree bound above is sharp: with ``⌈p/2⌉ − 1`` nodes the integrand's degree
    ``p − 1 > 2n − 1`` and the IG is visibly off (the exact test is not vacuous)."""
    model = power_net(4, 3, p, 0)
    g = gen(0)
    x, base = randn(g, 3, 4), randn(g, 3, 4)
    n = math.ceil(p / 2) - 1
    r = input_influence(model, ClassQoI(0), LineDoI(baseline=base, steps=n), x, multiply_activation=True, dtype=F64)
    exact = exact_power_ig(model[0].weight.detach(), x, base, p)
    assert float((r.values - exact).abs().max()) > 1e-6 * float(exact.abs().max())


# ----------------------------------------------------------------------- 3. sensitivity


@FEW
@given(
    d=st.integers(1, 6),
    act=st.sampled_from([nn.Softplus, nn.Tanh]),
    seed=seeds,
    data=st.data(),
)
def test_sensitivity_one_differing_feature_gets_the_whole_difference(
    d: int, act: type[nn.Module], seed: int, data: st.DataObject
) -> None:
    """``x`` and ``b`` differ only in feature ``i``: every other ``(x − b)_j = 0`` so its
    IG is exactly 0, and completeness gives ``IG_i = q(x) − q(b)``, non-zero whenever the
    outputs differ."""
    i = data.draw(st.integers(0, d - 1))
    shift = data.draw(st.floats(0.05, 4.0) | st.floats(-4.0, -0.05))
    model = smooth_mlp(d, 8, 3, act, seed)
    g = gen(seed)
    base = randn(g, 1, d)
    x = base.clone()
    x[0, i] += shift
    q = ClassQoI(seed % 3)
    diff = q_at(model, q, x) - q_at(model, q, base)
    r = input_influence(model, q, LineDoI(baseline=base, steps=32), x, multiply_activation=True, dtype=F64)
    others = [j for j in range(d) if j != i]
    assert (r.values[0, others] == 0).all()
    torch.testing.assert_close(r.values[0, i : i + 1], diff, **COMPLETE)
    if float(diff.abs()) > 1e-12:
        assert float(r.values[0, i]) != 0.0


# ----------------------------------------------------------------------------- 4. dummy


class DropFeature(nn.Module):
    """``f(x) = net(x without feature j)``: ``f`` does not read ``x_j``."""

    def __init__(self, net: nn.Module, d: int, j: int) -> None:
        super().__init__()
        self.net, self.keep = net, [k for k in range(d) if k != j]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x[:, self.keep])


@FEW
@given(
    d=st.integers(2, 6),
    act=st.sampled_from([nn.Softplus, nn.Tanh, nn.ReLU]),
    seed=seeds,
    data=st.data(),
)
def test_dummy_feature_gets_exactly_zero(d: int, act: type[nn.Module], seed: int, data: st.DataObject) -> None:
    """A feature ``j`` the function ignores (its first-layer weight column is zero, or it
    is dropped before the network) has ``∂f/∂x_j ≡ 0``: its influence and attribution are
    exactly 0 under point, line, noise and dataset DoIs."""
    j = data.draw(st.integers(0, d - 1))
    zeroed = smooth_mlp(d, 8, 3, act, seed)
    with torch.no_grad():
        zeroed[0].weight[:, j] = 0.0
    dropped = DropFeature(smooth_mlp(d - 1, 8, 3, act, seed), d, j)
    g = gen(seed)
    x, base = randn(g, 4, d), randn(g, 4, d)
    q = ClassQoI(seed % 3)
    for model in (zeroed, dropped):
        for doi in pointwise_dois(base):
            for multiply in (False, True):
                r = input_influence(model, q, doi, x, multiply_activation=multiply, dtype=F64, seed=seed)
                assert (r.values[:, j] == 0).all(), (doi, multiply)
        r = input_influence(model, q, DatasetDoI(x, each=LineDoI(baseline=base, steps=5)), dtype=F64, multiply_activation=True)
        assert r.values[j] == 0


@FEW
@given(seed=seeds, unit=st.integers(0, 7))
def test_dummy_internal_unit_gets_exactly_zero(seed: int, unit: int) -> None:
    """A hidden unit whose outgoing weights are zero does not affect the output: its
    internal influence (point, slice-space line, noise) is exactly 0."""
    model = smooth_mlp(5, 8, 3, nn.Softplus, seed)
    with torch.no_grad():
        model[2].weight[:, unit] = 0.0
    x = randn(gen(seed), 4, 5)
    s = Slice(model, "1")
    dois = [PointDoI(), LineDoI(baseline=0.3, steps=5, space="slice"), LineDoI(steps=5), NoiseDoI(sigma=0.2, samples=4, space="slice")]
    for doi in dois:
        r = internal_influence(s, ClassQoI(1), doi, x, multiply_activation=True, dtype=F64, seed=seed)
        assert (r.values[:, unit] == 0).all(), doi


# -------------------------------------------------------------------------- 5. symmetry


class SymmetricNet(nn.Module):
    """``f(x) = net(x_0 + x_1, x_0 x_1, x_2, …)``: symmetric in ``x_0`` and ``x_1``."""

    def __init__(self, d: int, act: type[nn.Module], seed: int) -> None:
        super().__init__()
        self.net = smooth_mlp(d, 8, 3, act, seed)

    def forward(self, x: Tensor) -> Tensor:
        a, b = x[:, :1], x[:, 1:2]
        return self.net(torch.cat([a + b, a * b, x[:, 2:]], 1))


@FEW
@given(d=st.integers(2, 5), act=st.sampled_from([nn.Softplus, nn.Tanh, nn.ReLU]), seed=seeds)
def test_symmetric_features_at_symmetric_points_get_equal_attributions(d: int, act: type[nn.Module], seed: int) -> None:
    """``f`` symmetric in ``x_0, x_1``; with ``x_0 = x_1`` and ``b_0 = b_1`` the whole path
    stays on the diagonal, where ``∂_0 f = ∂_1 f``: the two features get equal influence
    (point) and equal integrated gradients (line)."""
    model = SymmetricNet(d, act, seed).double()
    g = gen(seed)
    x, base = randn(g, 4, d), randn(g, 4, d)
    x[:, 1], base[:, 1] = x[:, 0], base[:, 0]
    for doi in [PointDoI(), LineDoI(baseline=base, steps=16), LineDoI(baseline=base, steps=9, rule="riemann-left")]:
        r = input_influence(model, ClassQoI(seed % 3), doi, x, multiply_activation=True, dtype=F64)
        torch.testing.assert_close(r.values[:, 0], r.values[:, 1], **EXACT)


# ------------------------------------------------------------------------ 6. linearity


def labelled_data(seed: int, n: int = 11, d: int = 5, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = gen(seed)
    x = randn(g, n, d)
    y = torch.arange(n) % classes  # every class present
    return x, y[torch.randperm(n, generator=g)]


@pytest.mark.parametrize(
    "each", [None, LineDoI(baseline=0.25, steps=6), LineDoI(steps=5, rule="trapezoid")], ids=["point", "line", "trapezoid"]
)
@pytest.mark.parametrize("layer", [None, "1"])
def test_dataset_influence_is_class_mixture(each, layer: str | None) -> None:  # noqa: ANN001
    """The dataset is the mixture of its classes with weights ``n_c / N``, and influence
    is linear in the distribution: ``χ_Dataset = Σ_c (n_c/N) χ_Class(c)``."""
    x, y = labelled_data(0)
    model = smooth_mlp(5, 8, 3, nn.Softplus, 0)
    s = Slice(model, layer)
    q = ClassQoI(2)
    whole = internal_influence(s, q, DatasetDoI((x, y), each=each), dtype=F64, batch_size=4)
    mixture = sum(
        (int((y == c).sum()) / len(y)) * internal_influence(s, q, ClassDoI((x, y), c, each=each), dtype=F64, batch_size=4).values
        for c in range(3)
    )
    torch.testing.assert_close(whole.values, mixture, **EXACT)
    assert whole.anchors == len(y)


@pytest.mark.parametrize(
    "each",
    [PointDoI(), LineDoI(baseline=-0.5, steps=7), NoiseDoI(sigma=0.2, samples=8, sampler="random"), NoiseDoI(sigma=0.2, samples=8)],
    ids=["point", "line", "noise-random", "noise-sobol"],
)
def test_dataset_influence_is_mean_of_pointwise(each) -> None:  # noqa: ANN001
    """``DatasetDoI(x, each=D)`` is uniform over the anchors, so its influence is the mean
    of the pointwise results of ``D`` (the random draws are keyed by anchor position, so
    with one seed the two queries see the same samples)."""
    x, _ = labelled_data(1)
    model = smooth_mlp(5, 8, 3, nn.Tanh, 1)
    q = ClassQoI(0)
    pointwise = input_influence(model, q, each, x, dtype=F64, seed=7)
    pooled = input_influence(model, q, DatasetDoI(x, each=each), dtype=F64, seed=7)
    torch.testing.assert_close(pooled.values, pointwise.values.mean(0), **EXACT)


@FEW
@given(seed=seeds, a=st.integers(0, 3), b=st.integers(0, 3), layer=st.sampled_from([None, "1", "3"]))
def test_influence_is_linear_in_the_qoi(seed: int, a: int, b: int, layer: str | None) -> None:
    """``χ`` is linear in ``q``: ``χ(2 q_1 − q_2) = 2 χ(q_1) − χ(q_2)``, and
    ``ComparativeQoI(a, b) = ClassQoI(a) − ClassQoI(b)``, for point, line and (seeded)
    noise DoIs, at the input and inside, also for an internal ``NeuronQoI``."""
    model = smooth_mlp(5, 6, 4, nn.Softplus, seed)
    g = gen(seed)
    x, base = randn(g, 3, 5), randn(g, 3, 5)
    s = Slice(model, layer)
    q1, q2 = ClassQoI(a), ClassQoI(b)
    for doi in pointwise_dois(base):
        opts = {"dtype": F64, "seed": seed, "multiply_activation": True}
        combo, r1, r2, comp = internal_influence(s, [2 * q1 - q2, q1, q2, ComparativeQoI(a, b)], doi, x, **opts)
        torch.testing.assert_close(combo.values, 2 * r1.values - r2.values, **EXACT)
        torch.testing.assert_close(comp.values, r1.values - r2.values, **EXACT)
        # one query per QoI gives the same as the shared forward pass
        torch.testing.assert_close(internal_influence(s, q1 - q2, doi, x, **opts).values, comp.values, **EXACT)
    if layer != "3":
        n1, n2 = NeuronQoI("3", 2), NeuronQoI("2", 0)
        combo, r1, r2 = internal_influence(s, [n1 + 0.5 * n2, n1, n2], LineDoI(baseline=base, steps=5), x, dtype=F64)
        torch.testing.assert_close(combo.values, r1.values + 0.5 * r2.values, **EXACT)


# ------------------------------------------------------------------ 7. slice invariance


def slice_dois(model: nn.Module, layer: str, x: Tensor, base: Tensor) -> list:
    with torch.no_grad():
        h_b = Slice(model, layer, realisation="hook").h(base)
    return [
        PointDoI(),
        LineDoI(baseline=base, steps=8),
        LineDoI(baseline=h_b, steps=8, space="slice"),
        NoiseDoI(sigma=0.2, samples=4, space="slice"),
    ]


def assert_same_influence(slices: list[Slice], model: nn.Module, layer: str, x: Tensor, base: Tensor, q) -> None:  # noqa: ANN001
    for doi in slice_dois(model, layer, x, base):
        for multiply in (False, True):
            results = [internal_influence(s, q, doi, x, dtype=F64, multiply_activation=multiply, seed=3).values for s in slices]
            for s, r in zip(slices[1:], results[1:]):
                torch.testing.assert_close(r, results[0], **EXACT, msg=lambda m: f"{s.realisation} at {layer}, {doi}: {m}")


@pytest.mark.parametrize("layer", ["0", "1", "2", "3"])
def test_slice_invariance_mlp(layer: str) -> None:
    """On the sequential MLP the sequential halves, the fx graph split, the hooks and
    hand-written ``h = model[:k+1]``, ``g = model[k+1:]`` give the same influence."""
    model = smooth_mlp(6, 8, 4, nn.Softplus, 0)
    g = gen(0)
    x, base = randn(g, 3, 6), randn(g, 3, 6)
    k = int(layer)
    slices = [Slice(model, layer, realisation=r) for r in ("sequential", "graph", "hook")]
    slices.append(Slice.from_functions(model[: k + 1], model[k + 1 :], model=model))
    assert [s.realisation for s in slices] == ["sequential", "graph", "hook", "functions"]
    assert_same_influence(slices, model, layer, x, base, ClassQoI(1))


def res_cnn_halves(m: nn.Module, layer: str):  # noqa: ANN201
    """``h`` and ``g`` of ``res_cnn`` at ``layer``, written out by hand from its modules."""
    stem = lambda x: m.stem_act(m.stem(x))  # noqa: E731
    head = lambda z: m.fc(torch.flatten(m.pool(z), 1))  # noqa: E731
    return {
        "layer1": (lambda x: m.layer1(stem(x)), lambda z: head(m.layer2(m.down(z)))),
        "down": (lambda x: m.down(m.layer1(stem(x))), lambda z: head(m.layer2(z))),
        "layer2": (lambda x: m.layer2(m.down(m.layer1(stem(x)))), head),
    }[layer]


@pytest.mark.parametrize("layer", ["layer1", "down", "layer2"])
def test_slice_invariance_res_cnn(layer: str) -> None:
    """``res_cnn``: graph split, hooks and hand-written ``h``/``g`` agree at each stage."""
    model = res_cnn(1).double()
    g = gen(1)
    x, base = randn(g, 2, 3, 8, 8), randn(g, 2, 3, 8, 8)
    h_fn, g_fn = res_cnn_halves(model, layer)
    slices = [Slice(model, layer, realisation="graph"), Slice(model, layer, realisation="hook"), Slice.from_functions(h_fn, g_fn, model=model)]
    assert Slice(model, layer).realisation == "graph"
    assert_same_influence(slices, model, layer, x, base, ClassQoI(3) - ClassQoI(0))


@pytest.mark.parametrize("layer", ["fc1", "act1"])
def test_slice_invariance_control_flow_net(layer: str) -> None:
    """``control_flow_net`` cannot be traced, so ``auto`` falls back to hooks; they agree
    with hand-written ``h``/``g`` (the branch is always taken)."""
    model = control_flow_net(0).double()
    g = gen(2)
    x, base = randn(g, 3, 6), randn(g, 3, 6)
    auto = Slice(model, layer)
    assert auto.realisation == "hook"
    with pytest.raises(ValueError, match="does not apply"):
        Slice(model, layer, realisation="graph")
    h_fn = {"fc1": model.fc1, "act1": lambda v: model.act1(model.fc1(v))}[layer]
    g_fn = {"fc1": lambda z: model.fc2(model.act1(z)), "act1": model.fc2}[layer]
    assert_same_influence([auto, Slice.from_functions(h_fn, g_fn, model=model)], model, layer, x, base, ClassQoI(2))


# -------------------------------------------------------------------- 8. preprocessing


class Tail(nn.Module):
    """``g`` of ``res_cnn`` at a layer, as a module of its own."""

    def __init__(self, m: nn.Module, layer: str) -> None:
        super().__init__()
        self.m, self.g = m, res_cnn_halves(m, layer)[1]

    def forward(self, z: Tensor) -> Tensor:
        return self.g(z)


@pytest.mark.parametrize("layer", ["layer1", "down", "layer2"])
def test_internal_influence_is_input_influence_of_g(layer: str) -> None:
    """Treating ``h`` as preprocessing: ``χ_slice(x) = χ^g_input(h(x))`` for a point DoI;
    a slice-space line (or noise) DoI from ``h(b)`` equals the input line (noise) DoI of
    ``g`` at ``h(x)`` with baseline ``h(b)``, with and without ``multiply_activation``."""
    model = res_cnn(2).double()
    tail = Tail(model, layer)
    g = gen(5)
    x, base = randn(g, 3, 3, 8, 8), randn(g, 3, 3, 8, 8)
    s = Slice(model, layer)
    with torch.no_grad():
        hx, hb = s.h(x), s.h(base)
    q = ClassQoI(4)
    pairs = [
        (PointDoI(), PointDoI()),
        (LineDoI(baseline=hb, steps=9, space="slice"), LineDoI(baseline=hb, steps=9)),
        (LineDoI(baseline=hb, steps=6, rule="midpoint", space="slice"), LineDoI(baseline=hb, steps=6, rule="midpoint")),
        (NoiseDoI(sigma=0.3, samples=8, space="slice"), NoiseDoI(sigma=0.3, samples=8)),
    ]
    for inside, outside in pairs:
        for multiply in (False, True):
            opts = {"dtype": F64, "multiply_activation": multiply, "seed": 11}
            r_slice = internal_influence(s, q, inside, x, **opts)
            r_g = input_influence(tail, q, outside, hx, **opts)
            torch.testing.assert_close(r_slice.values, r_g.values, **EXACT)
            torch.testing.assert_close(r_slice.stderr, r_g.stderr, **EXACT)


# ----------------------------------------------------------- batch-size invariance


@pytest.mark.parametrize(
    "doi",
    [
        LineDoI(baseline=0.1, steps=17),
        LineDoI(baseline=0.1, steps=17, rule="trapezoid", space="slice"),
        NoiseDoI(sigma=0.2, samples=12, sampler="random"),
        NoiseDoI(sigma=0.2, samples=12, sampler="sobol", replicates=3),
        NoiseDoI(sigma=0.2, samples=12, sampler="sobol", space="slice"),
    ],
    ids=["line", "line-slice", "noise-random", "noise-sobol", "noise-sobol-slice"],
)
@pytest.mark.parametrize("layer", [None, "layer1"])
def test_batch_size_invariance(doi, layer: str | None) -> None:  # noqa: ANN001
    """17 line nodes (or 12 noise samples in 3 or 4 groups) over 5 anchors: batches of
    1, 3, 7 and 64 rows split anchors and groups differently, yet values and standard
    errors agree to 1e-12 (counter-based draws, float64 sums); so does a pooled query."""
    model = res_cnn(3, width=2).double()
    x = randn(gen(3), 5, 3, 8, 8)
    s = Slice(model, layer)
    q = ClassQoI(1)
    runs = [internal_influence(s, q, doi, x, dtype=F64, batch_size=b, seed=21, multiply_activation=True) for b in (1, 3, 7, 64)]
    pooled = [internal_influence(s, q, DatasetDoI(x, each=doi), dtype=F64, batch_size=b, seed=21) for b in (1, 3, 7, 64)]
    for r in runs[1:]:
        torch.testing.assert_close(r.values, runs[0].values, **BATCH)
        torch.testing.assert_close(r.stderr, runs[0].stderr, **BATCH)
    for r in pooled[1:]:
        torch.testing.assert_close(r.values, pooled[0].values, **BATCH)
        torch.testing.assert_close(r.stderr, pooled[0].stderr, **BATCH)
    if isinstance(doi, NoiseDoI):
        assert (runs[0].stderr > 0).any()
