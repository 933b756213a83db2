"""Captum's methods by name, each one query of the engine: a (slice, DoI, QoI) triple.

``f_c`` is the target's output (the QoI), ``h`` the activations at ``layer``, ``b`` a
baseline, ``multiply`` is ``multiply_activation``; integrals over a line are quadratures
``Σ_k w_k (·)(b + α_k (x − b))`` (:class:`doi.LineDoI`; our rules ``gauss-legendre``,
``riemann-left``, ``riemann-right``, ``midpoint`` are Captum's ``gausslegendre``,
``riemann_left``, ``riemann_right``, ``riemann_middle``; our ``trapezoid`` is Captum's
``riemann_trapezoid`` × n/(n−1), README "Distributions of interest").

- ``saliency``: ``∇f_c(x)`` — input slice, ``PointDoI()``, ``ClassQoI(c)``, no multiply.
- ``input_x_gradient``: ``x ⊙ ∇f_c(x)`` — input slice, ``PointDoI()``, multiply.
- ``integrated_gradients``: ``(x − b) ⊙ ∫₀¹ ∇f_c(b + α(x − b)) dα`` — input slice,
  ``LineDoI(b, steps, rule)``, multiply.
- ``smoothgrad``: ``E_{ε~N(0,I)} ∇f_c(x + σε)`` — input slice, ``NoiseDoI(σ, samples)``,
  no multiply.
- ``expected_gradients``: ``E_{b~baselines, α~U[0,1]} ∇f_c(b + α(x − b)) ⊙ (x − b) =
  (1/K) Σ_j IG(x, b_j)`` — input slice, ``LineDoI(b_j, steps, rule)`` on every (point,
  baseline row) pair, multiply, then each point's mean over its ``K`` pairs.
- ``internal_influence_line``: ``∫₀¹ ∂f_c/∂h |_{h(b + α(x − b))} dα`` —
  ``Slice(model, layer)``, ``LineDoI(b, space="input")``, no multiply (Captum
  ``InternalInfluence``).
- ``layer_integrated_gradients``: ``(h(x) − h(b)) ⊙ ∫₀¹ ∂f_c/∂h |_{h(b) + α(h(x) − h(b))} dα``
  — ``Slice(model, layer)``, ``LineDoI(h(b), space="slice")``, multiply (Captum
  ``LayerIntegratedGradients``).

``target`` is an int class (``ClassQoI``), a QoI or a callable ``output -> (batch,)``, or a
list of them: one query shares the forward passes and returns a list of results, in order
(Captum's per-example target tensor has no counterpart; ``qoi.MaxClassQoI()`` explains each
point's predicted class). ``**options`` go to the engine (``batch_size``, ``device``,
``dtype``, ``seed``, ``progress``, ...). Every method returns an ``InfluenceResult`` (a
list for a list of targets) and gives the model back unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, Literal

import torch
from torch import Tensor, nn

from doi import LineDoI, NoiseDoI, PointDoI
from qoi import QuantityOfInterest, as_qoi
from slices import Cut, Slice

from ..engine import InfluenceResult, input_influence, internal_influence

__all__ = [
    "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "expected_gradients",
    "internal_influence_line", "layer_integrated_gradients",
]  # fmt: skip

Target = int | QuantityOfInterest | Callable[[Any], Tensor] | list[Any]
Baselines = float | Tensor | Callable[[Tensor], Tensor]
Layer = str | Cut | nn.Module
Result = InfluenceResult | list[InfluenceResult]
Rule = Literal["gauss-legendre", "riemann-left", "riemann-right", "midpoint", "trapezoid"]


def saliency(model: nn.Module, inputs: Tensor, target: Target, **options: Any) -> Result:
    """``∇_x f_c(x)``, signed (Captum ``Saliency(abs=False)``)."""
    return input_influence(model, _qoi(target), PointDoI(), inputs, **options)


def input_x_gradient(model: nn.Module, inputs: Tensor, target: Target, **options: Any) -> Result:
    """``x ⊙ ∇_x f_c(x)`` (Captum ``InputXGradient``)."""
    return input_influence(model, _qoi(target), PointDoI(), inputs, multiply_activation=True, **options)


def integrated_gradients(
    model: nn.Module, inputs: Tensor, target: Target, *, baselines: Baselines = 0.0, steps: int = 32, rule: Rule = "gauss-legendre", **options: Any
) -> Result:
    """``(x − b) ⊙ Σ_k w_k ∇f_c(b + α_k (x − b))``, the quadrature of
    ``(x − b) ⊙ ∫₀¹ ∇f_c(b + α(x − b)) dα`` (Captum ``IntegratedGradients``).
    ``baselines``: a number, a tensor of one point or one row per point, or a callable
    of the inputs. ``result.completeness`` is each point's relative gap
    ``|Σ values − (f_c(x) − f_c(b))| / |f_c(x) − f_c(b)|``."""
    doi = LineDoI(_baselines(baselines, inputs), steps, rule)
    return input_influence(model, _qoi(target), doi, inputs, multiply_activation=True, **options)


def smoothgrad(
    model: nn.Module, inputs: Tensor, target: Target, *, sigma: float = 0.1, samples: int = 32,
    sampler: Literal["auto", "sobol", "random"] = "auto", seed: int | None = None, **options: Any,
) -> Result:  # fmt: skip
    """``E_{ε~N(0,I)} ∇f_c(x + σε)`` by ``samples`` draws per point, with its standard
    error (Captum ``NoiseTunnel(Saliency, "smoothgrad", stdevs=sigma)``). ``sampler``:
    ``"sobol"`` (randomised quasi-Monte Carlo), ``"random"`` (independent normals, as
    Captum), or ``"auto"``: Sobol where a point has at most ``SobolEngine.MAXDIM``
    (21201) values, else random."""
    if sampler == "auto":
        small = isinstance(inputs, Tensor) and inputs.ndim >= 1 and inputs[0].numel() <= torch.quasirandom.SobolEngine.MAXDIM
        sampler = "sobol" if small else "random"
    return input_influence(model, _qoi(target), NoiseDoI(sigma, samples, sampler), inputs, seed=seed, **options)


def expected_gradients(
    model: nn.Module, inputs: Tensor, target: Target, baselines: Tensor, *, steps: int = 32, rule: Rule = "gauss-legendre", **options: Any
) -> Result:
    """``E_{b ~ baselines, α ~ U[0,1]} ∇f_c(b + α(x − b)) ⊙ (x − b) = (1/K) Σ_j IG(x, b_j)``
    over the ``K`` rows ``b_j`` of ``baselines`` ``(K, *input_shape)``.

    Computed, not sampled: the exact mean over the given baselines of integrated
    gradients by quadrature over ``α`` (``steps``, ``rule``), in one query whose anchors are
    the ``N·K`` pairs (each point repeated ``K`` times, each with its own baseline row; the
    pairs are materialised, so split very large ``N·K`` over calls). Captum's
    ``GradientShap`` is a Monte Carlo estimate of the same expectation. ``stderr`` is
    ``sqrt(Σ_j se_j²)/K`` (zero for a quadrature: it does not count the choice of
    baselines); ``completeness`` is ``None`` (the engine reports each pair's gap, not its
    ``Δq``; ``integrated_gradients`` with one baseline row shows a pair's gap).
    """
    if not isinstance(inputs, Tensor) or inputs.ndim < 1:
        raise TypeError(f"inputs: expected a tensor (N, *input_shape) (got {type(inputs).__name__})")
    point = tuple(inputs.shape[1:])
    want = f"K >= 1 baseline points, a tensor (K, {', '.join(map(str, point))})"
    if not isinstance(baselines, Tensor):
        raise TypeError(f"baselines: expected {want} (got {type(baselines).__name__})")
    if baselines.ndim != inputs.ndim or tuple(baselines.shape[1:]) != point or len(baselines) == 0:
        raise ValueError(f"baselines: expected {want} (got shape {tuple(baselines.shape)})")
    n, k = inputs.shape[0], baselines.shape[0]
    anchors = inputs.repeat_interleave(k, 0)  # row i·K + j is x_i ...
    lines = baselines.to(inputs).repeat(n, *[1] * len(point))  # ... and its baseline b_j
    out = input_influence(model, _qoi(target), LineDoI(lines, steps, rule), anchors, multiply_activation=True, **options)
    return [_mean_over_baselines(r, n, k) for r in out] if isinstance(out, list) else _mean_over_baselines(out, n, k)


def internal_influence_line(
    model: nn.Module, layer: Layer, inputs: Tensor, target: Target, *, baselines: Baselines = 0.0, steps: int = 32, rule: Rule = "gauss-legendre", **options: Any
) -> Result:
    """``Σ_k w_k ∂f_c/∂h |_{h(b + α_k (x − b))}``: the gradient at ``layer`` along the
    input-space line, not multiplied (Captum ``InternalInfluence``). ``layer``: a dotted
    name, a :class:`slices.Cut` or the submodule itself."""
    doi = LineDoI(_baselines(baselines, inputs), steps, rule, space="input")
    return internal_influence(_slice(model, layer), _qoi(target), doi, inputs, **options)


def layer_integrated_gradients(
    model: nn.Module, layer: Layer, inputs: Tensor, target: Target, *, baselines: Baselines = 0.0, steps: int = 32, rule: Rule = "gauss-legendre", **options: Any
) -> Result:
    """``(h(x) − h(b)) ⊙ Σ_k w_k ∂f_c/∂h |_{h(b) + α_k (h(x) − h(b))}``: integrated
    gradients at ``layer`` along the line between the activations (Captum
    ``LayerIntegratedGradients``). ``baselines`` are inputs, as in Captum (for a mapping of
    token ids: the baseline ids in the same form); ``h(b)`` is computed here."""
    slc = _slice(model, layer)
    b = _baselines(baselines, inputs, as_tensor=True) if isinstance(inputs, Tensor) else baselines
    doi = LineDoI(slc.baseline(b), steps, rule, space="slice")
    return internal_influence(slc, _qoi(target), doi, inputs, multiply_activation=True, **options)


def _qoi(target: Any) -> QuantityOfInterest | list[QuantityOfInterest]:
    """``target`` as the engine's QoI (or list of them), with errors that name it."""
    if isinstance(target, list):
        if not target:
            raise ValueError("target: an empty list; give a class, a QoI or a callable, or a non-empty list of them")
        return [_one_qoi(t) for t in target]
    return _one_qoi(target)


def _one_qoi(target: Any) -> QuantityOfInterest:
    if isinstance(target, Tensor) and target.ndim == 0 and not target.is_floating_point() and target.dtype != torch.bool:
        target = int(target)
    if isinstance(target, Integral) and not isinstance(target, bool):
        return as_qoi(int(target))
    if isinstance(target, (Tensor, tuple)):
        raise TypeError(
            f"target: a {type(target).__name__} (Captum's per-example targets or output index) is not supported; give an int class, "
            "a QoI or a callable output -> (batch,) (e.g. lambda out: out[:, 1, 2]); a list of them gives one result each; "
            "qoi.MaxClassQoI() explains each point's predicted class"
        )
    if isinstance(target, QuantityOfInterest) or callable(target):
        return as_qoi(target)
    raise TypeError(f"target: expected an int class, a QoI or a callable output -> (batch,), or a list of them (got {type(target).__name__})")


def _baselines(baselines: Any, inputs: Any, as_tensor: bool = False) -> float | Tensor:
    """A number, or a tensor of one point ``(1, *point)`` or one row per point ``(N, *point)``."""
    if isinstance(baselines, Real) and not isinstance(baselines, bool) and not as_tensor:
        return float(baselines)
    if not isinstance(inputs, Tensor) or inputs.ndim < 1:
        raise TypeError(f"inputs: expected a tensor (N, *input_shape) (got {type(inputs).__name__})")
    if isinstance(baselines, Real) and not isinstance(baselines, bool):
        return torch.full_like(inputs[:1], baselines)
    if callable(baselines) and not isinstance(baselines, Tensor):
        baselines = baselines(inputs)
    if not isinstance(baselines, Tensor):
        raise TypeError(f"baselines: expected a number, a tensor or a callable of the inputs (got {type(baselines).__name__})")
    n, point = inputs.shape[0], tuple(inputs.shape[1:])
    b = baselines.to(inputs)
    if b.ndim == inputs.ndim and tuple(b.shape) == (n, *point):
        return b
    try:
        return torch.broadcast_to(b, (1, *point)).contiguous()
    except RuntimeError:
        raise ValueError(
            f"baselines: shape {tuple(b.shape)} does not fit inputs of shape {tuple(inputs.shape)}; expected a number, "
            f"a tensor broadcastable to one point {point}, or one row per point ({n}, {', '.join(map(str, point))})"
        ) from None


def _slice(model: nn.Module, layer: Any) -> Slice:
    """``Slice(model, layer)`` for a name, a ``Cut`` or a submodule (Captum passes modules)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (got {type(model).__name__})")
    if layer is None:
        raise ValueError("layer: None is the input; give a layer (a dotted name, a Cut or a submodule), or use integrated_gradients")
    if isinstance(layer, nn.Module):
        names = [name for name, m in model.named_modules() if m is layer and name]
        if not names:
            raise ValueError(f"layer: this {type(layer).__name__} is not a submodule of the model; give a submodule or its dotted name")
        layer = names[0]
    return Slice(model, layer)


def _mean_over_baselines(r: InfluenceResult, n: int, k: int) -> InfluenceResult:
    """Each point's mean over its ``k`` consecutive pairs; standard errors ``sqrt(Σ se²)/k``."""

    def mean(t: Tensor) -> Tensor:
        return t.reshape(n, k, *t.shape[1:]).mean(1)

    def se(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape(n, k, *t.shape[1:]).square().sum(1).sqrt() / k

    query = {**r.query, "method": "expected_gradients", "baselines": k}
    return dataclasses.replace(
        r, values=mean(r.values), stderr=se(r.stderr), channel_stderr=se(r.channel_stderr), anchors=n, query=query, completeness=None, steps=None
    )
