"""The one integrator behind every method.

Internal influence of a quantity ``q`` at a slice ``f = g ∘ h`` under a distribution of
interest ``D`` is

    χ = E_{x ~ D} [ ∂(q∘g)/∂z |_{z = h(x)} ]        (Leino et al. 2018),

estimated by weighted samples. Pointwise DoIs give one ``χ`` per anchor, population DoIs
one for the whole population. With ``multiply_activation`` each anchor's ``χ`` is
multiplied by ``δ = h(x) − h(b)`` (``b`` the DoI's reference point, zero if none): for a
line DoI at the input this is integrated gradients, ``Σ δ·χ ≈ q(x) − q(b)``.

The loop: anchors stream in chunks; each chunk is expanded into ``n·S`` sample rows,
cut into batches of ``batch_size`` rows (a batch may mix anchors); for input-space DoIs
one forward pass per batch with the gradient taken at the detached cut, for slice-space
DoIs ``h`` runs once per anchor and only ``g`` per sample. Several QoIs share the forward
pass. Sums accumulate on the device in float64 (:mod:`influence._moments`); results move
to the CPU once at the end.
"""

from __future__ import annotations

import itertools
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from doi import DistributionOfInterest, PointwiseDoI, PopulationDoI, Rows
from qoi import QoIContext, QuantityOfInterest, as_qoi
from slices import Slice
from slices._cut import find_module

from ._frozen import frozen
from ._moments import ChunkAccumulator, PerPointResults, PopulationMoments
from ._progress import progress_bar
from .result import InfluenceResult

_CHUNK_BYTES = 128 * 2**20  # memory for the per-anchor buffers of one chunk
AUTO_BATCH_CPU = 64
AUTO_BATCH_CUDA = 4096


