"""Streaming reductions from weighted gradient rows to estimates and standard errors.

Rows arrive in order (anchor-major, then sample index) in batches that may split a
group or an anchor. Three levels, all in memory bounded by the batch and the chunk:

1. rows -> group estimates ``e_g = Σ_{k∈g} w_k ∇_k`` (a partial group at the end of a
   batch is carried into the next);
2. groups -> per-anchor float64 sums ``Σ_g e_g`` and ``Σ_g e_g²`` (each ``e_g`` times the
   anchor's ``δ = h(x) − h(b)`` first, for ``multiply_activation``), giving the anchor's
   estimate ``m = Σ e_g / G`` and the variance of that mean
   ``(Σ e_g² − G m²) / (G (G − 1))``. With one group (a quadrature rule, a point) there
   is no variance and rows add straight into the anchor's sum;
3. anchors -> the per-anchor results (pointwise DoIs), or float64 population sums
   ``Σ_i d_i`` and ``Σ_i d_i²`` of ``d_i = m_i − s`` (population DoIs; ``s`` the first
   anchor's estimate) whose mean ``s + Σd/N`` has variance
   ``(Σ d² − (Σd)²/N) / (N (N − 1))``.

Variances are also kept for channel sums (``unit = (C, *spatial)`` summed over
``spatial``): their standard errors cannot be derived from the units'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor


def channel_sums(t: Tensor) -> Tensor | None:
    """``(n, C, *spatial) -> (n, C)``; ``None`` when units have no spatial dims."""
    return t.flatten(2).sum(-1) if t.ndim > 2 else None


@dataclass
class AnchorEstimates:
    """Per-anchor estimates of one chunk: ``mean`` ``(n, *unit)`` float64, and the
    variances of the means of the units and of the channel sums (``None`` when the DoI
    has one group, i.e. no sampling error)."""

    mean: Tensor
    var: Tensor | None
    channel_var: Tensor | None

    def select(self, index: Tensor) -> "AnchorEstimates":
        """The estimates of the anchors ``index`` (copies)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return AnchorEstimates(self.mean[index], pick(self.var), pick(self.channel_var))


