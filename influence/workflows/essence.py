"""The essence check (Leino et al. 2018, §4): do the top units of a slice carry the
model's answer?

Keep only the top ``k`` units of the slice — every other unit is *ablated*, set to zero
or to its mean over the data — and measure how well the quantity of interest still
separates the class from the comparison population, by the ROC AUC

    AUC = P(q(x⁺) > q(x⁻)) + ½ P(q(x⁺) = q(x⁻)) = U / (n⁺ n⁻)

(``U`` the Mann–Whitney statistic of the ``n⁺`` positive against the ``n⁻`` negative
values). The same is done for ``draws`` random sets of ``k`` units; the top-``k`` units
pass when their AUC beats the median of the random ones.

Rankings (all pooled over the points of class ``a``):

* ``"contrast"`` (default): ``E_{x∈a}[(h(x) − μ⁻) · ∫₀¹ ∂q/∂z (μ⁻ + α(h(x) − μ⁻)) dα]``, a
  line in slice space from ``μ⁻``, the mean activation of the comparison population
  (``ClassDoI(data, a, each=LineDoI(baseline=μ⁻, space="slice"))`` with
  ``multiply_activation=True``). It sums to ``E_a[q] − q(g(μ⁻))``: what each unit
  contributes to the difference between the class and the others.
* ``"influence"``: the bare gradient ``E_{x∈a}[∂q/∂z]`` (``ClassDoI(data, a)``). When
  ``g`` is linear the gradient is the same for every input, so it cannot see whether a
  unit ever fires, and may lose to random units.
* ``"gradient_x_activation"``: ``E_{x∈a}[h(x) · ∂q/∂z]``.

Units are ranked by their signed score, largest first. The ablation is done through the
slice: ``h`` runs once on the data and ``g`` on the ablated activations (for a hook slice
``g`` substitutes the layer's output by a forward hook), so one forward pass of ``g`` per
draw and point is all it costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from doi._base import check_positive_int as check_int
from qoi import ClassQoI, ComparativeQoI, as_qoi
from slices import Slice

from ..engine import no_grad_batched
from ..engine import frozen
from ._labelled import check_choice, labelled
from ..engine import count_missed, tol_counted
from ._rankings import RANKINGS, rank_units

__all__ = ["RANKINGS", "ABLATIONS", "EssenceRow", "EssenceResult", "essence_check", "roc_auc"]

ABLATIONS = ("mean", "zero")


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """ROC AUC of scores ``positive (..., n⁺)`` against ``negative (..., n⁻)`` along the
    last axis, by the Mann–Whitney U statistic with mid-ranks for ties:
    ``AUC = (Σ rank(x⁺) − n⁺(n⁺+1)/2) / (n⁺ n⁻)``."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    n1, n0 = positive.shape[-1], negative.shape[-1]
    if n1 == 0 or n0 == 0:
        raise ValueError(f"roc_auc: needs at least one positive and one negative score (got {n1} and {n0})")
    ranks = rankdata(np.concatenate([positive, negative], axis=-1), axis=-1)
    return (ranks[..., :n1].sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


@dataclass(frozen=True)
class EssenceRow:
    """The top-``k`` units of one ranking: their AUC, and the median and quartiles of
    the AUCs of ``draws`` random sets of ``k`` units."""

    ranking: str
    k: int
    auc: float
    random_median: float
    random_q25: float
    random_q75: float
    units: tuple[Any, ...]

    @property
    def beats_random(self) -> bool:
        return self.auc > self.random_median


@dataclass(frozen=True, eq=False)
class EssenceResult:
    """The answer of :func:`essence_check`. ``full_auc`` is the unablated model's AUC;
    ``scores[ranking]`` the per-unit (or per-channel) scores the ranking sorted."""

    qoi: str
    layer: str | None
    by: str
    ablation: str
    positives: str
    negatives: str
    n_positive: int
    n_negative: int
    units: int
    draws: int
    full_auc: float
    rows: tuple[EssenceRow, ...]
    scores: dict[str, Tensor]

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(r.k for r in self.rows))

    @property
    def rankings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.ranking for r in self.rows))

    def row(self, ranking: str, k: int) -> EssenceRow:
        for r in self.rows:
            if r.ranking == ranking and r.k == k:
                return r
        raise KeyError(f"EssenceResult: no row for ranking={ranking!r}, k={k} (rankings {self.rankings}, k {self.ks})")

    def auc(self, ranking: str) -> list[float]:
        """The top-k AUC of ``ranking`` for each k, in order."""
        return [self.row(ranking, k).auc for k in self.ks]

    def random_median(self) -> list[float]:
        first = self.rankings[0]
        return [self.row(first, k).random_median for k in self.ks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "qoi": self.qoi,
            "layer": self.layer,
            "by": self.by,
            "ablation": self.ablation,
            "positives": self.positives,
            "negatives": self.negatives,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "units": self.units,
            "draws": self.draws,
            "full_auc": self.full_auc,
            "rows": [
                {
                    "ranking": r.ranking,
                    "k": r.k,
                    "auc": r.auc,
                    "random_median": r.random_median,
                    "random_q25": r.random_q25,
                    "random_q75": r.random_q75,
                    "beats_random": r.beats_random,
                    "units": [list(u) if isinstance(u, tuple) else u for u in r.units],
                }
                for r in self.rows
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        what = "channels" if self.by == "channel" else "units"
        lines = [
            f"essence check of {self.layer} ({self.units} {what}, others set to their {'data-set mean' if self.ablation == 'mean' else 'zero'}): "
            f"AUC of {self.qoi}, {self.positives} ({self.n_positive}) vs {self.negatives} ({self.n_negative}); full model {self.full_auc:.3f}",
            f"{'k':>3}  " + "  ".join(f"{r:>21}" for r in self.rankings) + f"  {'random median [q25, q75]':>26}",
        ]
        for k in self.ks:
            cells = []
            for ranking in self.rankings:
                r = self.row(ranking, k)
                cells.append(f"{r.auc:>19.3f} {'>' if r.beats_random else ' '}")
            r0 = self.row(self.rankings[0], k)
            lines.append(f"{k:>3}  " + "  ".join(cells) + f"  {r0.random_median:>10.3f} [{r0.random_q25:.3f}, {r0.random_q75:.3f}]")
        lines.append(f"('>': beats the median of {self.draws} random draws)")
        return "\n".join(lines)


def essence_check(
    slice: Slice,
    data: Any,
    a: int,
    b: int | None = None,
    *,
    qoi: Any = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    rankings: str | Sequence[str] = "contrast",
    ablation: Literal["mean", "zero"] = "mean",
    by: Literal["unit", "channel"] = "unit",
    draws: int = 100,
    steps: int | None = None,
    tol: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
) -> EssenceResult:
    """Keep the top-``k`` units of ``slice`` (ablate the others) and measure the ROC AUC
    of the quantity between class ``a`` and the comparison population, against random
    sets of ``k`` units.

    Args:
        slice: the layer whose units are kept or ablated.
        data: labelled points ``(x, y)`` or ``{"x": ..., "y": ...}``; the positives are
            the points of class ``a``, the negatives those of class ``b`` (or, with
            ``b=None``, of every other class).
        qoi: the quantity whose AUC is measured and whose influence ranks the units;
            default ``ComparativeQoI(a, b)``, or ``ClassQoI(a)`` when ``b`` is ``None``.
        ks: the numbers of units kept.
        rankings: one or more of ``"contrast"``, ``"influence"``,
            ``"gradient_x_activation"`` (see the module docstring).
        ablation: ``"mean"`` (the unit's mean over all of ``data``) or ``"zero"``.
        by: ``"unit"`` (every element of the slice's unit) or ``"channel"`` (dimension
            0 of the unit: whole channels kept or ablated, ranked by their summed score).
        draws: random sets of ``k`` units per ``k`` (the same sets for every ranking).
        steps, tol: the contrast ranking's line: ``steps`` Gauss–Legendre nodes, or
            (default) per point the steps that meet ``tol`` (``LineDoI(tol=...)``).
        seed: seeds the random sets.

    Returns:
        :class:`EssenceResult`; ``row(ranking, k).beats_random`` says whether the top-k
        AUC is above the median random AUC.
    """
    owner = "essence_check"
    x, y = labelled(data, owner)
    if isinstance(rankings, str):
        rankings = (rankings,)
    rankings = tuple(check_choice(r, "rankings", owner, RANKINGS) for r in rankings)
    if not rankings:
        raise ValueError(f"{owner}: rankings is empty; pick from {RANKINGS}")
    check_choice(ablation, "ablation", owner, ABLATIONS)
    check_choice(by, "by", owner, ("unit", "channel"))
    draws = check_int(draws, "draws", owner)
    ks = tuple(check_int(k, "ks", owner) for k in ks)
    if not ks:
        raise ValueError(f"{owner}: ks is empty")
    positive = y == a
    negative = (y == b) if b is not None else ~positive
    if not bool(positive.any()):
        raise ValueError(f"{owner}: class a={a} has no points in the data")
    if not bool(negative.any()):
        raise ValueError(f"{owner}: the comparison population ({'class ' + str(b) if b is not None else 'the other classes'}) has no points")
    if qoi is None:
        qoi = ComparativeQoI(a, b) if b is not None else ClassQoI(a)
    qoi = as_qoi(qoi)
    if slice.is_input:
        raise ValueError(f"{owner}: needs a slice at a layer (got the input slice)")
    if qoi.layers:
        raise ValueError(f"{owner}: the quantity must read the model's output, not layers {list(qoi.layers)}")

    with frozen(slice.modules()):
        z = no_grad_batched(slice.h, x, batch_size)
    unit_shape = tuple(z.shape[1:])
    if by == "channel" and len(unit_shape) < 2:
        by = "unit"
    n_units = unit_shape[0] if by == "channel" else int(np.prod(unit_shape))
    if max(ks) > n_units:
        raise ValueError(f"{owner}: k={max(ks)} is more than the {n_units} {by}s of {slice.layer!r}")
    fill = z.mean(0) if ablation == "mean" else torch.zeros_like(z[0])
    baseline = z[negative].mean(0)

    scores: dict[str, Tensor] = {}
    for ranking in rankings:
        with tol_counted(owner) as counts:
            ranked = rank_units(ranking, slice, qoi, x, y, (a,), baseline=baseline, steps=steps, tol=tol, batch_size=batch_size, seed=seed)
            count_missed(counts, ranked)
        values = ranked.values
        scores[ranking] = values.flatten(1).sum(1) if by == "channel" else values.flatten()

    evaluated = positive | negative
    z_eval, x_eval = z[evaluated], x[evaluated]
    is_pos = positive[evaluated].numpy()

    def aucs(keep: Tensor) -> np.ndarray:
        """AUC for each row of ``keep`` (``(D, n_units)`` bool); ``g`` runs on several
        draws' ablated activations at once, about ``batch_size`` rows per pass."""
        n = z_eval.shape[0]
        per_pass = max(1, batch_size // n)
        out = np.empty((keep.shape[0], n))
        with frozen(slice.modules()), torch.no_grad():
            for d0 in range(0, keep.shape[0], per_pass):
                masks = keep[d0 : d0 + per_pass]
                m = masks.view(masks.shape[0], 1, -1, *([1] * (len(unit_shape) - 1))) if by == "channel" else masks.view(-1, 1, *unit_shape)
                ablated = torch.where(m, z_eval, fill).flatten(0, 1)
                xb = None if slice.is_split else x_eval.repeat(masks.shape[0], *([1] * (x_eval.ndim - 1)))
                out[d0 : d0 + masks.shape[0]] = qoi(slice.g(ablated, xb)).double().view(masks.shape[0], n).numpy()
        return roc_auc(out[:, is_pos], out[:, ~is_pos])

    full_auc = float(aucs(torch.ones(1, n_units, dtype=torch.bool))[0])
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in ks:
        random_keep = torch.zeros(draws, n_units, dtype=torch.bool)
        for d in range(draws):
            random_keep[d, torch.randperm(n_units, generator=g)[:k]] = True
        random = aucs(random_keep)
        q25, median, q75 = (float(v) for v in np.quantile(random, [0.25, 0.5, 0.75]))
        for ranking in rankings:
            order = scores[ranking].argsort(descending=True, stable=True)[:k]
            keep = torch.zeros(1, n_units, dtype=torch.bool)
            keep[0, order] = True
            auc = float(aucs(keep)[0])
            units = tuple(
                int(i) if by == "channel" or len(unit_shape) == 1 else tuple(int(j) for j in np.unravel_index(int(i), unit_shape))
                for i in order
            )
            rows.append(EssenceRow(ranking, k, auc, median, q25, q75, units))
    rows.sort(key=lambda r: (rankings.index(r.ranking), r.k))
    return EssenceResult(
        qoi=repr(qoi),
        layer=slice.layer,
        by=by,
        ablation=ablation,
        positives=f"class {a}",
        negatives=f"class {b}" if b is not None else f"not class {a}",
        n_positive=int(positive.sum()),
        n_negative=int(negative.sum()),
        units=n_units,
        draws=draws,
        full_auc=full_auc,
        rows=tuple(rows),
        scores=scores,
    )
