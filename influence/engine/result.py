"""The result of an influence query."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_write

_FORMAT = "influence-result/1"


class Ranked(NamedTuple):
    """One entry of :meth:`InfluenceResult.top`: ``index`` is a unit's index tuple (or a
    channel number), ``value`` its influence, ``stderr`` its standard error."""

    index: int | tuple[int, ...]
    value: float
    stderr: float


@dataclass(frozen=True, eq=False)
class InfluenceResult:
    """Influence estimates with their Monte Carlo standard errors.

    Attributes:
        values: ``(N, *unit)`` for a pointwise DoI over ``N`` anchors, ``unit`` for a
            population DoI; ``unit`` is the shape of one sample of ``h``'s output.
            float64, on the CPU.
        stderr: standard errors, same shape (zero for a deterministic quadrature).
        samples: number of samples (gradient evaluations) that went in.
        anchors: number of anchor points.
        pooled: True for a population DoI.
        query: a description of the query (slice, doi, qoi, seed, ...).
        channel_stderr: standard errors of channel sums (``values`` summed over all
            unit dimensions but the first), ``(N, C)`` or ``(C,)``; ``None`` for 1-D
            units.
        completeness: for an attribution along a line (a ``LineDoI`` with
            ``multiply_activation=True``), the relative completeness gap
            ``|Σ values − Δq| / |Δq|`` with ``Δq = q(end) − q(start)`` of the line,
            from two separate forward passes: ``(N,)`` per anchor, or 0-d for a pooled
            result (its sum against the anchors' mean ``Δq``). It measures the
            quadrature error (and float rounding: see README "Performance") when the
            line lives at the cut (integrated gradients at the input, a slice-space
            line); for an input-space line at an inner cut it also holds what ``h``'s
            nonlinearity adds. ``None`` for other DoIs.
        steps: for a line with ``tol`` (adaptive), the gradient evaluations each anchor
            took, ``(N,)`` in anchor order (a pooled result: its members' steps in
            increasing order); ``None`` otherwise.
    """

    values: Tensor
    stderr: Tensor
    samples: int
    anchors: int
    pooled: bool
    query: dict[str, Any] = field(default_factory=dict)
    channel_stderr: Tensor | None = None
    completeness: Tensor | None = None
    steps: Tensor | None = None

    @property
    def unit_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape if self.pooled else self.values.shape[1:])

    def numpy(self) -> np.ndarray:
        """``values`` as a NumPy array."""
        return self.values.numpy()

    def token_attributions(self) -> Tensor:
        """One value per token of a result at an embedding slice (units ``(L, D)``: ``L``
        tokens of ``D`` features): ``values`` summed over the features, ``(N, L)`` (``(L,)``
        pooled). With ``multiply_activation`` along a line, a sentence's token values sum
        to its ``Δq`` up to ``completeness``."""
        unit = self.unit_shape
        if len(unit) != 2:
            raise ValueError(f"token_attributions: needs units of shape (tokens, features), as at an embedding layer (got {unit})")
        return self.values.sum(-1)

    def top(
        self,
        k: int = 10,
        *,
        by: Literal["unit", "channel"] = "unit",
        agg: Literal["sum", "max"] = "sum",
        anchor: int | None = None,
        absolute: bool = False,
    ) -> list[Ranked]:
        """The ``k`` most influential units (or channels), largest value first.

        Args:
            by: rank single units, or channels (``unit[c, ...]`` aggregated over the
                remaining dimensions with ``agg``: their sum, or their maximum).
            anchor: which anchor's explanation to rank, for a pointwise result with
                more than one anchor.
            absolute: rank by ``|value|`` instead of ``value``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"top: k must be a positive int (got {k!r})")
        if by not in ("unit", "channel"):
            raise ValueError(f"top: by must be 'unit' or 'channel' (got {by!r})")
        if agg not in ("sum", "max"):
            raise ValueError(f"top: agg must be 'sum' or 'max' (got {agg!r})")
        values, stderr, channel_stderr = self.values, self.stderr, self.channel_stderr
        if not self.pooled:
            if anchor is None:
                if values.shape[0] != 1:
                    raise ValueError(f"top: this result explains {values.shape[0]} points; pass anchor=<0..{values.shape[0] - 1}>")
                anchor = 0
            if not 0 <= anchor < values.shape[0]:
                raise ValueError(f"top: anchor must be in 0..{values.shape[0] - 1} (got {anchor})")
            values, stderr = values[anchor], stderr[anchor]
            channel_stderr = None if channel_stderr is None else channel_stderr[anchor]
        elif anchor is not None:
            raise ValueError("top: anchor applies to pointwise results only; this result is pooled")
        if by == "channel" and values.ndim > 1:
            flat_v, flat_s = values.flatten(1), stderr.flatten(1)
            if agg == "sum":
                scores, errors = flat_v.sum(1), channel_stderr
                assert errors is not None
            else:
                scores, where = flat_v.max(1)
                errors = flat_s.gather(1, where[:, None]).squeeze(1)
            order = (scores.abs() if absolute else scores).argsort(descending=True)[:k]
            return [Ranked(int(c), float(scores[c]), float(errors[c])) for c in order]
        flat_v, flat_s = values.flatten(), stderr.flatten()
        order = (flat_v.abs() if absolute else flat_v).argsort(descending=True)[:k]
        shape = values.shape
        out = []
        for i in order.tolist():
            index = tuple(int(j) for j in np.unravel_index(i, shape))
            out.append(Ranked(index if len(index) > 1 else index[0], float(flat_v[i]), float(flat_s[i])))
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result to ``path`` (atomically: a temporary file, then a rename)."""
        payload = {
            "format": _FORMAT,
            "values": self.values,
            "stderr": self.stderr,
            "channel_stderr": self.channel_stderr,
            "samples": self.samples,
            "anchors": self.anchors,
            "pooled": self.pooled,
            "query": self.query,
            "completeness": self.completeness,
            "steps": self.steps,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "InfluenceResult":
        """Read a result written by :meth:`save` (with ``weights_only=True``)."""
        payload = torch.load(os.fspath(path), weights_only=True, map_location="cpu")
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"InfluenceResult.load: {os.fspath(path)!r} is not an influence result file")
        return cls(
            values=payload["values"],
            stderr=payload["stderr"],
            samples=payload["samples"],
            anchors=payload["anchors"],
            pooled=payload["pooled"],
            query=payload["query"],
            channel_stderr=payload["channel_stderr"],
            completeness=payload.get("completeness"),
            steps=payload.get("steps"),
        )

    def __repr__(self) -> str:
        kind = "pooled" if self.pooled else f"{self.anchors} points"
        return f"InfluenceResult({kind}, unit={self.unit_shape}, samples={self.samples}, query={self.query.get('qoi')})"
