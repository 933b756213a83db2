"""Cross-checks against Captum 0.9 (a test-only dependency).

Every gradient method Captum implements is one query of this library:

* ``IntegratedGradients(method=M)``  = ``input_influence(LineDoI(b, n, rule=R), multiply_activation=True)``
  for (R, M) in (gauss-legendre, gausslegendre), (riemann-left, riemann_left),
  (riemann-right, riemann_right), (midpoint, riemann_middle);
  ``riemann_trapezoid`` × n/(n−1) = rule ``trapezoid``;
* ``Saliency(abs=False)`` = ``PointDoI``; ``InputXGradient`` = ``PointDoI`` × activation;
* ``InternalInfluence(layer)`` = ``internal_influence(Slice(m, layer), LineDoI(b, space="input"))``:
  ``Σ_k w_k ∂f_c/∂h |_{h(b + α_k (x − b))}`` (no multiplication);
* ``LayerIntegratedGradients(layer, baselines=b)`` = slice-space ``LineDoI(h(b), space="slice")``
  with ``multiply_activation``: ``(h(x) − h(b)) · Σ_k w_k ∂f_c/∂h |_{h(b) + α_k (h(x) − h(b))}``;
* ``NoiseTunnel(Saliency, smoothgrad, stdevs=σ)`` = ``NoiseDoI(σ, sampler="random")`` in
  distribution (both are Monte Carlo estimates of ``E_ε ∇f_c(x + σε)``).

Models are float64 (Captum works in float64 too), except one float32 check at
``tolerance(float32)``. Captum rounds its quadrature weights to float32
(``IntegratedGradients``: ``torch.tensor(step_sizes).float()``; ``InternalInfluence``:
``torch.tensor(step_sizes)`` in the default dtype) and builds its Riemann nodes with a float32
``torch.linspace``: a relative error of up to ``2**-24 ≈ 6e-8`` per weight and node. In float64
the two libraries therefore agree to about ``1e-8`` of the attributions' scale; the quadrature
checks below ask for ``1e-6`` of that scale (never looser than the required ``1e-5``). Where
Captum does no such rounding (saliency, gradient × input) the float64 tolerance applies.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    InternalInfluence,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from conftest import tolerance
from models import mlp, res_cnn
from torch import Tensor, nn
from torch.testing import assert_close

from doi import LineDoI, NoiseDoI, PointDoI, nodes_and_weights
from influence import input_influence, internal_influence
from qoi import ClassQoI, MaxClassQoI
from slices import Slice

# (our rule, Captum's method): the same nodes and weights.
RULE_PAIRS = [
    ("gauss-legendre", "gausslegendre"),
    ("riemann-left", "riemann_left"),
    ("riemann-right", "riemann_right"),
    ("midpoint", "riemann_middle"),
]
STEPS = 12  # not a power of two, so Captum's float32 rounding of 1/n and k/n is exercised
N_POINTS = 4
SHAPES = {"mlp": (6,), "res_cnn": (3, 8, 8)}
CLASSES = {"mlp": 4, "res_cnn": 5}
# Layers compared at: for res_cnn a residual block, the strided conv and the second block.
LAYERS = [("res_cnn", "layer1"), ("res_cnn", "down"), ("res_cnn", "layer2"), ("mlp", "2")]

# Captum's float32-rounded weights/nodes (module docstring) err by <= 2**-24 ≈ 6e-8 relative
# per term; 1e-6 is ~16x that bound (observed agreement: ~1e-8 of the attributions' scale).
RELATIVE = 1e-6
REQUIRED = 1e-5  # the tolerance the comparison must never be looser than


def make_model(kind: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    model = mlp(seed=0) if kind == "mlp" else res_cnn(seed=0)
    return model.to(dtype).eval()


def points(kind: str, rng: torch.Generator, n: int = N_POINTS, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(n, *SHAPES[kind], generator=rng, dtype=dtype)


def baselines(which: str, x: Tensor, rng: torch.Generator) -> tuple[Any, Any]:
    """``(ours, captum's)``: the scalar 0 for both, or one non-trivial row per point."""
    if which == "zero":
        return 0.0, 0.0
    b = 0.5 * torch.randn(x.shape, generator=rng, dtype=torch.float64).to(x.dtype) + 0.3
    return b, b


def captum_input(x: Tensor) -> Tensor:
    """A fresh leaf that requires grad (Captum warns, an error here, when it must set it)."""
    return x.detach().clone().requires_grad_(True)


def assert_matches_captum(ours: Tensor, theirs: Tensor) -> None:
    """``|ours − captum| ≤ atol + rtol·|captum|`` with ``rtol = 1e-6`` and ``atol = 1e-6``
    of the largest attribution, capped at 1e-5 (derivation in the module docstring)."""
    theirs = theirs.detach().to(ours.dtype)
    scale = float(theirs.abs().max())
    assert scale > 0, "a vacuous comparison: Captum's attributions are all zero"
    assert_close(ours, theirs, rtol=RELATIVE, atol=min(REQUIRED, RELATIVE * scale))


def slice_baseline(slc: Slice, b: Any, x: Tensor) -> Tensor:
    """``h(x_baseline)``: the activation at the cut of the input-space baseline."""
    xb = torch.zeros_like(x) if not isinstance(b, Tensor) else b
    with torch.no_grad():
        return slc.h(xb)


# 1. Integrated gradients, rule by rule.


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
@pytest.mark.parametrize("rule,method", RULE_PAIRS)
@pytest.mark.parametrize("which", ["zero", "tensor"])
def test_integrated_gradients_per_rule(kind: str, rule: str, method: str, which: str, rng: torch.Generator) -> None:
    """``(x − b) · Σ_k w_k ∇f_c(b + α_k (x − b))`` with the rule's (α, w) equals Captum's
    ``IntegratedGradients(method=M)`` (float64, to 1e-6 of scale)."""
    model = make_model(kind)
    x = points(kind, rng)
    ours_b, their_b = baselines(which, x, rng)
    c = 1
    ours = input_influence(model, ClassQoI(c), LineDoI(ours_b, steps=STEPS, rule=rule), x, multiply_activation=True)
    theirs = IntegratedGradients(model).attribute(captum_input(x), their_b, target=c, n_steps=STEPS, method=method)
    assert ours.values.shape == x.shape
    assert_matches_captum(ours.values, theirs)
    assert torch.all(ours.stderr == 0), "a quadrature rule is deterministic"


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
@pytest.mark.parametrize("rule,method", RULE_PAIRS)
def test_integrated_gradients_float32(kind: str, rule: str, method: str, rng: torch.Generator) -> None:
    """The same identity on float32 models, at ``tolerance(float32)`` (rtol = atol = 1e-5)."""
    model = make_model(kind, torch.float32)
    x = points(kind, rng, dtype=torch.float32)
    b = 0.5 * torch.randn(x.shape, generator=rng, dtype=torch.float32)
    ours = input_influence(model, ClassQoI(2), LineDoI(b, steps=STEPS, rule=rule), x, multiply_activation=True)
    theirs = IntegratedGradients(model).attribute(captum_input(x), b, target=2, n_steps=STEPS, method=method)
    assert ours.values.dtype == torch.float64  # results are float64 whatever the model
    assert_close(ours.values, theirs.detach().double(), **tolerance(torch.float32))


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_the_comparison_tells_rules_apart(kind: str, rng: torch.Generator) -> None:
    """Not vacuous: our riemann-left does *not* match Captum's riemann_right at this
    tolerance (they differ by ``(x − b)(∇f(x) − ∇f(b))/n``)."""
    model = make_model(kind)
    x = points(kind, rng, scale=2.0)
    ours = input_influence(model, ClassQoI(1), LineDoI(0.0, steps=STEPS, rule="riemann-left"), x, multiply_activation=True)
    theirs = IntegratedGradients(model).attribute(captum_input(x), 0.0, target=1, n_steps=STEPS, method="riemann_right")
    with pytest.raises(AssertionError):
        assert_matches_captum(ours.values, theirs)


# 2. Trapezoid: Captum's weights sum to (n − 1)/n.


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
@pytest.mark.parametrize("which", ["zero", "tensor"])
def test_trapezoid_is_captum_rescaled_and_more_complete(kind: str, which: str, rng: torch.Generator) -> None:
    """Captum's ``riemann_trapezoid`` weights its ``n`` nodes ``k/(n−1)`` by ``1/n`` (ends
    halved), total ``(n−1)/n``; ours is the composite rule (``1/(n−1)``, ends halved, total
    1), so ``ours = captum · n/(n−1)``.

    Completeness: ``Σ_j IG_j = f_c(x) − f_c(b) + e`` with ``e`` our quadrature error, so
    Captum's sum is ``(n−1)/n · (Δf + e)`` and misses ``Δf`` by ``Δf/n`` up to ``|e|``:
    ``| |captum gap| − |Δf|/n | ≤ |e|``, and our gap ``|e|`` is smaller than Captum's."""
    model = make_model(kind)
    x = points(kind, rng, scale=2.0)
    ours_b, their_b = baselines(which, x, rng)
    n, c = STEPS, 3
    ours = input_influence(model, ClassQoI(c), LineDoI(ours_b, steps=n, rule="trapezoid"), x, multiply_activation=True).values
    theirs = IntegratedGradients(model).attribute(captum_input(x), their_b, target=c, n_steps=n, method="riemann_trapezoid").detach()
    assert_matches_captum(ours, theirs * n / (n - 1))

    xb = torch.zeros_like(x) if which == "zero" else ours_b
    with torch.no_grad():
        delta_f = model(x)[:, c] - model(xb)[:, c]
    ours_gap = (ours.flatten(1).sum(1) - delta_f).abs()
    captum_gap = (theirs.flatten(1).sum(1) - delta_f).abs()
    assert torch.all(delta_f.abs() > 0)
    assert torch.all(ours_gap < captum_gap), (ours_gap, captum_gap)
    slack = ours_gap + min(REQUIRED, RELATIVE * float(delta_f.abs().max()))
    assert torch.all((captum_gap - delta_f.abs() / n).abs() <= slack), (captum_gap, delta_f / n, ours_gap)


# 3. Saliency and gradient × input.


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_point_doi_is_saliency_and_input_x_gradient(kind: str, rng: torch.Generator) -> None:
    """``PointDoI``: ``∇f_c(x)`` = ``Saliency(abs=False)``; with ``multiply_activation``:
    ``x ⊙ ∇f_c(x)`` = ``InputXGradient`` (no quadrature, so to the float64 tolerance)."""
    model = make_model(kind)
    x = points(kind, rng)
    c = 2
    grad = input_influence(model, ClassQoI(c), PointDoI(), x).values
    gxi = input_influence(model, ClassQoI(c), PointDoI(), x, multiply_activation=True).values
    saliency = Saliency(model).attribute(captum_input(x), target=c, abs=False).detach()
    ixg = InputXGradient(model).attribute(captum_input(x), target=c).detach()
    assert_close(grad, saliency, **tolerance(torch.float64))
    assert_close(gxi, ixg, **tolerance(torch.float64))
    assert saliency.abs().max() > 0 and torch.any(saliency < 0), "abs=False keeps signs"


# 4. Internal influence: input-space path, gradient at the layer.


@pytest.mark.parametrize("kind,layer", LAYERS)
@pytest.mark.parametrize("rule,method", [RULE_PAIRS[0], RULE_PAIRS[2]])
@pytest.mark.parametrize("which", ["zero", "tensor"])
def test_input_space_line_at_a_layer_is_internal_influence(kind: str, layer: str, rule: str, method: str, which: str, rng: torch.Generator) -> None:
    """Captum's ``InternalInfluence`` is ``Σ_k w_k ∂f_c/∂h |_{h(b + α_k (x − b))}``: the
    gradient at the layer integrated along the *input* path, not multiplied by anything;
    ours is ``internal_influence(Slice(m, layer), ClassQoI(c), LineDoI(b, space="input"))``."""
    model = make_model(kind)
    x = points(kind, rng)
    ours_b, their_b = baselines(which, x, rng)
    c = 1
    slc = Slice(model, layer)
    ours = internal_influence(slc, ClassQoI(c), LineDoI(ours_b, steps=STEPS, rule=rule, space="input"), x)
    module = model.get_submodule(layer)
    theirs = InternalInfluence(model, module).attribute(captum_input(x), their_b, target=c, n_steps=STEPS, method=method)
    with torch.no_grad():
        unit = slc.h(x).shape
    assert ours.values.shape == unit == theirs.shape
    assert_matches_captum(ours.values, theirs)


# 5. Layer integrated gradients: slice-space path.


@pytest.mark.parametrize("kind,layer", [*LAYERS, ("mlp", "1")])
@pytest.mark.parametrize("which", ["zero", "tensor"])
def test_slice_space_line_is_layer_integrated_gradients(kind: str, layer: str, which: str, rng: torch.Generator) -> None:
    """Captum's ``LayerIntegratedGradients(layer).attribute(x, baselines=b)`` is
    ``(h(x) − h(b)) ⊙ Σ_k w_k ∂f_c/∂h |_{h(b) + α_k (h(x) − h(b))}``: ours with the path in
    slice space from the activation ``h(b)`` (a tensor, one row per point) and
    ``multiply_activation``."""
    model = make_model(kind)
    x = points(kind, rng)
    ours_b, their_b = baselines(which, x, rng)
    c = 0
    slc = Slice(model, layer)
    hb = slice_baseline(slc, ours_b, x)
    doi = LineDoI(hb, steps=STEPS, rule="gauss-legendre", space="slice")
    ours = internal_influence(slc, ClassQoI(c), doi, x, multiply_activation=True)
    module = model.get_submodule(layer)
    their_base = torch.zeros_like(x) if which == "zero" else their_b
    theirs = LayerIntegratedGradients(model, module).attribute(
        captum_input(x), baselines=their_base, target=c, n_steps=STEPS, method="gausslegendre"
    )
    assert ours.values.shape == hb.shape == theirs.shape
    assert_matches_captum(ours.values, theirs)
    # Layer completeness (both): Σ_j LIG_j ≈ f_c(x) − f_c(b).
    with torch.no_grad():
        delta_f = model(x)[:, c] - model(their_base)[:, c]
    assert_close(ours.values.flatten(1).sum(1), delta_f, rtol=1e-6, atol=1e-6 * float(delta_f.abs().max()))


# 6. SmoothGrad: two Monte Carlo estimates of the same expectation.


def _z_scores(ours: Any, theirs: Tensor) -> Tensor:
    """``(ours − captum) / (√2 · stderr_ours)``: both estimates average ``S`` independent
    gradients ``∇f_c(x + σε)`` with the same variance, so their difference has standard
    deviation ``√2 · σ_∇/√S ≈ √2 · stderr_ours``; each z is approximately ``N(0, 1)``."""
    assert torch.all(ours.stderr > 0)
    return (ours.values - theirs.detach()) / (2**0.5 * ours.stderr)


def _agree_in_distribution(z: Tensor) -> bool:
    """At most 1% of the elements (at least one allowed) beyond 4 combined standard
    errors (expected fraction under agreement: P(|N(0,1)| > 4) ≈ 6e-5), none beyond 6
    (P ≈ 2e-9 each: a union bound over all elements keeps a false failure below 1e-6)."""
    beyond4 = int((z.abs() > 4).sum())
    return beyond4 <= max(1, z.numel() // 100) and bool(torch.all(z.abs() <= 6))


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_noise_doi_is_smoothgrad(kind: str, rng: torch.Generator) -> None:
    """``NoiseDoI(σ, S, sampler="random")`` and ``NoiseTunnel(Saliency, "smoothgrad",
    nt_samples=S, stdevs=σ)`` estimate ``E_ε ∇f_c(x + σε)``; their difference is within 4
    combined standard errors elementwise (see :func:`_agree_in_distribution`). Both are
    seeded, so the test is deterministic. Power: Captum run with ``2σ`` is rejected."""
    model = make_model(kind)
    n = 16 if kind == "mlp" else 2
    x = points(kind, rng, n=n, scale=2.0)
    sigma, samples, c = 1.0, 256, 1
    ours = input_influence(model, ClassQoI(c), NoiseDoI(sigma, samples=samples, sampler="random"), x, seed=7, batch_size=1024)

    def smoothgrad(stdev: float) -> Tensor:
        torch.manual_seed(3)
        tunnel = NoiseTunnel(Saliency(model))
        return tunnel.attribute(captum_input(x), nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=c, abs=False)

    z = _z_scores(ours, smoothgrad(sigma))
    assert _agree_in_distribution(z), f"max |z| = {float(z.abs().max()):.2f}, mean z² = {float((z**2).mean()):.2f}"
    z_wrong = _z_scores(ours, smoothgrad(2 * sigma))
    assert not _agree_in_distribution(z_wrong), "the check cannot tell σ from 2σ"


# 7. Many QoIs in one pass; MaxClassQoI.


@pytest.mark.parametrize("kind", ["mlp", "res_cnn"])
def test_many_qois_in_one_pass(kind: str, rng: torch.Generator) -> None:
    """A list ``[ClassQoI(c) for c in range(C)]`` shares forward passes and returns, in
    order, the same values as ``C`` separate calls (float64 tolerance), each equal to
    Captum's ``IntegratedGradients(target=c)``."""
    model = make_model(kind)
    x = points(kind, rng)
    b = 0.5 * torch.randn(x.shape, generator=rng, dtype=torch.float64)
    doi = LineDoI(b, steps=STEPS, rule="gauss-legendre")
    classes = CLASSES[kind]
    together = input_influence(model, [ClassQoI(c) for c in range(classes)], doi, x, multiply_activation=True)
    assert isinstance(together, list) and len(together) == classes
    ig = IntegratedGradients(model)
    for c, result in enumerate(together):
        alone = input_influence(model, ClassQoI(c), doi, x, multiply_activation=True)
        assert_close(result.values, alone.values, **tolerance(torch.float64))
        assert result.query["qoi"] == repr(ClassQoI(c))
        theirs = ig.attribute(captum_input(x), b, target=c, n_steps=STEPS, method="gausslegendre")
        assert_matches_captum(result.values, theirs)


def test_max_class_is_fixed_at_the_anchor(rng: torch.Generator) -> None:
    """``MaxClassQoI`` explains ``f_{c(x)}`` with ``c(x) = argmax f(x)`` at the anchor, for
    every point on the path: it equals Captum's IG with ``target = argmax f(x)`` per row,
    also for points whose path from the zero baseline crosses a class boundary at some
    quadrature node (there a per-sample ``max_c f_c`` differs from it; elsewhere they agree). The MLP's last bias is zeroed so that its
    prediction depends on the input."""
    model = make_model("mlp")
    with torch.no_grad():
        model[4].bias.zero_()
    x = points("mlp", rng, n=24, scale=3.0)
    alpha, _ = nodes_and_weights("gauss-legendre", STEPS)
    with torch.no_grad():
        target = model(x).argmax(1)
        along = torch.stack([model(float(a) * x).argmax(1) for a in alpha], 1)  # (N, S) classes on the path
    crosses = torch.any(along != target[:, None], dim=1)
    assert crosses.any() and (~crosses).any(), "the data must include paths that change class and paths that do not"

    doi = LineDoI(0.0, steps=STEPS, rule="gauss-legendre")
    ours = input_influence(model, MaxClassQoI(), doi, x, multiply_activation=True).values
    theirs = IntegratedGradients(model).attribute(captum_input(x), 0.0, target=target, n_steps=STEPS, method="gausslegendre")
    assert_matches_captum(ours, theirs)

    # A per-sample argmax (the class may switch along the path) is a different quantity.
    per_sample = input_influence(model, lambda out: out.max(1).values, doi, x, multiply_activation=True).values
    gap = (per_sample - theirs.detach()).abs().flatten(1).amax(1)
    assert torch.all(gap[crosses] > 1e-3), gap
    assert_matches_captum(per_sample[~crosses], theirs[~crosses])
