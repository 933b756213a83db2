"""Non-finite QoI values and gradients, found once per chunk without a host
synchronisation per batch: an anchor's float64 estimate is non-finite when one of its
gradients was, and the sum of the QoI values (already formed for the backward pass)
when one of the values was; only then are the chunk's values recomputed to find which
anchors they belong to. A base class of :class:`._integrator._Integrator`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from doi import PointwiseDoI, Rows

from ._chunk import _Chunk
from ._moments import AnchorEstimates

if TYPE_CHECKING:
    from ._options import _Query


class _NonFiniteCheck:
    """The non-finite check of :class:`._integrator._Integrator` (its state, below, and
    its ``_gradients``)."""

    query: _Query
    each: PointwiseDoI
    batch_size: int
    skip: bool
    skipped_ids: list[list[int]]
    value_totals: list[Tensor]

    if TYPE_CHECKING:

        def _gradients(self, chunk: _Chunk, start: int, stop: int) -> tuple[list[Tensor], list[list[Tensor]], list[Tensor], Rows]: ...

    def _check_finite(self, chunk: _Chunk, estimates: list[AnchorEstimates]) -> list[Tensor | None]:
        """One host synchronisation per chunk: are all estimates and QoI values finite? If
        not, raise (naming the first bad anchor and sample) or mark the bad anchors.

        A float64 sum is finite iff all its terms are (one cheap pass, where ``isfinite``
        is many times slower on the CPU): the per-anchor estimates are summed, and the
        sums of the QoI values over the chunk's batches. A batch sum in float32 or
        float16 may overflow although every value is finite; the values are then checked
        one by one (:meth:`_value_flags`)."""
        n = chunk.n
        parts = self.value_totals
        value_total = parts[0].reshape(-1) if len(parts) == 1 else torch.stack(parts).double().reshape(len(parts), -1).sum(0)  # (Q,)
        total = value_total.sum()
        for est in estimates:
            total = total + est.mean.sum()
        if math.isfinite(float(total)):  # the one wait for the device
            return [None] * len(estimates)
        ok = torch.stack([torch.isfinite(est.mean.reshape(n, -1).sum(1)) for est in estimates], 1)
        if not bool(torch.isfinite(value_total).all()):
            ok &= torch.isfinite(self._value_flags(chunk))
        if bool(ok.all()):
            return [None] * len(estimates)
        if not self.skip:
            self._raise_nonfinite(chunk, ok)
        keep: list[Tensor | None] = []
        for j, good in enumerate(ok.unbind(1)):
            ids = self.skipped_ids[j]
            if len(ids) < 10:
                ids.extend(int(i) + chunk.first_id for i in (~good).nonzero().squeeze(1)[: 10 - len(ids)])
            keep.append(good)
        return keep

    def _value_flags(self, chunk: _Chunk) -> Tensor:
        """``(n, Q)``: ``Σ_k 0·q(x_k)`` over each anchor's samples, NaN where a QoI value
        is not finite (the chunk's samples evaluated again; only after a fault)."""
        flags = torch.zeros((chunk.n, len(self.query.qois)), dtype=torch.float64, device=chunk.device)
        total = chunk.n * self.each.samples
        for start in range(0, total, self.batch_size):
            values, _, _, rows = self._gradients(chunk, start, min(start + self.batch_size, total))
            anchor = rows.anchor
            flags.index_add_(0, anchor, torch.stack(values, 1).to(torch.float64).mul_(0))
        return flags

    def _raise_nonfinite(self, chunk: _Chunk, ok: Tensor) -> None:
        """Find the first non-finite row of the first bad anchor (recomputing that
        anchor's samples) and raise a ``ValueError`` that names it."""
        a = int((~ok).any(1).nonzero()[0])
        j = int((~ok[a]).nonzero()[0])
        q, s = self.query.qois[j], self.each.samples
        anchor = chunk.first_id + a
        where = f"anchor {anchor}" + (" of the population" if self.query.population is not None else f" (inputs[{anchor}])")
        found = None
        for start in range(a * s, (a + 1) * s, self.batch_size):
            values, grads, _, _ = self._gradients(chunk, start, min(start + self.batch_size, (a + 1) * s))
            bad_value = ~torch.isfinite(values[j])
            rows = torch.cat([g.reshape(g.shape[0], -1) for g in grads[j]], 1)
            bad = bad_value | ~torch.isfinite(rows).all(1)
            if bool(bad.any()):
                r = int(bad.nonzero()[0])
                found = (start + r - a * s, "QoI value" if bool(bad_value[r]) else "gradient")
                break
        delta = chunk.delta
        if found is not None:
            what = f"non-finite {found[1]} of {q!r} at {where}, sample {found[0]} (of {s} per anchor)"
        elif delta is not None and not bool(torch.isfinite(delta[a]).all()):
            what = f"non-finite h(x) - h(baseline) (multiply_activation) at {where}"
        else:
            what = f"non-finite estimate of {q!r} at {where}: its gradients are finite but their weighted sum overflows {self.query.dtype}"
        raise ValueError(f"influence: {what}; pass nonfinite='skip' to drop such anchors (counted in result.query['skipped'])")
