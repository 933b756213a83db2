"""The rounds of an adaptive DoI (``LineDoI`` or ``NoiseDoI`` with ``tol``; see
:mod:`doi._adaptive`): the anchors of a chunk that have not met ``tol`` are integrated
together, round by round, until every one has or its cap is reached. A base class of
:class:`._integrator._Integrator`, whose state and batch loop it uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from doi import LineDoI, NoiseDoI, PointwiseDoI
from doi import _adaptive as adaptive
from doi._line import LineNodes
from doi._points import rows as points_rows
from slices._affine import AffinePrefix

from ._chunk import _Chunk, _index_output
from ._moments import AnchorEstimates, ChunkAccumulator, channel_sums, completeness_gap

if TYPE_CHECKING:
    from ._options import _Query


class _AdaptiveRounds:
    """The adaptive rounds of :class:`._integrator._Integrator` (its state, below, and
    its ``_integrate`` and ``_finish``)."""

    query: _Query
    each: PointwiseDoI
    unit: tuple[int, ...]
    by_gap: bool
    affine: AffinePrefix | None
    accumulators: list[list[ChunkAccumulator]]
    chunk_steps: Tensor | None
    chunk_met: Tensor | None

    if TYPE_CHECKING:

        def _integrate(self, chunk: _Chunk) -> None: ...

        def _finish(self, accumulators: list[ChunkAccumulator], chunk: _Chunk) -> AnchorEstimates: ...

    def _adaptive_line(self, chunk: _Chunk, changes: Tensor | None) -> list[AnchorEstimates]:
        """Each anchor's line refined until it meets the DoI's ``tol`` (see
        :mod:`doi._adaptive`), the anchors that are not done batched together round by
        round: per QoI the estimates (times ``δ`` with ``multiply_activation``). Records
        each anchor's gradient evaluations in ``self.chunk_steps`` and whether it met
        ``tol`` in ``self.chunk_met``."""
        each = self.each
        assert isinstance(each, LineDoI) and each.tol is not None
        n, device, tol = chunk.n, chunk.device, each.tol
        # the gap is the quadrature's error only for a line at the cut (an input-space line
        # at an inner cut also holds what h's nonlinearity adds: it cannot go to zero)
        multiply = changes is not None and self.by_gap
        delta = chunk.delta
        steps = torch.zeros(n, dtype=torch.long, device=device)
        met = torch.zeros(n, dtype=torch.bool, device=device)

        def nodes(alpha: Any, weight: Any, m: int) -> LineNodes:
            a = torch.tensor(alpha, dtype=torch.float64, device=device)
            w = torch.tensor(weight, dtype=torch.float64, device=device)
            return LineNodes(a.expand(m, -1), w.expand(m, -1), each.space)

        def gap(est: list[Tensor], rows: Tensor) -> Tensor:  # (m,): the worst QoI's completeness gap
            assert changes is not None and delta is not None
            totals = [(e * delta[rows]).reshape(rows.shape[0], -1).sum(1) for e in est]
            return torch.stack([completeness_gap(t, changes[rows, j]) for j, t in enumerate(totals)], 1).amax(1)

        everyone = torch.arange(n, device=device)
        start, last = adaptive.START_LEVEL[multiply], adaptive.last_level(each.max_steps, multiply)
        if multiply:
            alpha, weight = adaptive.first_round()
            est = [e.mean for e in self._sums_at(chunk, everyone, nodes(alpha, weight, n))]
            steps += adaptive.FIRST_NODES
            met = gap(est, everyone) <= tol
        else:
            est = [torch.zeros((n, *self.unit), dtype=torch.float64, device=device) for _ in self.query.qois]
        active = (~met).nonzero().squeeze(1)
        for level in range(start, last + 1):
            if active.numel() == 0:
                break
            alpha, weight = adaptive.graded_level(level, start)
            sums = [e.mean for e in self._sums_at(chunk, active, nodes(alpha, weight, active.numel()))]
            before = None if multiply or level == start else [e[active] for e in est]
            for e, add in zip(est, sums):
                e[active] = (0 if level == start else e[active] / 2) + add
            steps[active] += alpha.shape[0]
            if multiply:
                done = gap([e[active] for e in est], active) <= tol
            elif before is None:
                done = torch.zeros(active.numel(), dtype=torch.bool, device=device)
            else:
                scale = 1.0 if delta is None else delta[active]
                change = torch.stack(
                    [((e[active] - b) * scale).reshape(active.numel(), -1).norm(dim=1) - tol * (e[active] * scale).reshape(active.numel(), -1).norm(dim=1) for e, b in zip(est, before)], 1
                )
                done = (change <= 0).all(1)
            met[active[done]] = True
            active = active[~done]
        self.chunk_steps, self.chunk_met = steps, met
        if delta is not None:
            for e in est:
                e.mul_(delta)
        return [AnchorEstimates(e, None, None) for e in est]

    def _adaptive_noise(self, chunk: _Chunk) -> list[AnchorEstimates]:
        """Rounds of the DoI's samples for the anchors whose standard error is above
        ``tol ×`` their estimate's norm (every QoI), until none is or ``max_samples``:
        per QoI the estimates over all of an anchor's groups (the groups of every round
        are independent, so they pool: ``m = Σe/G``, ``var(m) = (Σe² − G m²)/(G(G−1))``,
        and the same for channel sums). Records the samples per anchor."""
        each = self.each
        assert isinstance(each, NoiseDoI) and each.tol is not None
        n, device, tol, g = chunk.n, chunk.device, each.tol, each.groups
        rounds = max(1, each.max_samples // each.samples)
        active = torch.arange(n, device=device)
        groups = torch.zeros(n, dtype=torch.float64, device=device)
        sums: list[list[Tensor | None]] = []  # per QoI: Σe, Σe², Σc² (channel sums)
        for r in range(rounds):
            if active.numel() == 0:
                break
            delta = None if chunk.delta is None else chunk.delta[active]
            found = self._sums_at(chunk, active, each.round(r), delta)
            for j, est in enumerate(found):
                assert est.var is not None
                parts: list[Tensor | None] = [g * est.mean, g * (g - 1) * est.var + g * est.mean * est.mean]
                channel = channel_sums(est.mean)
                parts.append(None if channel is None or est.channel_var is None else g * (g - 1) * est.channel_var + g * channel * channel)
                if r == 0:
                    sums.append(parts)
                    continue
                for total, part in zip(sums[j], parts):
                    if total is not None and part is not None:
                        total[active] += part
            groups[active] += g
            m = groups[active]
            done = torch.ones(active.numel(), dtype=torch.bool, device=device)
            for s1, s2, _ in sums:
                assert s1 is not None and s2 is not None
                shape = (-1, *([1] * (s1.ndim - 1)))
                mean = s1[active] / m.view(shape)
                var = ((s2[active] - m.view(shape) * mean * mean) / (m * (m - 1)).view(shape)).clamp_min(0)
                done &= var.reshape(active.numel(), -1).sum(1).sqrt() <= tol * mean.reshape(active.numel(), -1).norm(dim=1)
            active = active[~done]
        self.chunk_steps = (groups * (each.samples // g)).long()
        self.chunk_met = torch.ones(n, dtype=torch.bool, device=device)
        self.chunk_met[active] = False
        out = []
        shape = (-1, *([1] * len(self.unit)))
        for s1, s2, c2 in sums:
            assert s1 is not None and s2 is not None
            mean = s1 / groups.view(shape)
            var = ((s2 - groups.view(shape) * mean * mean) / (groups * (groups - 1)).view(shape)).clamp_min(0)
            channel_var = None
            if c2 is not None:
                cm = channel_sums(mean)
                assert cm is not None
                channel_var = ((c2 - groups[:, None] * cm * cm) / (groups * (groups - 1))[:, None]).clamp_min(0)
            out.append(AnchorEstimates(mean, var, channel_var))
        return out

    def _sums_at(self, chunk: _Chunk, active: Tensor, each: PointwiseDoI, delta: Tensor | None = None) -> list[AnchorEstimates]:
        """The estimates of ``each`` around the chunk's anchors ``active`` (chunk-local
        positions), times ``delta`` (their ``δ``) when given: per QoI, with variances
        when ``each`` has groups. One round of an adaptive DoI (random draws keyed by the
        anchors' own positions); the chunk's own DoI and accumulators are left as they
        were."""
        m = active.shape[0]
        reference = chunk.reference
        if reference is not None:
            reference = reference[:1].expand(m, *reference.shape[1:]) if reference.stride(0) == 0 else reference[active]
        output = None if chunk.anchor_output is None else _index_output(chunk.anchor_output, active)
        frontier = [(end[active], begin[:1].expand(m, *begin.shape[1:]) if begin.stride(0) == 0 else begin[active]) for end, begin in chunk.frontier]
        base = chunk.anchor_ids or list(range(chunk.first_id, chunk.first_id + chunk.n))
        ids = [base[i] for i in active.tolist()]
        sub = _Chunk(points_rows(chunk.x, active), chunk.first_id, chunk.ids[active], chunk.anchors[active], reference, output, delta, frontier, ids)
        saved = self.each, self.accumulators
        self.each = each
        self.accumulators = [[ChunkAccumulator(each.samples, each.groups) for _ in accs] for accs in saved[1]]
        try:
            for accs in self.accumulators:
                for acc in accs:
                    acc.start(m, None if self.affine is not None else delta)
            self._integrate(sub)
            return [self._finish(accs, sub) for accs in self.accumulators]
        finally:
            self.each, self.accumulators = saved
