"""The three ways the workflows rank the units of a slice for a quantity ``q``, all pooled
over a population ``P`` (one class, or the union of several):

* ``"influence"`` — Leino et al.'s class-wide influence, the mean gradient
  ``E_{x∈P}[∂q/∂z]`` (``PointDoI`` around each member, no multiplication). When ``g`` is
  linear (e.g. pooling then a final ``Linear`` after the cut) it is the same for every
  input and cannot see whether a unit ever fires.
* ``"gradient_x_activation"`` — ``E_{x∈P}[h(x) · ∂q/∂z]``.
* ``"contrast"`` — ``E_{x∈P}[(h(x) − μ) · ∫₀¹ ∂q/∂z(μ + α(h(x) − μ)) dα]`` with ``μ`` the
  mean activation of the comparison population: a line in slice space
  (``LineDoI(baseline=μ, space="slice")``) with ``multiply_activation``. By completeness
  the units' values sum to ``E_P[q(x)] − q(g(μ))``: each unit's share of the difference
  between the population and the comparison.

For a transformer layer, units are ``(positions, features)``. Ranking *features* sums
each sample's values over positions, ``v_f(x) = Σ_l v_{l,f}(x)``, and needs the standard
error of ``E_P[v_f]`` across the population, which cannot be derived from the units'
(:func:`rank_features` streams the per-point values in chunks to get it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from doi import ClassDoI, DatasetDoI, LineDoI, PointDoI
from doi._points import Points, rows
from slices import Slice

from ..engine import internal_influence, no_grad_batched
from ..engine import frozen
from ..engine import InfluenceResult

RANKINGS = ("contrast", "influence", "gradient_x_activation")


def members(y: Tensor, population: tuple[int, ...]) -> Tensor:
    """The rows of ``y`` whose label is in ``population``, in order."""
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in population:
        keep |= y == c
    return keep.nonzero().squeeze(1)


def population_doi(x: Points, y: Tensor, population: tuple[int, ...], each: Any) -> Any:
    """``ClassDoI`` for one class, ``DatasetDoI`` over the union of several."""
    if len(population) == 1:
        return ClassDoI((x, y), population[0], each=each)
    return DatasetDoI(rows(x, members(y, population)), each=each)


def comparison_mean(slice: Slice, x: Points, batch_size: int) -> Tensor:
    """``μ = mean of h(x)`` over the comparison points ``x``, one unit ``(*unit)``."""
    with frozen(slice.modules()):
        return no_grad_batched(slice.h, x, batch_size).mean(0)


def workflow_line(baseline: Any, steps: int | None, tol: float) -> LineDoI:
    """A line of a workflow: ``steps`` Gauss–Legendre nodes when given, else each point's
    steps chosen to meet ``tol`` (``LineDoI(tol=...)``)."""
    return LineDoI(baseline, steps=steps, space="slice") if steps is not None else LineDoI(baseline, tol=tol, space="slice")


def _each(ranking: str, baseline: Tensor | None, steps: int | None, tol: float) -> tuple[Any, bool]:
    """The pointwise DoI of a ranking and whether it multiplies by the activation."""
    if ranking == "contrast":
        if baseline is None:
            raise ValueError("the contrast ranking needs the comparison population's mean activation")
        return workflow_line(baseline, steps, tol), True
    if ranking == "influence":
        return PointDoI(), False
    if ranking == "gradient_x_activation":
        return PointDoI(), True
    raise ValueError(f"ranking must be one of {RANKINGS} (got {ranking!r})")


def rank_units(
    ranking: str,
    slice: Slice,
    qoi: Any,
    x: Points,
    y: Tensor,
    population: tuple[int, ...],
    *,
    baseline: Tensor | None = None,
    steps: int | None = None,
    tol: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> InfluenceResult:
    """The pooled result whose values rank the units (``baseline``, the comparison
    mean ``μ``, is needed for ``"contrast"``)."""
    each, multiply = _each(ranking, baseline, steps, tol)
    doi = population_doi(x, y, population, each)
    result = internal_influence(slice, qoi, doi, batch_size=batch_size, multiply_activation=multiply, seed=seed)
    assert isinstance(result, InfluenceResult)
    return result


def rank_features(
    ranking: str,
    slice: Slice,
    qoi: Any,
    x: Points,
    y: Tensor,
    population: tuple[int, ...],
    *,
    baseline: Tensor | None = None,
    steps: int | None = None,
    tol: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    chunk: int = 256,
) -> tuple[InfluenceResult, Tensor, Tensor]:
    """The pooled result of :func:`rank_units` (the same numbers), and for units
    ``(*positions, F)`` the features' scores ``E_P[Σ_l v_{l,f}]`` ``(F,)`` with their
    standard errors ``sd_P / √|P|``. The population's per-point values are computed
    ``chunk`` points at a time and summed in float64, shifted by the first point's."""
    each, multiply = _each(ranking, baseline, steps, tol)
    rows_of = members(y, population)
    n = rows_of.numel()
    sums: list[Tensor] = []
    shift: Tensor | None = None
    query: dict[str, Any] = {}
    samples = missed = 0
    for start in range(0, n, chunk):
        part = rows(x, rows_of[start : start + chunk])
        result = internal_influence(slice, qoi, each, part, batch_size=batch_size, multiply_activation=multiply, seed=seed)
        assert isinstance(result, InfluenceResult)
        if result.values.ndim < 3:
            raise ValueError(f"ranking features needs units (positions, features) (got units of shape {result.unit_shape})")
        query, samples = query or result.query, samples + result.samples
        missed += int(result.query.get("tol_missed", 0))
        shift = result.values[0].clone() if shift is None else shift
        d = result.values - shift
        f = d.flatten(1, -2).sum(1)
        terms = (d.sum(0), (d * d).sum(0), f.sum(0), (f * f).sum(0))
        sums = list(terms) if not sums else [a + b for a, b in zip(sums, terms)]
    assert shift is not None

    def mean_and_stderr(total: Tensor, squares: Tensor, origin: Tensor) -> tuple[Tensor, Tensor]:
        var = ((squares - total * total / n) / (n * (n - 1))).clamp_min(0) if n > 1 else torch.zeros_like(total)
        return origin + total / n, var.sqrt()

    values, stderr = mean_and_stderr(sums[0], sums[1], shift)
    scores, errors = mean_and_stderr(sums[2], sums[3], shift.flatten(0, -2).sum(0))
    described = {**query, "population": list(population)}
    if "tol_missed" in query:
        described["tol_missed"] = missed
    pooled = InfluenceResult(values=values, stderr=stderr, samples=samples, anchors=n, pooled=True, query=described)
    return pooled, scores, errors