class ChunkAccumulator:
    """Levels 1 and 2 for chunks of at most ``capacity`` anchors with ``S = G·m``
    samples each. Buffers are allocated at the first rows and reused across chunks."""

    def __init__(self, samples: int, groups: int) -> None:
        self.samples, self.groups = samples, groups
        self.per_group = samples // groups
        self.buffers: list[Tensor] = []  # Σe, then Σe² and Σe_c² when G > 1

    def start(self, n: int, delta: Tensor | None, target: Callable[[Tensor], Tensor] | None = None) -> None:
        """Begin a chunk of ``n`` anchors. With one group, ``target(like)`` may give the
        ``(n, *unit)`` float64 tensor to sum into (the final results), saving a copy."""
        self.n, self.delta, self.target = n, delta, target
        self.carry: Tensor | None = None
        self.fresh = True

    def _sums(self, like: Tensor, *, overwrite: bool = False) -> list[Tensor]:
        """The chunk's float64 sums, zeroed on the first use in a chunk (unless every
        entry will be overwritten)."""
        if not self.fresh:
            return self.sums
        if self.target is not None and self.groups == 1:
            self.sums = [self.target(like)]
        else:
            if not self.buffers or self.buffers[0].shape[0] < self.n or self.buffers[0].shape[1:] != like.shape[1:]:
                shapes = [like.shape[1:]]
                if self.groups > 1:
                    shapes.append(like.shape[1:])
                    if like.ndim > 2:
                        shapes.append(like.shape[1:2])
                self.buffers = [torch.empty((self.n, *s), dtype=torch.float64, device=like.device) for s in shapes]
            self.sums = [b[: self.n] for b in self.buffers]
        if not overwrite:
            for b in self.sums:
                b.zero_()
        self.fresh = False
        return self.sums

    def add(self, rows: Tensor, start: int, stop: int) -> None:
        """Add weighted gradient rows ``start..stop`` (chunk-local row numbers)."""
        if self.groups == 1:
            self._add_single_group(rows, start, stop)
        else:
            self._add_groups(rows, start, stop)

    def _add_single_group(self, rows: Tensor, start: int, stop: int) -> None:
        """One group per anchor: rows add into their anchor's sum; ``δ`` is applied at
        the end (the sum is linear)."""
        s = self.samples
        (total,) = self._sums(rows, overwrite=s == 1)  # one row per anchor: copied, not added
        first, last = start // s, (stop - 1) // s
        if s == 1:
            total[first : last + 1].copy_(rows)
        elif start % s == 0 and stop % s == 0:
            total[first : last + 1].add_(rows.view(-1, s, *rows.shape[1:]).sum(1))
        else:
            local = torch.arange(start, stop, device=rows.device) // s - first
            part = torch.zeros((last - first + 1, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
            total[first : last + 1].add_(part.index_add_(0, local, rows))

    def _add_groups(self, rows: Tensor, start: int, stop: int) -> None:
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
        s = self.samples
        if self.carry is None and self.delta is None and start % s == 0 and stop % s == 0:
            self._add_whole_anchors(groups, start // s)
            return
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
        sums = self._sums(groups)
        sums[0].index_add_(0, anchor, groups)
        sums[1].index_add_(0, anchor, groups * groups)
        channels = channel_sums(groups)
        if channels is not None:
            sums[2].index_add_(0, anchor, channels * channels)

    def _add_whole_anchors(self, groups: Tensor, first: int) -> None:
        """The batch holds whole anchors: reduce each anchor's ``G`` group estimates (and
        their squares) in the compute dtype with a reshape, then add the per-anchor
        partial sums to the float64 sums — no float64 copy of every row."""
        per_anchor = groups.view(-1, self.groups, *groups.shape[1:])
        n = per_anchor.shape[0]
        sums = self._sums(groups)
        sums[0][first : first + n] += per_anchor.sum(1)
        sums[1][first : first + n] += (per_anchor * per_anchor).sum(1)
        channels = channel_sums(groups)
        if channels is not None:
            c = channels.view(n, self.groups, -1)
            sums[2][first : first + n] += (c * c).sum(1)

    def finish(self) -> AnchorEstimates:
        if self.carry is not None or self.fresh:
            raise RuntimeError("influence: a chunk ended with rows missing (internal error)")
        sums, g = self.sums, self.groups
        mean = sums[0] if g == 1 else sums[0].div_(g)
        if g == 1:
            if self.delta is not None:
                mean.mul_(self.delta)
            return AnchorEstimates(mean, None, None)
        var = (sums[1] - g * mean * mean).clamp_min_(0).div_(g * (g - 1))
        channel_var = None
        if len(sums) > 2:
            channel_mean = channel_sums(mean)
            assert channel_mean is not None
            channel_var = (sums[2] - g * channel_mean * channel_mean).clamp_min_(0).div_(g * (g - 1))
        return AnchorEstimates(mean, var, channel_var)


def completeness_gap(total: Tensor, change: Tensor) -> Tensor:
    """``|Σ attribution − Δq| / |Δq|`` elementwise: how far an attribution along a line is
    from the change of the quantity along it (``0/0`` is 0, ``x/0`` is ``inf``; NaN for
    an anchor skipped for non-finite values)."""
    gap = (total - change).abs()
    return torch.where(change != 0, gap / change.abs(), torch.where(gap == 0, 0.0, float("inf")).to(gap))


def _zeros_like(t: Tensor) -> Tensor:
    """Zero standard errors as a broadcast view (stride 0): no memory for a DoI without
    sampling error."""
    return torch.zeros((), dtype=t.dtype, device=t.device).expand(t.shape)


class PerPointResults:
    """Level 3 for pointwise DoIs: the estimates of ``count`` anchors. Anchors dropped for
    non-finite values (``keep`` false in :meth:`add`) get NaN estimates and standard
    errors, and are marked in ``skipped`` (allocated when ``track_skipped``)."""

    def __init__(self, count: int, track_skipped: bool = False) -> None:
        self.count, self.track_skipped = count, track_skipped
        self.mean: Tensor | None = None
        self.var: Tensor | None = None
        self.channel_var: Tensor | None = None
        self.skipped: Tensor | None = None
        self.changes: Tensor | None = None  # (count,) Δq along each anchor's line, when tracked

    def ensure(self, unit: tuple[int, ...], device: torch.device, groups: int, changes: bool = False) -> None:
        """Allocate the results (zeros) if no chunk did: a process with no anchors of its
        own still takes part in gathering them."""
        if self.mean is None:
            self.mean = torch.zeros((self.count, *unit), dtype=torch.float64, device=device)
            if groups > 1:
                self.var = torch.zeros_like(self.mean)
                if len(unit) > 1:
                    self.channel_var = torch.zeros((self.count, unit[0]), dtype=torch.float64, device=device)
        if self.track_skipped and self.skipped is None:
            self.skipped = torch.zeros(self.count, dtype=torch.bool, device=self.mean.device)
        if changes and self.changes is None:
            self.changes = torch.zeros(self.count, dtype=torch.float64, device=self.mean.device)

    def view(self, offset: int, n: int, like: Tensor) -> Tensor:
        """Where anchors ``offset..offset+n`` go (for a :class:`ChunkAccumulator` to sum
        into directly)."""
        if self.mean is None:
            self.mean = torch.empty((self.count, *like.shape[1:]), dtype=torch.float64, device=like.device)
        return self.mean[offset : offset + n]

    def add(self, offset: int, est: AnchorEstimates, keep: Tensor | None = None, changes: Tensor | None = None) -> None:
        n = est.mean.shape[0]
        if changes is not None:
            if self.changes is None:
                self.changes = changes.new_zeros(self.count)
            self.changes[offset : offset + n] = changes
        if self.mean is None:
            self.mean = est.mean.new_empty((self.count, *est.mean.shape[1:]))
        if self.var is None and est.var is not None:
            self.var = est.var.new_empty((self.count, *est.var.shape[1:]))
        if self.channel_var is None and est.channel_var is not None:
            self.channel_var = est.channel_var.new_empty((self.count, *est.channel_var.shape[1:]))
        if est.mean.data_ptr() != self.mean[offset].data_ptr():
            self.mean[offset : offset + n] = est.mean
        if self.var is not None and est.var is not None:
            self.var[offset : offset + n] = est.var
        if self.channel_var is not None and est.channel_var is not None:
            self.channel_var[offset : offset + n] = est.channel_var
        if keep is not None:
            rows = (~keep).nonzero().squeeze(1) + offset
            for t in (self.mean, self.var, self.channel_var):
                if t is not None:
                    t[rows] = float("nan")
            if self.skipped is None:
                self.skipped = torch.zeros(self.count, dtype=torch.bool, device=self.mean.device)
            self.skipped[rows] = True

    def gather(self, rows: Callable[[Tensor], Tensor]) -> None:
        """Replace every field by ``rows(field)``: the blocks of all processes, in order
        (see :meth:`influence._distributed.Group.gather_rows`)."""
        assert self.mean is not None
        self.mean = rows(self.mean)
        self.var = None if self.var is None else rows(self.var)
        self.channel_var = None if self.channel_var is None else rows(self.channel_var)
        if self.skipped is not None:
            self.skipped = rows(self.skipped.to(torch.uint8)).bool()
        if self.changes is not None:
            self.changes = rows(self.changes)
        self.count = self.mean.shape[0]

    def completeness(self) -> Tensor | None:
        """``(count,)``: each anchor's relative completeness gap (see :func:`completeness_gap`)."""
        if self.changes is None or self.mean is None:
            return None
        return completeness_gap(self.mean.reshape(self.count, -1).sum(1), self.changes)

    def result(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(mean, stderr, channel stderr)``; zero standard errors without groups (NaN
        for skipped anchors)."""
        assert self.mean is not None
        skipped = self.skipped if self.skipped is not None and bool(self.skipped.any()) else None
        if self.var is not None:
            stderr = self.var.sqrt()
        elif skipped is not None:
            stderr = torch.zeros_like(self.mean)
            stderr[skipped] = float("nan")
        else:
            stderr = _zeros_like(self.mean)
        if self.channel_var is not None:
            channel: Tensor | None = self.channel_var.sqrt()
        elif self.mean.ndim > 2:
            flat = self.mean.flatten(2)[:, :, 0]
            if skipped is not None:
                channel = torch.zeros_like(flat)
                channel[skipped] = float("nan")
            else:
                channel = _zeros_like(flat)
        else:
            channel = None
        return self.mean, stderr, channel


class PopulationMoments:
    """Level 3 for population DoIs: float64 sums of ``m_i − s`` and ``(m_i − s)²`` over
    anchors (and over their channel sums), with the shift ``s`` the first anchor's
    estimate, so that the variance ``(Σd² − (Σd)²/N) / (N (N − 1))`` does not cancel
    catastrophically (it is exactly zero when every anchor has the same influence); the
    number of anchors ``count`` and of anchors dropped for non-finite values ``skipped``.
    ``unit`` is the shape of one anchor's estimate."""

    def __init__(self, unit: tuple[int, ...], device: torch.device, changes: bool = False) -> None:
        shapes = [unit] if len(unit) < 2 else [unit, unit[:1]]
        self.sums = [torch.zeros(s, dtype=torch.float64, device=device) for s in shapes for _ in (0, 1)]
        self.shifts = [torch.zeros(s, dtype=torch.float64, device=device) for s in shapes]
        self.count = 0
        self.skipped = 0
        self.single: AnchorEstimates | None = None
        # Σ_i Δq_i over the kept anchors, when the query tracks completeness
        self.change: Tensor | None = torch.zeros((), dtype=torch.float64, device=device) if changes else None

    def add(self, offset: int, est: AnchorEstimates, keep: Tensor | None = None, changes: Tensor | None = None) -> None:
        if keep is not None:
            index = keep.nonzero().squeeze(1)
            self.skipped += est.mean.shape[0] - index.shape[0]
            est = est.select(index)
            changes = None if changes is None else changes[index]
        if changes is not None and self.change is not None:
            self.change = self.change + changes.sum()
        n = est.mean.shape[0]
        if n == 0:
            return
        channels = channel_sums(est.mean)
        parts = [est.mean] if channels is None else [est.mean, channels]
        for i, p in enumerate(parts):
            if self.count == 0:
                self.shifts[i] = p[0].clone()
            d = p - self.shifts[i]
            self.sums[2 * i] += d.sum(0)
            self.sums[2 * i + 1] += (d * d).sum(0)
        self.count += n
        self.single = est.select(torch.zeros(1, dtype=torch.long, device=est.mean.device)) if self.count == 1 else None

    def state(self) -> dict[str, Any]:
        """The sums, shifts and counts, on the CPU (for a checkpoint)."""
        single = None
        if self.single is not None:
            single = [None if t is None else t.cpu() for t in (self.single.mean, self.single.var, self.single.channel_var)]
        return {
            "count": self.count, "skipped": self.skipped, "sums": [s.cpu() for s in self.sums],
            "shifts": [s.cpu() for s in self.shifts], "single": single,
            "change": None if self.change is None else self.change.cpu(),
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`; a ``ValueError`` if its shapes do not fit."""
        sums = state["sums"]
        shifts = state.get("shifts") or [torch.zeros_like(s, device="cpu") for s in self.shifts]  # older files: raw sums
        mine = [*self.sums, *self.shifts]
        if len(sums) + len(shifts) != len(mine) or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip([*sums, *shifts], mine)):
            got = [tuple(a.shape) for a in sums]
            raise ValueError(f"checkpoint: its sums have shapes {got}, this query's {[tuple(b.shape) for b in self.sums]}")
        device = self.sums[0].device
        self.sums = [a.to(device) for a in sums]
        self.shifts = [a.to(device) for a in shifts]
        self.count, self.skipped = int(state["count"]), int(state["skipped"])
        single = state["single"]
        self.single = None if single is None else AnchorEstimates(*(None if t is None else t.to(device) for t in single))
        change = state.get("change")  # absent from older checkpoints: no completeness then
        self.change = None if change is None or self.change is None else change.to(device)

    def reduce(self, all_reduce_sum: Callable[[Tensor], Tensor]) -> "PopulationMoments":
        """The moments summed over processes (``all_reduce_sum`` sums a tensor over all
        of them), as a new object; this one is left as it is. The processes first agree
        on a common shift ``c`` (the count-weighted mean of their shifts) and move their
        sums to it: with ``e = s − c``, ``Σ(m − c) = Σd + n e`` and
        ``Σ(m − c)² = Σd² + 2 e Σd + n e²``."""
        n = float(self.count)
        device = self.sums[0].device
        change = torch.zeros(1, dtype=torch.float64, device=device) if self.change is None else self.change.reshape(1)
        head = torch.cat([torch.tensor([self.count, self.skipped], dtype=torch.float64, device=device), change])
        flat = all_reduce_sum(torch.cat([head, *((n * s).flatten() for s in self.shifts)]))
        count, skipped, flat_change = int(flat[0]), int(flat[1]), flat[2]
        common = [c / max(count, 1) for c in _unflatten(flat[3:], self.shifts)]
        moved: list[Tensor] = []
        for i, (shift, c) in enumerate(zip(self.shifts, common)):
            e, s1, s2 = shift - c, self.sums[2 * i], self.sums[2 * i + 1]
            moved += [s1 + n * e, s2 + 2 * e * s1 + n * e * e]
        own = [torch.zeros_like(s) for s in self.shifts]  # the one anchor's variances, if count == 1
        if self.single is not None:
            for i, t in enumerate((self.single.var, self.single.channel_var)[: len(own)]):
                if t is not None:
                    own[i] = t[0]
        flat = all_reduce_sum(torch.cat([t.flatten() for t in [*moved, *own]]))
        pieces = _unflatten(flat, [*moved, *own])
        out = PopulationMoments.__new__(PopulationMoments)
        out.count, out.skipped = count, skipped
        out.change = None if self.change is None else flat_change
        out.sums, out.shifts = pieces[: len(moved)], common
        var = pieces[len(moved) :]
        out.single = None
        if count == 1:
            out.single = AnchorEstimates((common[0] + out.sums[0])[None], var[0][None], var[1][None] if len(var) > 1 else None)
        return out

    def completeness(self) -> Tensor | None:
        """The relative completeness gap of the pooled attribution: its sum against the
        mean ``Δq`` of the anchors, a 0-d tensor (see :func:`completeness_gap`)."""
        if self.change is None or self.count == 0:
            return None
        mean = self.result()[0]
        return completeness_gap(mean.sum(), self.change / self.count)

    def result(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(mean, stderr, channel stderr)``. With one anchor, the standard error is
        that anchor's own Monte Carlo error."""
        n = self.count
        out: list[Tensor] = []
        for i, shift in enumerate(self.shifts):
            s1, s2 = self.sums[2 * i], self.sums[2 * i + 1]
            if n > 1:
                var = (s2 - s1 * s1 / n).clamp_min(0) / (n * (n - 1))
            else:
                assert self.single is not None
                own = self.single.var if i == 0 else self.single.channel_var
                var = own[0] if own is not None else torch.zeros_like(shift)
            out.append(shift + s1 / n)
            out.append(var.sqrt())
        return out[0], out[1], (out[3] if len(out) > 2 else None)


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """``flat`` cut into tensors shaped like ``like``, in order."""
    pieces, at = [], 0
    for t in like:
        pieces.append(flat[at : at + t.numel()].view(t.shape))
        at += t.numel()
    return pieces


class StepLog:
    """Adaptive DoIs: how many gradient evaluations each anchor took and whether it met
    the tolerance. Pointwise (``count`` anchors): one entry per anchor, in order. Pooled
    (``count=None``): a histogram of the steps (``max_steps + 1`` bins) and the number of
    anchors that missed the tolerance, which add over chunks and processes."""

    def __init__(self, count: int | None, max_steps: int, device: torch.device) -> None:
        self.count = count
        if count is None:
            self.hist = torch.zeros(max_steps + 1, dtype=torch.float64, device=device)
            self.missed = torch.zeros((), dtype=torch.float64, device=device)
        else:
            self.steps = torch.zeros(count, dtype=torch.float64, device=device)
            self.met = torch.zeros(count, dtype=torch.float64, device=device)

    def add(self, offset: int, steps: Tensor, met: Tensor) -> None:
        if self.count is None:
            self.hist += torch.bincount(steps, minlength=self.hist.shape[0])[: self.hist.shape[0]].to(self.hist)
            self.missed += (~met).sum()
        else:
            n = steps.shape[0]
            self.steps[offset : offset + n] = steps.to(self.steps)
            self.met[offset : offset + n] = met.to(self.met)

    def gather(self, rows: Callable[[Tensor], Tensor]) -> None:
        """Pointwise, distributed: every process's blocks, in order."""
        self.steps, self.met = rows(self.steps), rows(self.met)

    def reduce(self, all_reduce_sum: Callable[[Tensor], Tensor]) -> "StepLog":
        """Pooled, distributed: the histograms summed over processes, as a new object."""
        out = StepLog.__new__(StepLog)
        out.count = None
        flat = all_reduce_sum(torch.cat([self.hist, self.missed.reshape(1)]))
        out.hist, out.missed = flat[:-1], flat[-1]
        return out

    def state(self) -> dict[str, Tensor]:
        return {"hist": self.hist.cpu(), "missed": self.missed.cpu()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        if state["hist"].shape != self.hist.shape:
            raise ValueError(f"checkpoint: its step histogram has {state['hist'].shape[0]} bins, this query's {self.hist.shape[0]}")
        self.hist, self.missed = state["hist"].to(self.hist.device), state["missed"].to(self.hist.device)

    def result(self) -> tuple[Tensor, int]:
        """Each anchor's steps (pooled: in increasing order) and how many missed ``tol``."""
        if self.count is None:
            counts = self.hist.round().long()
            return torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts), int(self.missed.round())
        return self.steps.round().long(), int((self.met == 0).sum())
