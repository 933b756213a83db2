"""``influence.methods``: each method by name equals its Captum counterpart.

Deterministic methods are compared elementwise at ``|ours − captum| ≤ tol · max|captum|``:
``1e-10`` where Captum does no rounding (saliency, gradient × input), ``1e-8`` for
Gauss–Legendre (observed 3.7e-9) and ``1e-7`` for Captum's Riemann rules, whose step
sizes ``1/n`` and nodes it rounds to float32 (``2**-24 ≈ 6e-8`` relative; observed 3.5e-8
at ``n = 12``; see tests/test_against_captum.py).
Monte Carlo methods (SmoothGrad, GradientShap) draw other samples than ours; their
difference must be within 4 combined standard errors ``sqrt(se_ours² + se_captum²)``, with
Captum's standard error from its per-sample spread, and a wrong parameter must fail that
check (power). Models are float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import (
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    InternalInfluence,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from models import mlp, res_cnn
from torch import Tensor, nn

from influence import InfluenceResult
from influence.methods import (
    _mean_over_baselines,
    expected_gradients,
    input_x_gradient,
    integrated_gradients,
    internal_influence_line,
    layer_integrated_gradients,
    saliency,
    smoothgrad,
)
from qoi import ClassQoI, ComparativeQoI

SHAPES = {"mlp": (6,), "res_cnn": (3, 8, 8)}
LAYERS = {"mlp": "2", "res_cnn": "layer1"}
STEPS = 12
RULES = [("gauss-legendre", "gausslegendre"), ("riemann-left", "riemann_left"), ("riemann-right", "riemann_right"), ("midpoint", "riemann_middle")]
QUADRATURE = {"gauss-legendre": 1e-8, "riemann-left": 1e-7, "riemann-right": 1e-7, "midpoint": 1e-7, "trapezoid": 1e-7}


def model_of(kind: str) -> nn.Module:
    return (mlp(seed=0) if kind == "mlp" else res_cnn(seed=0)).double().eval()


def points(kind: str, rng: torch.Generator, n: int = 4, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(n, *SHAPES[kind], generator=rng, dtype=torch.float64)


def leaf(x: Tensor) -> Tensor:
    return x.detach().clone().requires_grad_(True)


def assert_equal(ours: Tensor, theirs: Tensor, tol: float) -> None:
    """``|ours − theirs| ≤ tol · max|theirs|`` elementwise, on a non-trivial ``theirs``."""
    theirs = theirs.detach().to(ours.dtype)
    scale = float(theirs.abs().max())
    assert ours.shape == theirs.shape and scale > 0
    error = float((ours - theirs).abs().max()) / scale
    assert error <= tol, f"relative error {error:.2e} > {tol:.0e}"


def within_4_se(ours: Tensor, theirs: Tensor, se: Tensor) -> bool:
    """Every element within 4 combined standard errors (P(|N(0,1)| > 4) ≈ 6e-5 each)."""
    assert torch.all(se > 0)
    return bool(torch.all((ours - theirs).abs() <= 4 * se))


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_saliency_and_input_x_gradient(kind: str, rng: torch.Generator) -> None:
    model, x = model_of(kind), points(kind, rng)
    theirs = Saliency(model).attribute(leaf(x), target=2, abs=False)
    assert torch.any(theirs < 0)  # abs=False keeps signs
    assert_equal(saliency(model, x, 2).values, theirs, 1e-10)
    assert_equal(input_x_gradient(model, x, 2).values, InputXGradient(model).attribute(leaf(x), target=2), 1e-10)


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
@pytest.mark.parametrize("rule,method", RULES)
def test_integrated_gradients(kind: str, rule: str, method: str, rng: torch.Generator) -> None:
    """Per-row baselines, one shared baseline point, and the default zero."""
    model, x = model_of(kind), points(kind, rng)
    rows, one = 0.5 * torch.randn(x.shape, generator=rng, dtype=x.dtype), 0.3 * torch.randn(x.shape[1:], generator=rng, dtype=x.dtype)
    ig = IntegratedGradients(model)
    for ours_b, their_b in [(rows, rows), (one, one.expand_as(x)), (0.0, 0.0)]:
        ours = integrated_gradients(model, x, 1, baselines=ours_b, steps=STEPS, rule=rule)
        assert_equal(ours.values, ig.attribute(leaf(x), their_b, target=1, n_steps=STEPS, method=method), QUADRATURE[rule])
        assert torch.all(ours.stderr == 0) and ours.completeness is not None


def test_integrated_gradients_rules_are_told_apart(rng: torch.Generator) -> None:
    """Not vacuous: riemann-left does not match Captum's riemann_right at 1e-7; our
    trapezoid is Captum's riemann_trapezoid × n/(n−1)."""
    model, x = model_of("mlp"), points("mlp", rng, scale=2.0)
    ig = IntegratedGradients(model)
    left = integrated_gradients(model, x, 1, steps=STEPS, rule="riemann-left").values
    with pytest.raises(AssertionError):
        assert_equal(left, ig.attribute(leaf(x), 0.0, target=1, n_steps=STEPS, method="riemann_right"), 1e-7)
    trapezoid = integrated_gradients(model, x, 1, steps=STEPS, rule="trapezoid").values
    assert_equal(trapezoid, ig.attribute(leaf(x), 0.0, target=1, n_steps=STEPS, method="riemann_trapezoid") * STEPS / (STEPS - 1), 1e-7)


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
@pytest.mark.parametrize("by_module", [False, True])
def test_layer_methods(kind: str, by_module: bool, rng: torch.Generator) -> None:
    """``internal_influence_line`` = ``InternalInfluence``, ``layer_integrated_gradients``
    = ``LayerIntegratedGradients`` (both Gauss–Legendre by default in Captum), with the
    layer given by name or as the module."""
    model, x = model_of(kind), points(kind, rng)
    b = 0.5 * torch.randn(x.shape, generator=rng, dtype=x.dtype)
    module = model.get_submodule(LAYERS[kind])
    layer = module if by_module else LAYERS[kind]
    for ours_b, their_b in [(b, b), (0.0, torch.zeros_like(x))]:
        ours = internal_influence_line(model, layer, x, 3, baselines=ours_b, steps=STEPS)
        theirs = InternalInfluence(model, module).attribute(leaf(x), their_b, target=3, n_steps=STEPS)
        assert_equal(ours.values, theirs, 1e-8)
        ours = layer_integrated_gradients(model, layer, x, 3, baselines=ours_b, steps=STEPS)
        theirs = LayerIntegratedGradients(model, module).attribute(leaf(x), their_b, target=3, n_steps=STEPS)
        assert_equal(ours.values, theirs, 1e-8)


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_expected_gradients_is_the_mean_of_integrated_gradients(kind: str, rng: torch.Generator) -> None:
    """Exactly the mean over the baseline rows of Captum's IG(x, b_j); one row is IG."""
    model, x = model_of(kind), points(kind, rng, n=3)
    base = torch.randn(5, *x.shape[1:], generator=rng, dtype=x.dtype)
    ours = expected_gradients(model, x, 1, base, steps=STEPS)
    ig = IntegratedGradients(model)
    theirs = torch.stack([ig.attribute(leaf(x), b.expand_as(x), target=1, n_steps=STEPS) for b in base]).mean(0)
    assert_equal(ours.values, theirs, 1e-8)
    assert ours.anchors == 3 and ours.values.shape == x.shape and torch.all(ours.stderr == 0)
    if kind == "res_cnn":
        assert ours.channel_stderr is not None and ours.channel_stderr.shape == (3, 3)
    one = expected_gradients(model, x, 1, base[2:3], steps=STEPS).values
    assert_equal(one, integrated_gradients(model, x, 1, baselines=base[2], steps=STEPS).values, 1e-12)
    with pytest.raises(AssertionError):  # the baselines matter: not the IG of their mean
        assert_equal(ours.values, integrated_gradients(model, x, 1, baselines=base.mean(0), steps=STEPS).values, 1e-3)


