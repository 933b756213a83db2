"""Summaries of a query's result for tables and files: top-k, regions, top tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import InfluenceResult
from ..workflows import Rect
from .checks import QueryError, join_path
from .running import BuiltQuery

# --- summaries of results: top-k and regions ------------------------------------------------------


def mean_over_anchors(result: InfluenceResult) -> InfluenceResult:
    """A pointwise result's mean over its anchors, as a pooled result; the standard error
    of the mean is ``sqrt(Σ stderr²) / N`` (independent Monte Carlo errors)."""
    n = result.values.shape[0]
    channel = None if result.channel_stderr is None else result.channel_stderr.pow(2).sum(0).sqrt() / n
    return InfluenceResult(
        values=result.values.mean(0),
        stderr=result.stderr.pow(2).sum(0).sqrt() / n,
        samples=result.samples,
        anchors=result.anchors,
        pooled=True,
        query=result.query,
        channel_stderr=channel,
    )


def top_table(result: InfluenceResult, top: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranked rows of ``output.top`` as ``{rank, index, value, stderr}``."""
    anchor = top["anchor"]
    if not result.pooled and anchor == "mean" and result.values.shape[0] > 1:
        ranked = mean_over_anchors(result).top(top["k"], by=top["by"], agg=top["agg"], absolute=top["absolute"])
    else:
        which = None if result.pooled else (0 if anchor == "mean" else anchor)
        ranked = result.top(top["k"], by=top["by"], agg=top["agg"], absolute=top["absolute"], anchor=which)
    return [
        {"rank": i, "index": list(r.index) if isinstance(r.index, tuple) else r.index, "value": r.value, "stderr": r.stderr}
        for i, r in enumerate(ranked, 1)
    ]


def region_table(built: BuiltQuery, result: InfluenceResult, regions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per region: the sum of influence in it and its share of the total |influence|
    (per point, then averaged over the points for a pointwise result)."""
    values = result.values if not result.pooled else result.values[None]
    unit = tuple(values.shape[1:])
    path = join_path(built.spec.path, "output.regions")
    rows = []
    total = values.abs().flatten(1).sum(1)
    for name, region in regions.items():
        where = join_path(path, name)
        if len(unit) < 2:
            raise QueryError(where, f"regions need units with at least two dims (H, W); the unit shape is {unit}")
        if region["box"] is not None:
            rect = Rect(**region["box"])
            h, w = unit[-2:]
            if not rect.fits(h, w):
                raise QueryError(join_path(where, "box"), f"{rect} does not fit units of spatial shape ({h}, {w})")
            mask = rect.mask(h, w).expand(values.shape)
        else:
            mask = built.data.array(region["mask"], join_path(where, "mask"))
            if mask.dtype != torch.bool:
                raise QueryError(join_path(where, "mask"), f"array {region['mask']!r} must be bool (got {mask.dtype})")
            if not result.pooled and mask.ndim >= 1 and mask.shape[0] == built.data.rows and mask.ndim in (3, len(unit) + 1):
                mask = mask[built.rows]
                mask = mask if mask.ndim == len(unit) + 1 else mask.view(mask.shape[0], *([1] * (len(unit) - 2)), *mask.shape[1:])
            try:
                mask = torch.broadcast_to(mask, values.shape)
            except RuntimeError:
                per_point = " one per point," if not result.pooled else ""
                raise QueryError(
                    join_path(where, "mask"), f"array {region['mask']!r} of shape {tuple(mask.shape)} does not fit units of shape {unit}; give (H, W),{per_point} or the unit shape"
                ) from None
        if region["invert"]:
            mask = ~mask
        inside = torch.where(mask, values, torch.zeros((), dtype=values.dtype))
        sums = inside.flatten(1).sum(1)
        share = inside.abs().flatten(1).sum(1) / total.clamp_min(torch.finfo(values.dtype).tiny)
        rows.append({"region": name, "sum": float(sums.mean()), "share": float(share.mean()), "units": int(mask[0].sum())})
    return rows


def is_token_result(built: BuiltQuery, result: InfluenceResult) -> bool:
    """A pointwise result at a layer with one vector per token of the inputs' token ids
    (units ``(L, D)``, e.g. the word embeddings): shown token by token."""
    ids = built.data.ids
    unit = result.unit_shape
    return not result.pooled and not built.slice.is_input and ids is not None and len(unit) == 2 and unit[0] == ids.shape[1]


def token_table(built: BuiltQuery, result: InfluenceResult) -> list[dict[str, Any]] | None:
    """Per explained sentence of a token result (see :func:`is_token_result`): its data
    row, and the token strings and attributions (:meth:`InfluenceResult.token_attributions`)
    of its real tokens, padding (attention mask 0) dropped; ``None`` for other results."""
    if not is_token_result(built, result):
        return None
    values = result.token_attributions()
    mask = built.data.mask
    out = []
    for i, row in enumerate(built.rows.tolist()):
        words = built.data.token_strings(row)
        keep = [True] * len(words) if mask is None else [bool(k) for k in mask[row].tolist()]
        out.append(
            {
                "row": row,
                "positions": [j for j, k in enumerate(keep) if k],
                "tokens": [w for w, k in zip(words, keep) if k],
                "values": [float(v) for v, k in zip(values[i].tolist(), keep) if k],
            }
        )
    return out
