"""The one integrator behind every method.

Internal influence of a quantity ``q`` at a slice ``f = g ∘ h`` under a distribution of
interest ``D`` is

    χ = E_{x ~ D} [ ∂(q∘g)/∂z |_{z = h(x)} ]        (Leino et al. 2018),

estimated by weighted samples. Pointwise DoIs give one ``χ`` per anchor, population DoIs
one for the whole population. With ``multiply_activation`` each anchor's ``χ`` is
multiplied by ``δ = h(x) − h(b)`` (``b`` the DoI's reference point, zero if none): for a
line DoI at the input this is integrated gradients, ``Σ δ·χ ≈ q(x) − q(b)``.

The loop: anchors stream in chunks (:mod:`._chunk`); each chunk is expanded into
``n·S`` sample rows, cut into batches of ``batch_size`` rows (a batch may mix anchors);
for input-space DoIs one forward pass per batch with the gradient taken at the detached
cut, for slice-space DoIs ``h`` runs once per anchor and only ``g`` per sample. For line
DoIs the affine layers right after the line's space run once per anchor (lines stay
lines through them; :mod:`slices._affine`). Several QoIs share the forward pass. Sums
accumulate on the device in float64 (:mod:`._moments`); results move to the CPU once at
the end. Adaptive DoIs integrate a chunk in rounds (:mod:`._adaptive_rounds`).

Around the loop: the anchors are sharded over the processes of an initialised
``torch.distributed`` group (:mod:`._distributed`); a population query can be
checkpointed and resumed (:mod:`._checkpoint`); non-finite QoI values and gradients are
found once per chunk, without a host synchronisation per batch (:mod:`._nonfinite`).

The entry points, :func:`internal_influence` and :func:`input_influence`, are in
:mod:`._influence`; a query's options in :mod:`._options`.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import sys
import time
import warnings
from typing import Any, Iterator

import torch
from torch import Tensor

from doi import LineDoI, NoiseDoI, PopulationDoI, Rows
from doi._points import Points, is_structured
from doi._points import apply as points_apply
from doi._points import count as points_count
from doi._points import rows as points_rows
from doi._points import tensors as points_tensors
from qoi import QoIContext
from slices._affine import AffinePrefix

from ._adaptive_rounds import _AdaptiveRounds
from ._checkpoint import TAIL_ROWS, fingerprint, hash_rows
from ._chunk import _Chunk, _chunk_size, _delta, _in_layout, _index_output, _line_ends, _row_table, _set_layout
from ._distributed import Group
from ._inputs import _Ahead, _check_points, _check_structured, _Fitting, _rebatch, _skip, _versions, no_grad_batched
from ._moments import AnchorEstimates, ChunkAccumulator, PerPointResults, PopulationMoments, StepLog
from ._nonfinite import _NonFiniteCheck
from ._options import _Query
from ._recording import LayerRecorder
from .result import InfluenceResult


class _Integrator(_AdaptiveRounds, _NonFiniteCheck):
    """The loop of :func:`internal_influence` for one validated query (this process's
    share of it, under ``torch.distributed``)."""

    def __init__(self, query: _Query, progress: Any, group: Group | None) -> None:
        self.query, self.progress, self.group = query, progress, group
        there = query.survey.all_on(query.device, query.dtype)
        self.slice = query.slice if there else query.slice.moved(query.device, query.dtype)
        self.each = query.each
        self.batch_size = query.batch_size
        self.in_slice_space = self.each.space == "slice" and not self.slice.is_input
        self.layers = list(dict.fromkeys(name for q in query.qois for name in q.layers))
        self.recorder = LayerRecorder(self.layers)
        cut = self.slice.cut
        self.cut_layer = cut.layer if cut is not None and cut.at == "output" and cut.layer in self.layers else None
        self.first_batch = True
        self.copy_inputs = False  # set by _probe: does h write into its input?
        self.ahead: _Ahead | None = None  # the chunks, read one ahead
        # an attribution along a line: its sum is checked against q(end) − q(start)
        self.track_completeness = query.multiply and isinstance(self.each, LineDoI)
        # a line whose steps each anchor chooses to meet a tolerance (doi._adaptive)
        self.adaptive = isinstance(self.each, (LineDoI, NoiseDoI)) and self.each.adaptive
        self.cap = 0 if not self.adaptive else self.each.max_steps if isinstance(self.each, LineDoI) else self.each.max_samples
        self.step_log: StepLog | None = None
        self.chunk_steps: Tensor | None = None  # set by _adaptive_line for the chunk
        self.chunk_met: Tensor | None = None
        self.unit: tuple[int, ...] = ()
        # an adaptive line stops on its completeness gap when that is the quadrature's error:
        # an attribution along a line at the cut; else on successive estimates agreeing
        self.by_gap = query.multiply and (self.in_slice_space or self.slice.is_input)
        auto = query.channels_last is None and query.device.type == "cpu" and query.survey.has_conv
        self.channels_last: bool | str = "auto" if auto else bool(query.channels_last)
        # set by _probe when the query can use one: the affine prefix of g (a line in the
        # cut's space) or of h (a line in input space, the cut inside the model)
        self.affine: AffinePrefix | None = None
        self.h_affine: AffinePrefix | None = None
        self.accumulators: list[list[ChunkAccumulator]] = []  # per QoI, per differentiated tensor
        self.sinks: list[Any] = []
        self.skip = query.nonfinite == "skip"
        self.skipped_ids: list[list[int]] = [[] for _ in query.qois]  # the first few, for the warning
        self.value_totals: list[Tensor] = []  # per batch of the chunk: Σ q over its samples, per QoI
        self.row_table: tuple[Tensor, Tensor] | None = None  # see _rows
        self.row_table_samples = 0
        self.g = torch.compile(self.slice.g) if query.compile else self.slice.g
        self.leaf_dtype = query.dtype if query.autocast is not None else None  # the cut stays in dtype under autocast

    def run(self) -> list[InfluenceResult]:
        with self.recorder.attached(self.slice.model) as self.activations:
            if self.query.population is not None:
                self._run_population()
            else:
                self._run_pointwise()
        return self._results()

    # --- the two kinds of query ---------------------------------------------------------

    def _run_pointwise(self) -> None:
        query, group = self.query, self.group
        inputs = query.inputs
        total = points_count(inputs)
        lo, hi = (0, total) if group is None else group.block(total)
        chunk_size, unit = self._probe(inputs)
        self._agree(chunk_size)
        self.sinks = [PerPointResults(hi - lo, self.skip) for _ in query.qois]
        if self.adaptive:
            self.step_log = StepLog(hi - lo, self.cap, query.device)
        failure: Exception | None = None
        self.ahead = _Ahead(((start, points_rows(inputs, slice(start, min(hi, start + chunk_size)))) for start in range(lo, hi, chunk_size)), query.device)
        for start, x in self.ahead:
            try:
                estimates, keep, gaps = self._chunk(x, start, start - lo)
            except Exception as e:
                if group is None:
                    raise
                failure = e  # raised on every process below, not here: the others would hang
                break
            for sink, est, k, dq in zip(self.sinks, estimates, keep, gaps):
                sink.add(start - lo, est, k, dq)
            self._log_steps(start - lo)
            self.progress.update(points_count(x))
        if group is not None:
            self._raise_failures(failure)
            for sink in self.sinks:
                sink.ensure(unit, query.device, self.each.groups, self.track_completeness)
                sink.gather(lambda t: group.gather_rows(t, total))
            if self.step_log is not None:
                self.step_log.gather(lambda t: group.gather_rows(t, total))

    def _run_population(self) -> None:
        """Chunks of the population stream in order (under ``torch.distributed``, chunk
        ``i`` on rank ``i mod W``), with checkpoints at chunk boundaries."""
        query, group = self.query, self.group
        assert query.population is not None
        parts: Iterator[Points] = iter(query.population.anchors(self.batch_size))
        first = next((p for p in parts if points_count(p)), None)
        if first is None:
            raise ValueError(f"doi: {query.doi!r} has no points")
        owner = f"doi: the data of {query.doi!r}"
        if is_structured(first):
            _check_structured(first, query.slice, query.each, owner)
        else:
            _check_points(first, query.slice, query.each, owner)
        chunk_size, unit = self._probe(first)
        hint = query.population.size_hint()
        if group is not None and hint:  # every process gets a share of a small population
            step = self.batch_size // math.gcd(self.batch_size, self.each.samples)
            share = -(-hint // group.world)
            chunk_size = min(chunk_size, max(step, -(-share // step) * step))
        self._agree(chunk_size)
        self.sinks = [PopulationMoments(unit, query.device, self.track_completeness) for _ in query.qois]
        if self.adaptive:
            self.step_log = StepLog(None, self.cap, query.device)
        stream: Iterator[Points] = itertools.chain([first], parts)
        position = 0
        if query.checkpoint is not None:
            state = self._resume(first)
            if state is not None:
                position = state["position"]
                stream = _skip(stream, position, state["tail"])
                self.progress.update(position)
            self.last_save = time.monotonic()
        chunks: Iterator[Points | int] = _rebatch(stream, chunk_size)
        if group is not None and query.checkpoint is None and hint and query.population.take(0, 1) is not None:
            chunks = self._own_chunks(query.population, hint, chunk_size, group)
        last: Points | int | None = None  # the last chunk consumed by this run (raw, as read)
        clean = True  # the sinks, `position` and `last` agree (not in the middle of an update)
        failure: Exception | None = None  # distributed: this process's error, raised by all at the end
        self.ahead = _Ahead(chunks, query.device)
        try:
            for index, raw in enumerate(self.ahead):
                size = raw if isinstance(raw, int) else points_count(raw)
                if failure is None and (group is None or group.owns(index)):
                    assert not isinstance(raw, int)
                    try:
                        estimates, keep, gaps = self._chunk(raw, position, 0)
                    except Exception as e:
                        if group is None:
                            raise
                        failure = e
                    else:
                        clean = False
                        for sink, est, k, dq in zip(self.sinks, estimates, keep, gaps):
                            sink.add(position, est, k, dq)
                        self._log_steps(position)
                position, last = position + size, raw
                clean = True
                self.progress.update(size)
                if group is None:
                    if query.checkpoint is not None and time.monotonic() - self.last_save >= query.checkpoint.every:
                        self._save(position, last)
                elif (index + 1) % group.world == 0:  # a round of W chunks is done
                    due, failed = self._round(failure)
                    if failed:
                        break
                    if due:
                        self._save(position, last)
        except BaseException:
            # Ctrl-C or an error: keep what is done (alone only: other processes may be
            # anywhere, and a collective could hang)
            if query.checkpoint is not None and group is None and clean and last is not None:
                try:
                    self._save(position, last)
                except Exception as e:  # never hide the original error
                    warnings.warn(f"influence: could not save the checkpoint ({e})", RuntimeWarning, stacklevel=2)
            raise
        if group is not None:
            self._raise_failures(failure)
            self.sinks = [sink.reduce(group.all_reduce_sum) for sink in self.sinks]
            if self.step_log is not None:
                self.step_log = self.step_log.reduce(group.all_reduce_sum)
        if query.checkpoint is not None and last is not None and (group is None or group.rank == 0):
            self._write(position, last, self.sinks, self.step_log)
        if all(sink.count == 0 for sink in self.sinks):
            raise ValueError(f"influence: every anchor of {query.doi!r} has non-finite QoI values or gradients; nothing to average")

    @staticmethod
    def _own_chunks(population: PopulationDoI, size: int, chunk_size: int, group: Group) -> Iterator[Points | int]:
        """The chunks of a population that can be read out of order: this process's own
        chunks read with ``population.take``, the others' as their sizes only (unread)."""
        for index, start in enumerate(range(0, size, chunk_size)):
            stop = min(size, start + chunk_size)
            if group.owns(index):
                part = population.take(start, stop)
                got = 0 if part is None else points_count(part)
                if part is None or got != stop - start:
                    raise ValueError(f"doi: {population!r} gave {got} points for {start}..{stop - 1}; its size changed")
                yield part
            else:
                yield stop - start

    # --- set-up ------------------------------------------------------------------------------

    def _probe(self, first: Points) -> tuple[int, tuple[int, ...]]:
        """The chunk size for inputs like ``first``, and the shape of one unit (``h`` runs
        on one point). Finds the affine prefix to use, if any, and sets up the
        accumulators: one per QoI and differentiated tensor (the cut, or the frontier)."""
        x = self._to_device(points_rows(first, slice(0, 1)))
        z = x
        if not self.slice.is_input:
            x = points_apply(x, torch.Tensor.clone)  # ours: h may write into it
            version = _versions(x)
            with torch.no_grad(), _Fitting(self.query, x):
                z = self.slice.h(x)
            # h writes into its input (``x.relu_()``, a first ``ReLU(inplace=True)``): from
            # now on it only gets copies, never the caller's points or the chunk's anchors
            self.copy_inputs = _versions(x) != version
        unit = self.unit = tuple(z.shape[1:])
        each = self.each
        if self.query.affine_prefix and each.affine_equivariant and each.samples > 1 and each.groups == 1:
            if self.in_slice_space or self.slice.is_input:
                if not self.layers:  # the layers a NeuronQoI reads must run as modules
                    self.affine = self.slice.g_affine_prefix(z)
            elif self.slice.is_split:
                self.h_affine = self.slice.h_affine_prefix(x)
        frontier: tuple[Tensor, ...] = ()
        with torch.no_grad():
            if self.affine is not None:
                frontier = self.affine.frontier(z)
            elif self.h_affine is not None:
                frontier = self.h_affine.frontier(x)
        space = z if self.affine is not None else x
        if frontier and self.query.device.type == "cuda" and sum(t.numel() for t in frontier) > space.numel():
            # a GPU is bound by memory traffic, not arithmetic: drawing samples and taking
            # gradients at a frontier larger than the line's space (ResNet's 7×7 stride-2
            # stem: 64×112×112 values for 3×224×224) costs more than the layers it skips
            self.affine = self.h_affine = None
            frontier = ()
        wrt = len(frontier) if self.affine is not None else 1  # the tensors gradients are taken at
        self.accumulators = [[ChunkAccumulator(each.samples, each.groups) for _ in range(wrt)] for _ in self.query.qois]
        numel = sum(t[0].numel() for t in frontier)
        numel_one = sum(math.prod(t.shape[1:]) for t in points_tensors(x))
        return _chunk_size(self.batch_size, each.samples, numel_one, math.prod(unit), numel), unit

    def _agree(self, chunk_size: int) -> None:
        """Check that every process runs the same query (they must cut the anchors into
        the same chunks), and use rank 0's seed when none was given."""
        group, query = self.group, self.query
        if group is None:
            return
        mine = (query.seed if query.seed_given else None, query.signature(), chunk_size)
        everyone = group.all_gather_object((query.seed, mine))
        for r, (_, theirs) in enumerate(everyone):
            if theirs != everyone[0][1]:
                what = "seed" if theirs[1:] == everyone[0][1][1:] else "query (options, DoI, QoIs, data size or chunking)"
                raise ValueError(
                    f"distributed: process {r} runs a different {what} from process 0; every process must make the same call "
                    "(give the same seed, or seed=None on all of them)"
                )
        query.seed = everyone[0][0]

    def _resume(self, first: Points) -> dict[str, Any] | None:
        """Load and check the checkpoint (on rank 0; the others learn the position from
        it), and continue its sums. ``None`` when there is none yet."""
        query, group = self.query, self.group
        assert query.checkpoint is not None
        state, error, now = None, None, None
        if group is None or group.rank == 0:
            try:
                state = query.checkpoint.load()
                if state is not None and not query.seed_given:
                    query.seed = int(state["seed"])
                now = fingerprint(query, first)
                if state is not None:
                    query.checkpoint.check(state, now)
                    if len(state["sinks"]) != len(self.sinks):
                        raise ValueError(f"checkpoint: {query.checkpoint.path!r} holds {len(state['sinks'])} QoIs, this query {len(self.sinks)}")
                    for sink, saved in zip(self.sinks, state["sinks"]):
                        sink.load_state(saved)
                    if self.step_log is not None and state.get("steps") is not None:
                        self.step_log.load_state(state["steps"])
            except ValueError as e:
                error = str(e)
        if group is not None:
            head = None if state is None else {k: state[k] for k in ("position", "tail")}
            error, head, query.seed, now = group.broadcast_object((error, head, query.seed, now))
            if group.rank != 0:
                state = head
        if error is not None:
            raise ValueError(error)
        self.fingerprint = now
        return state

    # --- checkpoints ---------------------------------------------------------------------------

    def _round(self, failure: Exception | None) -> tuple[bool, bool]:
        """At the end of a round of ``W`` chunks (distributed): whether to save a
        checkpoint (rank 0's clock decides) and whether some process has failed (then
        all stop, and :meth:`_raise_failures` reports it). One small all-reduce."""
        assert self.group is not None
        checkpoint = self.query.checkpoint
        due = checkpoint is not None and self.group.rank == 0 and time.monotonic() - self.last_save >= checkpoint.every
        flags = self.group.all_reduce_sum(torch.tensor([float(due), float(failure is not None)], dtype=torch.float64))
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _raise_failures(self, failure: Exception | None) -> None:
        """Raise, on every process, the first error of any process (distributed)."""
        assert self.group is not None
        reports = self.group.all_gather_object(None if failure is None else (type(failure).__name__, str(failure)))
        for r, report in enumerate(reports):
            if report is None:
                continue
            if failure is not None and r == self.group.rank:
                raise failure
            kind, message = report
            if kind in ("ValueError", "TypeError"):
                raise (ValueError if kind == "ValueError" else TypeError)(message)
            raise RuntimeError(f"distributed: process {r} failed with {kind}: {message}")

    def _save(self, position: int, last: Points) -> None:
        """Save the sums after ``position`` points (the sums of all processes, written by
        rank 0, when distributed)."""
        sinks = self.sinks if self.group is None else [sink.reduce(self.group.all_reduce_sum) for sink in self.sinks]
        steps = self.step_log if self.group is None or self.step_log is None else self.step_log.reduce(self.group.all_reduce_sum)
        if self.group is None or self.group.rank == 0:
            self._write(position, last, sinks, steps)
        self.last_save = time.monotonic()

    def _write(self, position: int, last: Points, sinks: list[Any], steps: StepLog | None) -> None:
        assert self.query.checkpoint is not None
        m = min(TAIL_ROWS, points_count(last))
        self.query.checkpoint.save(
            {
                "fingerprint": self.fingerprint,
                "seed": self.query.seed,
                "position": position,
                "tail": [m, hash_rows(points_rows(last, slice(-m, None)))],
                "sinks": [sink.state() for sink in sinks],
                "steps": None if steps is None else steps.state(),
            }
        )

    # --- one chunk ------------------------------------------------------------------------------

    def _log_steps(self, offset: int) -> None:
        """Record the chunk's steps per anchor (adaptive DoIs)."""
        if self.step_log is not None and self.chunk_steps is not None and self.chunk_met is not None:
            self.step_log.add(offset, self.chunk_steps, self.chunk_met)

    def _chunk(self, x: Points, first_id: int, local: int) -> tuple[list[AnchorEstimates], list[Tensor | None], list[Tensor | None]]:
        """Integrate the anchors ``x`` (ids ``first_id…``; ``local``: where they go in
        per-point results): their estimates per QoI, which anchors to keep (``None``:
        all) after the non-finite check, and per QoI the change ``Δq`` along each
        anchor's line (``None`` unless completeness is tracked)."""
        # to a GPU from memory pinned by _Ahead: without holding up the host (never towards
        # the host, where it would be read before it has arrived)
        x = self._to_device(x)
        with _Fitting(self.query, x) if self.first_batch else contextlib.nullcontext():
            owned = (x.clone() if x.is_inference() else x) if isinstance(x, Tensor) else points_apply(x, lambda t: t.clone() if t.is_inference() else t)
            chunk = self._prepare(owned, first_id, local)
        if self.adaptive and isinstance(self.each, NoiseDoI):
            estimates = self._adaptive_noise(chunk)
            changes = None
        elif self.adaptive:
            changes = self._line_changes(chunk) if self.query.multiply else None
            estimates = self._adaptive_line(chunk, changes)
        else:
            self._integrate(chunk)
            estimates = [self._finish(accs, chunk) for accs in self.accumulators]
            changes = self._line_changes(chunk) if self.track_completeness else None
        gaps: list[Tensor | None] = list(changes.unbind(1)) if changes is not None else [None] * len(estimates)
        if self.ahead is not None:
            self.ahead.fetch()  # read the next chunk while the device works on this one
        return estimates, self._check_finite(chunk, estimates), gaps

    def _finish(self, accumulators: list[ChunkAccumulator], chunk: _Chunk) -> AnchorEstimates:
        """One QoI's estimates for the chunk; at an affine prefix's frontier, the sums
        pulled back to the cut (``Σ_i A_iᵀ c_i``, batch by batch), then times ``δ``."""
        if self.affine is None:
            return accumulators[0].finish()
        sums = [acc.finish().mean for acc in accumulators]
        dtype, b = self.query.dtype, self.batch_size
        mean = torch.cat(
            [
                self.affine.pull_back(chunk.anchors[i : i + b].contiguous(), [s[i : i + b].to(dtype) for s in sums]).double()
                for i in range(0, chunk.n, b)
            ]
        )
        if chunk.delta is not None:
            mean.mul_(chunk.delta)
        return AnchorEstimates(mean, None, None)

    def _line_changes(self, chunk: _Chunk) -> Tensor:
        """``(n, Q)`` float64: ``Δq = q(end) − q(start)`` of each anchor's line, for each
        QoI, from two plain forward passes (no grad, no affine prefix): at the anchors
        and at their references, in the DoI's space. A baseline shared by every anchor
        runs once, unless a QoI reads the anchor's output (``MaxClassQoI``) or ``g``
        reads the anchor's input (a hook slice)."""
        n, b, qois = chunk.n, self.batch_size, self.query.qois
        assert chunk.reference is not None
        # a hook slice's g(z; x) may depend on x beside z (a skip over the cut): per anchor
        per_anchor = any(q.needs_anchor_output for q in qois) or (self.in_slice_space and not self.slice.is_split)
        shared = chunk.reference.stride(0) == 0 and not per_anchor
        values = []
        with torch.no_grad():
            for points, rows in ((chunk.anchors, n), (chunk.reference[:1] if shared else chunk.reference, 1 if shared else n)):
                part = []
                for i in range(0, rows, b):
                    p = points[i : i + b].contiguous()  # the default layout: every model takes it
                    self.recorder.clear()
                    if self.in_slice_space:
                        z, out = p, self.slice.g(p, None if self.slice.is_split else self._own(points_rows(chunk.x, slice(i, i + b))))
                    else:
                        z = p if self.slice.is_input else self.slice.h(self._own(p))
                        out = self.slice.g(z, self._own(p))
                    self.recorder.check()
                    if self.cut_layer is not None:
                        self.activations[self.cut_layer] = z
                    anchor_output = None if chunk.anchor_output is None else _index_output(chunk.anchor_output, torch.arange(i, i + p.shape[0], device=p.device))
                    context = QoIContext(self.activations, anchor_output)
                    part.append(torch.stack([q(out, context).double() for q in qois], 1))
                values.append(torch.cat(part) if len(part) > 1 else part[0])
        return values[0] - values[1]

    def _results(self) -> list[InfluenceResult]:
        query, s = self.query, self.each.samples
        steps, missed = (None, 0) if self.step_log is None else self.step_log.result()
        if missed and (self.group is None or self.group.rank == 0):
            each = self.each
            assert isinstance(each, (LineDoI, NoiseDoI))
            if isinstance(each, NoiseDoI):
                what, cap = "standard error over the estimate's norm", f"max_samples={each.max_samples}"
            else:
                what = "completeness gap" if self.by_gap else "change between successive estimates"
                cap = f"max_steps={each.max_steps}"
            warnings.warn(
                f"influence: {missed} of {int(steps.numel()) if steps is not None else '?'} anchors did not reach tol={each.tol:g} "
                f"(relative {what}) within {cap}; result.query['tol_missed'] counts them"
                + (" and result.completeness shows their gaps" if self.by_gap and query.population is None else ""),
                RuntimeWarning,
                stacklevel=4,
            )
        results = []
        for j, (q, sink) in enumerate(zip(query.qois, self.sinks)):
            mean, stderr, channel_stderr = sink.result()
            if isinstance(sink, PopulationMoments):
                anchors, skipped = sink.count, sink.skipped
                used = anchors
            else:
                anchors = sink.count
                skipped = 0 if sink.skipped is None else int(sink.skipped.sum())
                used = anchors - skipped
            description = query.describe(q)
            if self.skip:
                description["skipped"] = skipped
                if skipped and (self.group is None or self.group.rank == 0):
                    first = ", ".join(map(str, self.skipped_ids[j]))
                    warnings.warn(
                        f"influence: skipped {skipped} anchors with non-finite QoI values or gradients of {q!r} "
                        f"(e.g. anchors {first}); result.query['skipped'] counts them",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            completeness = sink.completeness() if self.track_completeness else None
            if steps is not None:
                description["tol_missed"] = missed
            results.append(
                InfluenceResult(
                    values=mean.cpu(),
                    stderr=stderr.cpu(),
                    samples=used * s if steps is None else int(steps.sum()),
                    anchors=anchors,
                    pooled=query.population is not None,
                    query=description,
                    channel_stderr=None if channel_stderr is None else channel_stderr.cpu(),
                    completeness=None if completeness is None else completeness.cpu(),
                    steps=None if steps is None else steps.cpu(),
                )
            )
        return results

    def _prepare(self, x: Tensor, first_id: int, local: int) -> _Chunk:
        """Anchors in the DoI's space (``h`` once per anchor for slice-space DoIs), their
        references, ``δ`` for ``multiply_activation``, and the anchors' outputs."""
        slc, b = self.slice, self.batch_size
        n = points_count(x)
        ids = torch.arange(first_id, first_id + n, device=self.query.device)
        with torch.no_grad():
            h = (lambda v: slc.h(self._own(v))) if self.copy_inputs else slc.h
            anchors = no_grad_batched(h, x, b) if self.in_slice_space else x
            reference = self.each.reference(anchors, ids)
            delta = _delta(h, b, x, anchors, reference, self.in_slice_space) if self.query.multiply else None
            needs_output = any(q.needs_anchor_output for q in self.query.qois)
            anchor_output = no_grad_batched(lambda v: slc.g(h(v), self._own(v)), x, b) if needs_output else None
            prefix = self.affine or self.h_affine
            frontier = [] if prefix is None else _line_ends(prefix, anchors, reference, b)
        for accs, sink in zip(self.accumulators, self.sinks):
            if self.affine is not None:  # sums at the frontier, pulled back and times δ in _finish
                for acc in accs:
                    acc.start(n, None)
                continue
            target = (lambda like, sink=sink: sink.view(local, n, like)) if isinstance(sink, PerPointResults) else None
            accs[0].start(n, delta, target)
        self.value_totals = []  # per batch: Σ q over its samples, per QoI
        chunk = _Chunk(x, first_id, ids, anchors, reference, anchor_output, delta, frontier)
        if self.channels_last:  # draws then come out channels-last
            _set_layout(chunk, torch.channels_last)
        return chunk

    def _integrate(self, chunk: _Chunk) -> None:
        """All sample rows of a chunk, ``batch_size`` at a time. On a CUDA out-of-memory
        error the batch size is halved (with a warning) and the batch retried. If the
        model fails on the very first batch with channels-last inputs chosen
        automatically, the batch is retried in the default layout (what the failed try
        printed to stderr is dropped; a successful one's output is passed on)."""
        total = chunk.n * self.each.samples
        start = 0
        while start < total:
            stop = min(start + self.batch_size, total)
            trial = self.channels_last == "auto" and self.first_batch
            report = io.StringIO() if trial else None  # what the trial prints (torch.fx prints a failing graph's code)
            try:
                with contextlib.redirect_stderr(report) if report is not None else contextlib.nullcontext():
                    _, grads, totals, _ = self._gradients(chunk, start, stop)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size //= 2
                if not self.query.auto_batch:
                    warnings.warn(f"influence: CUDA out of memory; batch_size halved to {self.batch_size}", RuntimeWarning, stacklevel=4)
                torch.cuda.empty_cache()
                continue
            except Exception:
                if not (self.channels_last == "auto" and self.first_batch):
                    raise
                self.channels_last = False
                _set_layout(chunk, torch.contiguous_format)
                continue
            if report is not None:
                sys.stderr.write(report.getvalue())
            self.first_batch = False
            for accs, grad in zip(self.accumulators, grads):
                for acc, g in zip(accs, grad):
                    acc.add(g, start, stop)
            self.value_totals.append(totals[0] if len(totals) == 1 else torch.stack(totals))  # checked per chunk
            start = stop

    def _to_device(self, x: Points) -> Points:
        """Points on the query's device, in its dtype (token ids stay integers). To a GPU
        from memory pinned by _Ahead without holding up the host (never towards the host,
        where the copy would be read before it has arrived)."""
        device, dtype, non_blocking = self.query.device, self.query.dtype, self.query.device.type == "cuda"
        if isinstance(x, Tensor):
            return x.to(device=device, dtype=dtype if x.is_floating_point() else None, non_blocking=non_blocking)
        return points_apply(x, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None, non_blocking=non_blocking))

    def _own(self, x: Points) -> Points:
        """``x`` for the model to run on: a copy when the model writes into its input (the
        caller's points and the chunk's anchors must stay as they are)."""
        return points_apply(x, torch.Tensor.clone) if self.copy_inputs else x

    def _rows(self, chunk: _Chunk, start: int, stop: int) -> Rows:
        """Rows ``start..stop`` of the chunk, their anchors and sample indices sliced from
        tables made once (``r // S`` and ``r % S`` for every row of a chunk)."""
        s, need = self.each.samples, chunk.n * self.each.samples
        table = self.row_table
        if table is None or table[0].shape[0] < need or table[0].device != chunk.device or self.row_table_samples != s:
            self.row_table, self.row_table_samples = _row_table(need, s, chunk.device), s
        assert self.row_table is not None
        return Rows(start, stop, s, chunk.first_id, self.row_table, chunk.anchor_ids)

    def _gradients(self, chunk: _Chunk, start: int, stop: int) -> tuple[list[Tensor], list[list[Tensor]], list[Tensor], Rows]:
        """QoI values ``q`` and ``w · ∂(q∘g)/∂z`` for rows ``start..stop`` of the chunk,
        per QoI, from one forward pass (the gradients at each frontier tensor ``u_i`` of
        the affine prefix instead of ``z`` when there is one); the sums of the values; and
        each row's anchor (chunk-local)."""
        rows = self._rows(chunk, start, stop)
        seed = self.query.seed
        if chunk.frontier:  # lines at an affine prefix's frontier: the same nodes and weights on each
            drawn = [self.each.draw(end, begin, rows, seed) for end, begin in chunk.frontier]
            weights = drawn[0][1]
            frontier = [_in_layout(p, self.channels_last) for p, _ in drawn]
        else:
            points, weights = self.each.draw(chunk.anchors, chunk.reference, rows, seed)
            points = _in_layout(points, self.channels_last)
        self.recorder.clear()
        fitting = _Fitting(self.query, chunk.x) if self.first_batch else contextlib.nullcontext()
        autocast = torch.autocast(self.query.device.type, self.query.autocast) if self.query.autocast else contextlib.nullcontext()
        with fitting, autocast:  # the model's forward pass
            if self.affine is not None:  # gradients at g's frontier (pulled back in _finish)
                wrt = [u.requires_grad_(True) for u in frontier]
                out = self.affine.rest(*wrt)
            else:
                if self.h_affine is not None:  # the rest of h from its frontier, without grad
                    with torch.no_grad():
                        z = self.h_affine.rest(*frontier)
                    z = (z if self.leaf_dtype is None else z.to(self.leaf_dtype)).requires_grad_(True)
                    out = self.g(z)
                elif self.in_slice_space:
                    z = points.requires_grad_(True)
                    out = self.g(z, None if self.slice.is_split else self._own(rows.take(chunk.x)))
                elif self.query.compile:  # h as usual, then the compiled g
                    with torch.no_grad():
                        z = self.slice.h(self._own(points))
                    z = (z if self.leaf_dtype is None else z.to(self.leaf_dtype)).requires_grad_(True)
                    out = self.g(z)
                else:
                    z, out = self.slice.forward_cut(self._own(points), self.leaf_dtype)
                if self.cut_layer is not None:
                    self.activations[self.cut_layer] = z
                wrt = [z]
        self.recorder.check()
        anchor_output = None if chunk.anchor_output is None else _index_output(chunk.anchor_output, rows.anchor)
        context = QoIContext(self.activations, anchor_output)
        same = self.each.weight
        scale = [None if same == 1.0 else same if same is not None else weights.view(-1, *([1] * (t.ndim - 1))) for t in wrt]
        values, grads, totals = [], [], []
        last = len(self.query.qois) - 1
        for j, q in enumerate(self.query.qois):
            value = q(out, context)
            if not value.requires_grad:
                raise ValueError(
                    f"qoi: {q!r} does not depend on the activations at the cut of {self.query.slice!r}; "
                    "a NeuronQoI must name a layer after the cut"
                )
            total = value.sum()
            grad = torch.autograd.grad(total, wrt, retain_graph=j < last, allow_unused=len(wrt) > 1)
            grad = [torch.zeros_like(t) if d is None else d for d, t in zip(grad, wrt)]  # a frontier part q ignores
            values.append(value.detach())
            totals.append(total.detach())
            grads.append([g if w is None else g * w for g, w in zip(grad, scale)])
        return values, grads, totals, rows