def test_expected_gradients_agrees_with_gradient_shap(rng: torch.Generator) -> None:
    """GradientShap (``n_samples`` draws of a baseline row and ``α ~ U[0, 1]``) estimates
    the same expectation; its standard error comes from the spread of single draws
    (GradientShap on the points repeated, ``n_samples=1``). Power: GradientShap over half
    the baselines is rejected."""
    model, x = model_of("mlp"), points("mlp", rng, n=8, scale=2.0)
    base = torch.randn(6, *x.shape[1:], generator=rng, dtype=x.dtype)
    ours = expected_gradients(model, x, 0, base, steps=32).values
    m = 4000

    def gradient_shap(b: Tensor) -> tuple[Tensor, Tensor]:
        np.random.seed(0)
        torch.manual_seed(0)
        gs = GradientShap(model)
        estimate = gs.attribute(leaf(x), b, n_samples=m, target=0).detach()
        single = gs.attribute(leaf(x.repeat(m, 1)), b, n_samples=1, target=0).detach().view(m, *x.shape)
        return estimate, single.std(0) / m**0.5

    theirs, se = gradient_shap(base)
    assert within_4_se(ours, theirs, se), float(((ours - theirs).abs() / se).max())
    wrong, se_wrong = gradient_shap(base[:3])
    assert not within_4_se(ours, wrong, se_wrong)


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_smoothgrad_agrees_with_noise_tunnel(kind: str, rng: torch.Generator) -> None:
    """``NoiseTunnel(Saliency, "smoothgrad")`` and ``smoothgrad(sampler="random")``
    estimate ``E ∇f_c(x + σε)``; Captum's standard error from its own per-sample spread
    (``smoothgrad_sq`` on the same draws: ``Var = E[a²] − E[a]²``). Power: 2σ is rejected."""
    model = model_of(kind)
    x = points(kind, rng, n=8 if kind == "mlp" else 2, scale=2.0)
    sigma, m = 1.0, 2048
    ours = smoothgrad(model, x, 1, sigma=sigma, samples=1024, sampler="random", seed=5, batch_size=2048)

    def noise_tunnel(stdev: float) -> tuple[Tensor, Tensor]:
        moments = []
        for nt_type in ("smoothgrad", "smoothgrad_sq"):
            torch.manual_seed(3)
            nt = NoiseTunnel(Saliency(model))
            moments.append(nt.attribute(leaf(x), nt_type=nt_type, nt_samples=m, stdevs=stdev, target=1, abs=False).detach())
        mean, square = moments
        return mean, ((square - mean**2).clamp(min=0) / (m - 1)).sqrt()

    theirs, se = noise_tunnel(sigma)
    combined = (ours.stderr**2 + se**2).sqrt()
    assert within_4_se(ours.values, theirs, combined), float(((ours.values - theirs).abs() / combined).max())
    wrong, se_wrong = noise_tunnel(2 * sigma)
    assert not within_4_se(ours.values, wrong, (ours.stderr**2 + se_wrong**2).sqrt())


