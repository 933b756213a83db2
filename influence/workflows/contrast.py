"""Top neurons for a class contrast.

For a slice ``f = g ∘ h``, the quantity ``q = f_a − f_b`` (:class:`~qoi.ComparativeQoI`)
and a population ``P`` (the points of class ``a``, or the union of several classes), each
unit ``u`` gets a pooled score ``χ_u`` (the mean over ``P`` of a per-point quantity) with
the standard error of that mean across the points of ``P``. ``ranking`` picks the
per-point quantity (see :mod:`influence.workflows._rankings`):

* ``"influence"`` (default; Leino et al. 2018): ``∂q/∂z_u`` at ``z = h(x)``;
* ``"gradient_x_activation"``: ``h_u(x) · ∂q/∂z_u``;
* ``"contrast"``: ``(h_u(x) − μ_u) · ∫₀¹ ∂q/∂z_u(μ + α(h(x) − μ)) dα`` with ``μ`` the mean
  activation of class ``b``: the unit's share of ``q(x) − q(g(μ))``.

Channels add their units (dimension 0 of the unit, e.g. a convolution's channels); for
a transformer layer, units ``(positions, features)``, *features* add theirs over the
positions (``by="feature"``: one hidden neuron pooled over the tokens; padding positions
contribute exactly zero when the model masks them). Data may be images ``(x, y)`` or
text: ``(inputs, y)`` with ``inputs`` token ids or a tokenizer's mapping
(``{"input_ids", "attention_mask", ...}``, the model called as ``model(**inputs)``).
An entry is *separated* from zero when
``|χ_u| > threshold · stderr_u`` (3 standard errors by default): its sign is not an
accident of the sample. (After a cut followed only by linear layers the influence is the
same for every input, so its standard error is zero and every nonzero entry is
separated; the other two rankings then say which units actually contribute.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from doi._base import check_positive_int as check_int
from doi._points import rows
from qoi import ComparativeQoI
from slices import Slice

from ..engine import count_missed, tol_counted
from ._labelled import check_choice, class_list, labelled_points
from ._rankings import RANKINGS, comparison_mean, rank_features, rank_units
from ..engine import InfluenceResult

__all__ = ["NeuronEntry", "TopNeurons", "top_neurons"]


@dataclass(frozen=True)
class NeuronEntry:
    """One ranked unit (``index`` a tuple) or channel (an int) with its influence
    ``value`` and standard error; ``separated`` when ``|value| > threshold · stderr``."""

    rank: int
    index: int | tuple[int, ...]
    value: float
    stderr: float
    separated: bool

    @property
    def z(self) -> float:
        """``value / stderr`` (±inf for a nonzero value with no error)."""
        if self.stderr > 0:
            return self.value / self.stderr
        return 0.0 if self.value == 0 else math.copysign(math.inf, self.value)


@dataclass(frozen=True, eq=False)
class TopNeurons:
    """The answer of :func:`top_neurons`: ``entries`` ranked, and the full ``result``."""

    a: int
    b: int
    layer: str | None
    by: str
    ranking: str
    population: tuple[int, ...]
    threshold: float
    entries: tuple[NeuronEntry, ...]
    result: InfluenceResult

    @property
    def separated(self) -> tuple[int | tuple[int, ...], ...]:
        """The indices of the top-k entries separated from zero."""
        return tuple(e.index for e in self.entries if e.separated)

    @property
    def indices(self) -> tuple[int | tuple[int, ...], ...]:
        return tuple(e.index for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "layer": self.layer,
            "by": self.by,
            "ranking": self.ranking,
            "population": list(self.population),
            "threshold": self.threshold,
            "points": self.result.anchors,
            "query": {k: v for k, v in self.result.query.items()},
            "entries": [
                {
                    "rank": e.rank,
                    "index": list(e.index) if isinstance(e.index, tuple) else e.index,
                    "value": e.value,
                    "stderr": e.stderr,
                    "z": e.z if math.isfinite(e.z) else str(e.z),
                    "separated": e.separated,
                }
                for e in self.entries
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        what = {"channel": "channel", "feature": "feature"}.get(self.by, "unit")
        over = " ∪ ".join(f"class {c}" for c in self.population)
        lines = [
            f"top {len(self.entries)} {what}s of {self.layer or 'the input'!s} for f_{self.a} - f_{self.b} by {self.ranking}, "
            f"over {over} ({self.result.anchors} points); * = separated from 0 by > {self.threshold:g} stderr",
            f"{'rank':>4}  {what:<14} {'influence':>12} {'stderr':>10} {'z':>8}",
        ]
        for e in self.entries:
            index = str(e.index)
            z = f"{e.z:+8.1f}" if math.isfinite(e.z) else f"{e.z:>8}"
            lines.append(f"{e.rank:>4}  {index:<14} {e.value:+12.4e} {e.stderr:10.2e} {z} {'*' if e.separated else ''}".rstrip())
        return "\n".join(lines)


def top_neurons(
    slice: Slice,
    data: Any,
    a: int,
    b: int,
    *,
    k: int = 10,
    over: int | Sequence[int] | None = None,
    by: Literal["unit", "channel", "feature"] = "channel",
    ranking: str = "influence",
    steps: int | None = None,
    tol: float = 1e-2,
    absolute: bool = False,
    threshold: float = 3.0,
    batch_size: int = 64,
    seed: int = 0,
) -> TopNeurons:
    """The ``k`` units (or channels) of ``slice`` with the largest influence on
    ``f_a − f_b``, pooled over a population, with standard errors.

    Args:
        slice: where the units are (``Slice(model, "layer")``).
        data: labelled points, ``(x, y)`` or ``{"x": ..., "y": ...}``; for text
            ``(inputs, y)`` with ``inputs`` token ids or a mapping of tensors.
        a, b: the classes compared; the quantity is ``ComparativeQoI(a, b)``.
        over: the population: a class or a list of classes (their union). Default: ``a``.
        by: rank single units, channels (dimension 0 of the unit; their units summed)
            or features (the last dimension, summed over the others: a transformer
            neuron pooled over the token positions).
        ranking: ``"influence"``, ``"gradient_x_activation"`` or ``"contrast"`` (see
            the module docstring). The contrast's line takes, per point, the steps
            that meet ``tol`` (its relative completeness gap; ``LineDoI(tol=...)``), or
            ``steps`` Gauss–Legendre nodes when given.
        absolute: rank by ``|value|`` (default: by value, most in favour of ``a`` first).
        threshold: how many standard errors away from zero counts as separated.

    Returns:
        :class:`TopNeurons` with ``entries`` (rank, index, value, stderr, separated).
    """
    owner = "top_neurons"
    x, y = labelled_points(data, owner)
    k = check_int(k, "k", owner)
    check_choice(by, "by", owner, ("unit", "channel", "feature"))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"{owner}: threshold must be a number >= 0 (got {threshold!r})")
    check_choice(ranking, "ranking", owner, RANKINGS)
    population = class_list(a if over is None else over, y, "over", owner)
    class_list(b, y, "b", owner)
    qoi = ComparativeQoI(a, b)
    baseline = comparison_mean(slice, rows(x, (y == b).nonzero().squeeze(1)), batch_size) if ranking == "contrast" else None
    options: dict[str, Any] = dict(baseline=baseline, steps=steps, tol=tol, batch_size=batch_size, seed=seed)
    with tol_counted(owner) as counts:
        if by == "feature":
            result, scores, errors = rank_features(ranking, slice, qoi, x, y, population, **options)
        else:
            result = rank_units(ranking, slice, qoi, x, y, population, **options)
        count_missed(counts, result)
    if by == "feature":
        order = (scores.abs() if absolute else scores).argsort(descending=True, stable=True)[:k].tolist()
        ranked = [(int(f), float(scores[f]), float(errors[f])) for f in order]
    else:
        if by == "channel" and len(result.unit_shape) < 2:
            by = "unit"  # a 1-D layer: channels are units
        ranked = [(r.index, r.value, r.stderr) for r in result.top(k, by=by, absolute=absolute)]
    entries = tuple(NeuronEntry(i, index, v, e, abs(v) > threshold * e) for i, (index, v, e) in enumerate(ranked, 1))
    return TopNeurons(a, b, slice.layer, by, ranking, population, float(threshold), entries, result)