def _rebatch(parts: Iterator[Tensor], size: int) -> Iterator[Tensor]:
    """Regroup a stream of tensors into batches of exactly ``size`` rows (the last may
    be shorter)."""
    pending: list[Tensor] = []
    count = 0
    for part in parts:
        while part.shape[0]:
            take = min(size - count, part.shape[0])
            pending.append(part[:take])
            part, count = part[take:], count + take
            if count == size:
                yield torch.cat(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if pending:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


@contextmanager
def _recording(model: nn.Module | None, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named modules during forward passes."""
    store: dict[str, Tensor] = {}
    if not layers:
        yield store
        return
    if model is None:
        raise ValueError(f"qoi: reads layers {list(layers)} but the slice has no model to find them in; pass model= to Slice.from_functions")
    handles = []
    try:
        for name in layers:
            module = find_module(model, name, what="NeuronQoI")
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: store.__setitem__(name, out)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _model_dtype(model: nn.Module | None) -> torch.dtype | None:
    if model is None:
        return None
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _model_device(model: nn.Module | None) -> torch.device | None:
    if model is None:
        return None
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return None


class _Query:
    """A validated query: the arguments of :func:`internal_influence`, normalised."""

    def __init__(
        self,
        slice: Any,
        qoi: Any,
        doi: Any,
        inputs: Any,
        batch_size: Any,
        device: Any,
        dtype: Any,
        multiply_activation: bool,
        seed: Any,
        channels_last: Any = None,
    ) -> None:
        if isinstance(slice, nn.Module):
            raise TypeError("slice: expected a slices.Slice (got an nn.Module); use Slice(model, layer) or input_influence(model, ...)")
        if not isinstance(slice, Slice):
            raise TypeError(f"slice: expected a slices.Slice (got {type(slice).__name__})")
        self.many = isinstance(qoi, (list, tuple))
        qois = list(qoi) if self.many else [qoi]
        if not qois:
            raise ValueError("qoi: the list of QoIs is empty")
        self.qois: list[QuantityOfInterest] = [as_qoi(q) for q in qois]
        if isinstance(doi, PopulationDoI):
            if inputs is not None:
                raise ValueError(f"inputs: {type(doi).__name__} brings its own data; pass inputs=None")
            self.population: PopulationDoI | None = doi
            self.each: PointwiseDoI = doi.each
        elif isinstance(doi, PointwiseDoI):
            if inputs is None:
                raise ValueError(f"inputs: {type(doi).__name__} explains given points; pass inputs, a tensor (N, *input_shape)")
            if not isinstance(inputs, Tensor):
                raise TypeError(f"inputs: expected a tensor (N, *input_shape) (got {type(inputs).__name__})")
            if inputs.ndim < 2:
                raise ValueError(f"inputs: expected a batch of points (N, *input_shape), got shape {tuple(inputs.shape)}; add a batch dimension")
            if inputs.shape[0] == 0:
                raise ValueError(f"inputs: no points to explain (shape {tuple(inputs.shape)})")
            if not inputs.is_floating_point():
                raise TypeError(f"inputs: expected a floating-point tensor (got {inputs.dtype})")
            self.population = None
            self.each = doi
        else:
            raise TypeError(
                "doi: expected a DistributionOfInterest (PointDoI, LineDoI, NoiseDoI, ClassDoI or DatasetDoI) "
                f"(got {type(doi).__name__})"
            )
        self.auto_batch = batch_size == "auto"
        if self.auto_batch:
            batch_size = AUTO_BATCH_CPU
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size: expected an int or 'auto' (got {type(batch_size).__name__} {batch_size!r})")
        elif batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1 (got {batch_size})")
        if not isinstance(multiply_activation, bool):
            raise TypeError(f"multiply_activation: expected a bool (got {type(multiply_activation).__name__})")
        if channels_last is not None and not isinstance(channels_last, bool):
            raise TypeError(f"channels_last: expected None, True or False (got {channels_last!r})")
        self.channels_last = channels_last
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None (got {type(seed).__name__})")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype: expected a floating torch.dtype (got {dtype!r})")
        try:
            dev = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError):
            raise ValueError(f"device: not a device: {device!r}") from None
        if dev is not None:
            try:
                torch.empty(0, device=dev)
            except (RuntimeError, AssertionError) as e:  # e.g. "Torch not compiled with CUDA enabled"
                raise ValueError(f"device: {device!r} is not available here ({e})") from None
        model = slice.model
        self.device = dev or _model_device(model) or (inputs.device if isinstance(inputs, Tensor) else torch.device("cpu"))
        self.dtype = dtype or _model_dtype(model) or (inputs.dtype if isinstance(inputs, Tensor) else torch.float32)
        if self.auto_batch and self.device.type == "cuda":
            batch_size = AUTO_BATCH_CUDA
        self.slice, self.doi, self.inputs = slice, doi, inputs
        self.batch_size, self.multiply, self.seed = batch_size, multiply_activation, seed

    def size_hint(self) -> int | None:
        """How many anchors the query has, when known without reading the data."""
        if self.population is not None:
            return self.population.size_hint()
        assert isinstance(self.inputs, Tensor)
        return self.inputs.shape[0]

    def describe(self, qoi: QuantityOfInterest) -> dict[str, Any]:
        return {
            "slice": repr(self.slice),
            "layer": str(self.slice.cut) if self.slice.cut is not None else None,
            "doi": repr(self.doi),
            "qoi": repr(qoi),
            "multiply_activation": self.multiply,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


def internal_influence(
    slice: Slice,
    qoi: Any,
    doi: DistributionOfInterest,
    inputs: Tensor | None = None,
    *,
    batch_size: int | Literal["auto"] = 64,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    multiply_activation: bool = False,
    seed: int | None = None,
    progress: bool = False,
    channels_last: bool | None = None,
) -> InfluenceResult | list[InfluenceResult]:
    """Influence of ``qoi`` at the cut of ``slice`` under ``doi``.

    Args:
        slice: where to take the gradient (``Slice(model, layer)``).
        qoi: a QuantityOfInterest (or an int class, or a callable ``output -> (B,)``),
            or a list of them: one forward pass serves them all and a list of results
            comes back, in order.
        doi: a pointwise DoI (``PointDoI``, ``LineDoI``, ``NoiseDoI``), explaining each
            of ``inputs``; or a population DoI (``ClassDoI``, ``DatasetDoI``) with
            ``inputs=None``.
        inputs: ``(N, *input_shape)`` points for a pointwise DoI.
        batch_size: sample rows per forward/backward pass. ``"auto"``: 64 on the CPU
            (near the best throughput for small and mid-sized models there); on CUDA,
            start at 4096 rows and halve on out-of-memory until a batch fits (the largest
            power-of-two fraction that fits).
        device, dtype: where and in what precision to compute (default: the model's);
            a model elsewhere is copied there, the original is left alone.
        multiply_activation: multiply each anchor's influence by ``h(x) − h(b)``
            (the attribution form: integrated gradients, gradient × input, conductance).
        seed: seeds the DoI's random draws (drawn from torch's RNG when ``None``;
            recorded in ``result.query``). The same seed gives the same result.
        progress: show a progress bar over the anchors (tqdm when installed).
        channels_last: feed 4-D sample batches to the model in channels-last layout
            (faster convolutions on CPU). ``None`` (default): on CPU, falling back to
            the default layout if the model fails on the first batch (only for models
            with ``Conv2d`` layers); ``False``: never.

    Returns:
        :class:`InfluenceResult` (a list of them for a list of QoIs): ``values`` of shape
        ``(N, *unit)`` for a pointwise DoI, ``unit`` for a population DoI, where ``unit``
        is the shape of ``h(x)`` for one point.
    """
    query = _Query(slice, qoi, doi, inputs, batch_size, device, dtype, multiply_activation, seed, channels_last)
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool (got {type(progress).__name__})")
    bar = progress_bar(progress, query.size_hint())
    try:
        with frozen(slice.modules()), torch.inference_mode(False), torch.enable_grad():
            results = _Integrator(query, bar).run()
    finally:
        bar.close()
    return results if query.many else results[0]


def input_influence(model: nn.Module, qoi: Any, doi: DistributionOfInterest, inputs: Tensor | None = None, **options: Any) -> InfluenceResult | list[InfluenceResult]:
    """Influence on the inputs: :func:`internal_influence` at ``Slice(model, None)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (got {type(model).__name__})")
    return internal_influence(Slice(model, None), qoi, doi, inputs, **options)


def _chunk_size(batch_size: int, samples: int, input_numel: int, unit_numel: int) -> int:
    """Anchors per chunk: as many as the memory budget allows (per anchor: the input,
    and float64 sums, squares and ``δ`` over the unit), up to 4096, and a multiple of
    ``batch_size / gcd(batch_size, S)`` when possible, so that the chunk's ``n·S`` rows
    fill whole batches."""
    step = batch_size // math.gcd(batch_size, samples)
    per_anchor = 4 * input_numel + 8 * 3 * unit_numel
    n = max(1, min(4096, _CHUNK_BYTES // per_anchor))
    return max(step, n // step * step) if step <= n else n


def _no_grad_batched(fn: Any, x: Tensor, batch_size: int) -> Any:
    """``fn(x)`` without autograd, ``batch_size`` rows at a time."""
    with torch.no_grad():
        parts = [fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return parts[0] if len(parts) == 1 else _concat(parts)


def _concat(parts: list[Any]) -> Any:
    """Concatenate batch outputs that are tensors, or tuples/lists/dicts of them."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    return first


@dataclass
class _Chunk:
    """What the rows of one chunk of anchors are drawn from."""

    x: Tensor  # (n, *input) the anchors' inputs
    first_id: int  # the position of the first of them in the stream of anchors
    ids: Tensor  # (n,) the positions of all of them
    anchors: Tensor  # (n, *space) the anchors in the DoI's space (x, or h(x))
    reference: Tensor | None  # (n, *space) the DoI's reference points (baselines)
    anchor_output: Any  # the model's output at the anchors, for QoIs that need it


class _Integrator:
    """The loop of :func:`internal_influence` for one validated query."""

    def __init__(self, query: _Query, progress: Any) -> None:
        self.query, self.progress = query, progress
        self.slice = query.slice.moved(query.device, query.dtype)
        self.each = query.each
        self.batch_size = query.batch_size
        self.in_slice_space = self.each.space == "slice" and not self.slice.is_input
        self.layers = list(dict.fromkeys(name for q in query.qois for name in q.layers))
        cut = self.slice.cut
        self.cut_layer = cut.layer if cut is not None and cut.at == "output" and cut.layer in self.layers else None
        self.first_batch = True
        has_conv = self.slice.model is not None and any(isinstance(m, nn.Conv2d) for m in self.slice.model.modules())
        auto = query.channels_last is None and query.device.type == "cpu" and has_conv
        self.channels_last: bool | str = "auto" if auto else bool(query.channels_last)
        self.accumulators = [ChunkAccumulator(self.each.samples, self.each.groups) for _ in query.qois]
        self.sinks: list[PopulationMoments | PerPointResults]
        if query.population is not None:
            self.sinks = [PopulationMoments() for _ in query.qois]
        else:
            assert query.inputs is not None
            self.sinks = [PerPointResults(query.inputs.shape[0]) for _ in query.qois]

    def run(self) -> list[InfluenceResult]:
        query = self.query
        if query.population is not None:
            parts: Iterator[Tensor] = iter(query.population.anchors(self.batch_size))
        else:
            assert query.inputs is not None
            parts = iter([query.inputs])
        offset = samples = 0
        with _recording(self.slice.model, self.layers) as self.activations:
            first = next((p for p in parts if p.shape[0]), None)
            if first is None:
                raise ValueError(f"doi: {query.doi!r} has no points")
            chunk_size = self._chunk_size(first)
            for x in _rebatch(itertools.chain([first], parts), chunk_size):
                n = x.shape[0]
                x = x.to(device=query.device, dtype=query.dtype)
                chunk = self._prepare(x.clone() if x.is_inference() else x, offset)
                self._integrate(chunk)
                for acc, sink in zip(self.accumulators, self.sinks):
                    sink.add(offset, acc.finish())
                offset += n
                samples += n * self.each.samples
                self.progress.update(n)
        results = []
        for q, sink in zip(query.qois, self.sinks):
            mean, stderr, channel_stderr = sink.result()
            results.append(
                InfluenceResult(
                    values=mean.cpu(),
                    stderr=stderr.cpu(),
                    samples=samples,
                    anchors=offset,
                    pooled=query.population is not None,
                    query=query.describe(q),
                    channel_stderr=None if channel_stderr is None else channel_stderr.cpu(),
                )
            )
        return results

    def _chunk_size(self, first: Tensor) -> int:
        """The chunk size for inputs like ``first`` (``h`` runs on one of them to learn
        the unit's size)."""
        x = first[:1].to(device=self.query.device, dtype=self.query.dtype)
        with torch.no_grad():
            unit = x[0].numel() if self.slice.is_input else self.slice.h(x)[0].numel()
        return _chunk_size(self.batch_size, self.each.samples, x[0].numel(), unit)

    def _prepare(self, x: Tensor, offset: int) -> _Chunk:
        """Anchors in the DoI's space (``h`` once per anchor for slice-space DoIs), their
        references, ``δ`` for ``multiply_activation``, and the anchors' outputs."""
        slc, b = self.slice, self.batch_size
        ids = torch.arange(offset, offset + x.shape[0], device=x.device)
        with torch.no_grad():
            anchors = _no_grad_batched(slc.h, x, b) if self.in_slice_space else x
            reference = self.each.reference(anchors, ids)
            delta = _delta(self.query, slc, x, anchors, reference, self.in_slice_space) if self.query.multiply else None
            needs_output = any(q.needs_anchor_output for q in self.query.qois)
            anchor_output = _no_grad_batched(lambda v: slc.g(slc.h(v), v), x, b) if needs_output else None
        n = x.shape[0]
        for acc, sink in zip(self.accumulators, self.sinks):
            target = (lambda like, sink=sink: sink.view(offset, n, like)) if isinstance(sink, PerPointResults) else None
            acc.start(n, delta, target)
        if self.channels_last and anchors.ndim == 4:  # draws then come out channels-last
            anchors = anchors.contiguous(memory_format=torch.channels_last)
            if reference is not None and reference.stride(0) != 0:
                reference = reference.contiguous(memory_format=torch.channels_last)
        return _Chunk(x, offset, ids, anchors, reference, anchor_output)

    def _integrate(self, chunk: _Chunk) -> None:
        """All sample rows of a chunk, ``batch_size`` at a time. On a CUDA out-of-memory
        error the batch size is halved (with a warning) and the batch retried. If the
        model fails on the very first batch with channels-last inputs chosen
        automatically, the batch is retried in the default layout."""
        total = chunk.x.shape[0] * self.each.samples
        start = 0
        while start < total:
            stop = min(start + self.batch_size, total)
            try:
                grads = self._gradients(chunk, start, stop)
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
                chunk.anchors = chunk.anchors.contiguous()
                if chunk.reference is not None and chunk.reference.stride(0) != 0:
                    chunk.reference = chunk.reference.contiguous()
                continue
            self.first_batch = False
            for acc, grad in zip(self.accumulators, grads):
                acc.add(grad, start, stop)
            start = stop

    def _gradients(self, chunk: _Chunk, start: int, stop: int) -> list[Tensor]:
        """``w · ∂(q∘g)/∂z`` for rows ``start..stop`` of the chunk, one tensor per QoI,
        from one forward pass."""
        rows = Rows.build(start, stop, self.each.samples, chunk.first_id, chunk.x.device)
        points, weights = self.each.draw(chunk.anchors, chunk.reference, rows, self.query.seed)
        if self.channels_last and points.ndim == 4:
            points = points.contiguous(memory_format=torch.channels_last)
        self.activations.clear()
        if self.in_slice_space:
            z = points.detach().requires_grad_(True)
            out = self.slice.g(z, None if self.slice.is_split else rows.take(chunk.x))
        else:
            z, out = self.slice.forward_cut(points)
        if self.cut_layer is not None:
            self.activations[self.cut_layer] = z
        anchor_output = None if chunk.anchor_output is None else _index_output(chunk.anchor_output, rows.anchor)
        context = QoIContext(self.activations, anchor_output)
        w = weights.view(-1, *([1] * (z.ndim - 1))) if self.each.weight is None else self.each.weight
        grads = []
        last = len(self.query.qois) - 1
        for j, q in enumerate(self.query.qois):
            value = q(out, context)
            if not value.requires_grad:
                raise ValueError(
                    f"qoi: {q!r} does not depend on the activations at the cut of {self.query.slice!r}; "
                    "a NeuronQoI must name a layer after the cut"
                )
            (grad,) = torch.autograd.grad(value.sum(), z, retain_graph=j < last)
            grads.append(grad if isinstance(w, float) and w == 1.0 else grad * w)
        return grads


def _delta(query: _Query, slc: Slice, x: Tensor, anchors: Tensor, reference: Tensor | None, space_is_slice: bool) -> Tensor:
    """``h(x) − h(b)`` per anchor (``h(x)`` when the DoI has no reference), float64."""
    if space_is_slice:
        delta = anchors if reference is None else anchors - reference
    else:
        hx = _no_grad_batched(slc.h, x, query.batch_size)
        if reference is not None and reference.stride(0) == 0:  # one baseline for all anchors
            reference = reference[:1].contiguous()
        delta = hx if reference is None else hx - _no_grad_batched(slc.h, reference, query.batch_size)
    return delta.double()


def _index_output(output: Any, index: Tensor) -> Any:
    if isinstance(output, Tensor):
        return output[index]
    if isinstance(output, (tuple, list)):
        return type(output)(_index_output(o, index) for o in output)
    if isinstance(output, dict):
        return {k: _index_output(v, index) for k, v in output.items()}
    return output