def test_smoothgrad_sampler_auto(rng: torch.Generator) -> None:
    """``"auto"`` is Sobol up to SobolEngine.MAXDIM values per point, random above."""
    model, x = model_of("mlp"), points("mlp", rng)
    assert "sobol" in smoothgrad(model, x, 0, samples=8, seed=0).query["doi"]
    dims = torch.quasirandom.SobolEngine.MAXDIM + 1
    wide = nn.Sequential(nn.Linear(dims, 2)).double()
    result = smoothgrad(wide, torch.zeros(1, dims, dtype=torch.float64), 0, samples=2, seed=0)
    assert "random" in result.query["doi"]


METHODS = {
    "saliency": lambda m, x, t, b: saliency(m, x, t),
    "input_x_gradient": lambda m, x, t, b: input_x_gradient(m, x, t),
    "integrated_gradients": lambda m, x, t, b: integrated_gradients(m, x, t, baselines=b[0], steps=8),
    "smoothgrad": lambda m, x, t, b: smoothgrad(m, x, t, sigma=0.5, samples=16, seed=1),
    "expected_gradients": lambda m, x, t, b: expected_gradients(m, x, t, b, steps=8),
    "internal_influence_line": lambda m, x, t, b: internal_influence_line(m, "layer1", x, t, baselines=b[0], steps=8),
    "layer_integrated_gradients": lambda m, x, t, b: layer_integrated_gradients(m, "down", x, t, baselines=b[0], steps=8),
}


