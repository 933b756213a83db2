"""Streaming reductions from weighted gradient rows to estimates and standard errors.

Rows arrive in order (anchor-major, then sample index) in batches that may split a
group or an anchor. Three levels, all in bounded memory:

1. rows -> group estimates ``e_g = Σ_{k∈g} w_k ∇_k`` (a partial group at the end of a
   batch is carried into the next);
2. groups -> per-anchor float64 sums ``Σ_g e_g`` and ``Σ_g e_g²`` (times the anchor's
   ``δ = h(x) − h(b)`` first, for ``multiply_activation``), giving the anchor's estimate
   ``m = Σ e_g / G`` and the variance of that mean
   ``(Σ e_g² − G m²) / (G (G − 1))``;
3. anchors -> either the per-anchor results (pointwise DoIs) or float64 population sums
   ``Σ_i m_i`` and ``Σ_i m_i²`` (population DoIs), whose mean has variance
   ``(Σ m² − N μ²) / (N (N − 1))``.

Every level is also kept for channel sums (``unit = (C, *spatial)`` summed over
``spatial``), whose standard errors cannot be derived from the units'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _channel_sums(t: Tensor) -> Tensor | None:
    """``(n, C, *spatial) -> (n, C)``; ``None`` when units have no spatial dims."""
    return t.flatten(2).sum(-1) if t.ndim > 2 else None


@dataclass
class AnchorEstimates:
    """Per-anchor estimates of one chunk: ``mean``/``var`` ``(n, *unit)`` float64 and
    the same for channel sums (``None`` for 1-D units)."""

    mean: Tensor
    var: Tensor
    channel_mean: Tensor | None
    channel_var: Tensor | None


class ChunkAccumulator:
    """Levels 1 and 2 for one chunk of ``n`` anchors with ``S = G·m`` samples each."""

    def __init__(self, samples: int, groups: int) -> None:
        self.samples, self.groups = samples, groups
        self.per_group = samples // groups

    def start(self, n: int, delta: Tensor | None) -> None:
        self.n, self.delta = n, delta
        self.carry: Tensor | None = None
        self.sums: list[Tensor] | None = None  # [Σe, Σe², Σe_c, Σe_c²]

    def _buffers(self, like: Tensor, channels: Tensor | None) -> list[Tensor]:
        if self.sums is None:
            shapes = [like.shape[1:], like.shape[1:]]
            if channels is not None:
                shapes += [channels.shape[1:], channels.shape[1:]]
            self.sums = [torch.zeros((self.n, *s), dtype=torch.float64, device=like.device) for s in shapes]
        return self.sums

    def add(self, rows: Tensor, start: int, stop: int) -> None:
        """Add weighted gradient rows ``start..stop`` (chunk-local row numbers)."""
        m = self.per_group
        first, last = start // m, (stop - 1) // m
        if m == 1:
            groups = rows
        elif start % m == 0 and stop % m == 0:
            groups = rows.view(-1, m, *rows.shape[1:]).sum(1)
        else:
            local = torch.arange(start, stop, device=rows.device) // m - first
            groups = torch.zeros((last - first + 1, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
            groups.index_add_(0, local, rows)
        groups = groups.double()
        if self.carry is not None:
            groups[0] += self.carry
            self.carry = None
        if stop % m:
            self.carry = groups[-1].clone()
            groups, last = groups[:-1], last - 1
        if groups.shape[0] == 0:
            return
        anchor = torch.arange(first, last + 1, device=rows.device) // self.groups
        if self.delta is not None:
            groups = groups * self.delta[anchor]
        channels = _channel_sums(groups)
        sums = self._buffers(groups, channels)
        sums[0].index_add_(0, anchor, groups)
        if self.groups > 1:
            sums[1].index_add_(0, anchor, groups * groups)
        if channels is not None:
            sums[2].index_add_(0, anchor, channels)
            if self.groups > 1:
                sums[3].index_add_(0, anchor, channels * channels)

    def finish(self) -> AnchorEstimates:
        assert self.sums is not None and self.carry is None, "a chunk ended with rows missing"
        g = self.groups
        out: list[Tensor | None] = []
        for total, squares in zip(self.sums[0::2], self.sums[1::2]):
            mean = total / g
            var = (squares - g * mean * mean).clamp_min(0) / (g * (g - 1)) if g > 1 else torch.zeros_like(mean)
            out += [mean, var]
        if len(out) == 2:
            out += [None, None]
        return AnchorEstimates(*out)  # type: ignore[arg-type]


class PopulationMoments:
    """Level 3 for population DoIs: float64 ``Σ m_i`` and ``Σ m_i²`` over anchors."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: list[Tensor] | None = None
        self.single: AnchorEstimates | None = None

    def add(self, est: AnchorEstimates) -> None:
        parts = [est.mean, est.channel_mean] if est.channel_mean is not None else [est.mean]
        if self.sums is None:
            self.sums = [torch.zeros(p.shape[1:], dtype=torch.float64, device=p.device) for p in parts for _ in (0, 1)]
        for i, p in enumerate(parts):
            self.sums[2 * i] += p.sum(0)
            self.sums[2 * i + 1] += (p * p).sum(0)
        self.count += est.mean.shape[0]
        self.single = est if self.count == 1 else None

    def result(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(mean, stderr, channel stderr)``. With one anchor, the standard error is
        that anchor's own Monte Carlo error."""
        assert self.sums is not None
        n = self.count
        out: list[Tensor] = []
        for i in range(0, len(self.sums), 2):
            mean = self.sums[i] / n
            if n > 1:
                var = (self.sums[i + 1] - n * mean * mean).clamp_min(0) / (n * (n - 1))
            else:
                assert self.single is not None
                var = (self.single.var if i == 0 else self.single.channel_var)[0]  # type: ignore[index]
            out += [mean, var.sqrt()]
        return out[0], out[1], (out[3] if len(out) > 2 else None)
