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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from doi import ClassDoI, DatasetDoI, LineDoI, PointDoI
from slices import Slice

from ._engine import internal_influence
from ._frozen import frozen
from ._engine import no_grad_batched
from .result import InfluenceResult

RANKINGS = ("contrast", "influence", "gradient_x_activation")


def population_doi(x: Tensor, y: Tensor, population: tuple[int, ...], each: Any) -> Any:
    """``ClassDoI`` for one class, ``DatasetDoI`` over the union of several."""
    if len(population) == 1:
        return ClassDoI((x, y), population[0], each=each)
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in population:
        keep |= y == c
    return DatasetDoI(x[keep], each=each)


def comparison_mean(slice: Slice, x: Tensor, batch_size: int) -> Tensor:
    """``μ = mean of h(x)`` over the comparison points ``x``, one unit ``(*unit)``."""
    with frozen(slice.modules()):
        return no_grad_batched(slice.h, x, batch_size).mean(0)


def rank_units(
    ranking: str,
    slice: Slice,
    qoi: Any,
    x: Tensor,
    y: Tensor,
    population: tuple[int, ...],
    *,
    baseline: Tensor | None = None,
    steps: int = 16,
    batch_size: int = 64,
    seed: int = 0,
) -> InfluenceResult:
    """The pooled result whose values rank the units (``baseline``, the comparison
    mean ``μ``, is needed for ``"contrast"``)."""
    if ranking == "contrast":
        if baseline is None:
            raise ValueError("the contrast ranking needs the comparison population's mean activation")
        each: Any = LineDoI(baseline=baseline, steps=steps, space="slice")
        multiply = True
    elif ranking == "influence":
        each, multiply = PointDoI(), False
    elif ranking == "gradient_x_activation":
        each, multiply = PointDoI(), True
    else:
        raise ValueError(f"ranking must be one of {RANKINGS} (got {ranking!r})")
    doi = population_doi(x, y, population, each)
    result = internal_influence(slice, qoi, doi, batch_size=batch_size, multiply_activation=multiply, seed=seed)
    assert isinstance(result, InfluenceResult)
    return result