@pytest.mark.parametrize("name", METHODS)
def test_a_list_of_targets_is_a_list_of_separate_calls(name: str, rng: torch.Generator) -> None:
    """In order, equal to one call per target (an int, a QoI, a callable); the model comes
    back unchanged (parameters, gradients, training mode)."""
    model, x = model_of("res_cnn").train(), points("res_cnn", rng, n=3)
    base = torch.randn(3, *x.shape[1:], generator=rng, dtype=x.dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = [4, ComparativeQoI(1, 2), lambda out: out[:, 0] * out[:, 3]]
    together = METHODS[name](model, x, targets, base)
    assert isinstance(together, list) and len(together) == 3
    for target, result in zip(targets, together, strict=True):
        alone = METHODS[name](model, x, target, base)
        assert isinstance(alone, InfluenceResult) and alone.values.abs().max() > 0
        torch.testing.assert_close(result.values, alone.values, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result.stderr, alone.stderr, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(together[0].values, together[1].values)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_mean_over_baselines_combines_standard_errors() -> None:
    """Point ``i`` of ``k`` consecutive pairs: mean of values, ``sqrt(Σ se²)/k``."""
    values = torch.arange(12.0, dtype=torch.float64).view(6, 2)
    stderr = torch.tensor([[3.0, 0.0], [4.0, 1.0], [0.0, 2.0], [1.0, 2.0], [2.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    pairs = InfluenceResult(values, stderr, samples=48, anchors=6, pooled=False, channel_stderr=stderr.clone())
    mean = _mean_over_baselines(pairs, 2, 3)
    torch.testing.assert_close(mean.values, torch.tensor([[2.0, 3.0], [8.0, 9.0]], dtype=torch.float64))
    expected = torch.tensor([[5.0, 5**0.5], [3.0, 2 * 2**0.5]], dtype=torch.float64) / 3
    torch.testing.assert_close(mean.stderr, expected)
    torch.testing.assert_close(mean.channel_stderr, expected)
    assert mean.anchors == 2 and mean.samples == 48 and mean.query["baselines"] == 3


BAD = [
    (lambda m, x: layer_integrated_gradients(m, "layer9", x, 0), ValueError, r"unknown layer 'layer9'.*did you mean"),
    (lambda m, x: internal_influence_line(m, nn.Linear(2, 2), x, 0), ValueError, r"layer: this Linear is not a submodule"),
    (lambda m, x: layer_integrated_gradients(m, None, x, 0), ValueError, r"layer: None is the input"),
    (lambda m, x: integrated_gradients(m, x, 0, baselines=torch.zeros(2, 3)), ValueError, r"baselines: shape \(2, 3\) does not fit inputs of shape \(4, 3, 8, 8\)"),
    (lambda m, x: layer_integrated_gradients(m, "down", x, 0, baselines=torch.zeros(5, 3, 8, 8)), ValueError, r"baselines: shape \(5, 3, 8, 8\)"),
    (lambda m, x: integrated_gradients(m, x, 0, baselines="zero"), TypeError, r"baselines: expected a number"),
    (lambda m, x: expected_gradients(m, x, 0, torch.zeros(3, 8, 8)), ValueError, r"baselines: expected K >= 1 baseline points, a tensor \(K, 3, 8, 8\)"),
    (lambda m, x: expected_gradients(m, x, 0, 0.0), TypeError, r"baselines: expected K >= 1 .*\(got float\)"),
    (lambda m, x: saliency(m, x, "cat"), TypeError, r"target: expected an int class"),
    (lambda m, x: saliency(m, x, 1.0), TypeError, r"target: expected an int class"),
    (lambda m, x: saliency(m, x, torch.tensor([0, 1, 2, 3])), TypeError, r"target: a Tensor .*per-example"),
    (lambda m, x: saliency(m, x, (1, 2)), TypeError, r"target: a tuple"),
    (lambda m, x: saliency(m, x, []), ValueError, r"target: an empty list"),
    (lambda m, x: saliency(m, x, [1, "cat"]), TypeError, r"target: expected an int class"),
    (lambda m, x: layer_integrated_gradients("model", "down", x, 0), TypeError, r"model: expected a torch.nn.Module"),
    (lambda m, x: smoothgrad(m, x, 0, sigma=-1.0), ValueError, r"sigma must be a finite number > 0"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments_are_named(case: int, rng: torch.Generator) -> None:
    call, error, message = BAD[case]
    with pytest.raises(error, match=message):
        call(model_of("res_cnn"), points("res_cnn", rng))


def test_a_zero_dim_integer_target_is_a_class(rng: torch.Generator) -> None:
    model, x = model_of("mlp"), points("mlp", rng)
    torch.testing.assert_close(saliency(model, x, torch.tensor(2)).values, saliency(model, x, ClassQoI(2)).values, rtol=0, atol=0)


def test_options_reach_the_engine(rng: torch.Generator) -> None:
    model, x = model_of("res_cnn"), points("res_cnn", rng, n=2)
    base = torch.randn(2, *x.shape[1:], generator=rng, dtype=x.dtype)
    for result in (expected_gradients(model, x, 0, base, steps=4, batch_size=5), layer_integrated_gradients(model, "down", x, 0, steps=4, batch_size=5)):
        assert result.query["batch_size"] == 5
    assert smoothgrad(model, x, 0, samples=8, seed=11).query["seed"] == 11
    with pytest.raises(TypeError, match="batch_size"):
        saliency(model, x, 0, batch_size="big")
