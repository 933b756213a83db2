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
DoIs ``h`` runs once per anchor and only ``g`` per sample. For line DoIs the affine
layers right after the line's space run once per anchor (lines stay lines through them;
:mod:`slices._affine`). Several QoIs share the forward pass. Sums accumulate on the
device in float64 (:mod:`influence._moments`); results move to the CPU once at the end.

Around the loop: the anchors are sharded over the processes of an initialised
``torch.distributed`` group (:mod:`influence._distributed`); a population query can be
checkpointed and resumed (:mod:`influence._checkpoint`); non-finite QoI values and
gradients are found once per chunk, without a host synchronisation per batch: an
anchor's float64 estimate is non-finite when one of its gradients was, and the sum of
the QoI values (already formed for the backward pass) when one of the values was; only
then are the chunk's values recomputed to find which anchors they belong to.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

from doi import DistributionOfInterest, LineDoI, NoiseDoI, PointwiseDoI, PopulationDoI, Rows
from doi import _adaptive as adaptive
from doi._line import LineNodes
from doi._points import Points, is_structured
from doi._points import apply as points_apply
from doi._points import cat as points_cat
from doi._points import check as points_check
from doi._points import count as points_count
from doi._points import describe as points_describe
from doi._points import rows as points_rows
from doi._points import tensors as points_tensors
from qoi import QoIContext, QuantityOfInterest, as_qoi
from slices import Slice
from slices._affine import AffinePrefix
from slices._slice import raised_by_a_model

from . import _distributed
from ._checkpoint import TAIL_ROWS, Checkpoint, fingerprint, hash_rows
from ._distributed import Group
from ._frozen import ModuleSurvey, frozen
from ._moments import AnchorEstimates, ChunkAccumulator, PerPointResults, PopulationMoments, StepLog, channel_sums, completeness_gap
from ._progress import progress_bar
from ._recording import LayerRecorder
from .result import InfluenceResult

_CHUNK_BYTES = 128 * 2**20  # memory for the per-anchor buffers of one chunk
_MAX_CHUNK = 4096  # anchors per chunk at most
NONFINITE = ("raise", "skip")
AUTO_BATCH_CPU = 64
AUTO_BATCH_CUDA = 4096


def _rebatch(parts: Iterator[Points], size: int) -> Iterator[Points]:
    """Regroup a stream of batches of points into batches of exactly ``size`` rows (the
    last may be shorter)."""
    pending: list[Points] = []
    count = 0
    for part in parts:
        while points_count(part):
            take = min(size - count, points_count(part))
            pending.append(points_rows(part, slice(0, take)))
            part, count = points_rows(part, slice(take, None)), count + take
            if count == size:
                yield points_cat(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if pending:
        yield points_cat(pending) if len(pending) > 1 else pending[0]


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
        checkpoint: Any = None,
        checkpoint_every: Any = 60.0,
        nonfinite: Any = "raise",
        affine_prefix: Any = True,
        tf32: Any = None,
        autocast: Any = None,
        compile: Any = False,
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
            if is_structured(inputs):
                _check_structured(inputs, slice, doi, "inputs")
            elif not isinstance(inputs, Tensor):
                raise TypeError(f"inputs: expected a tensor (N, *input_shape), or a mapping or tuple of them (got {type(inputs).__name__})")
            else:
                if inputs.ndim < 1:
                    raise ValueError("inputs: expected a batch of points (N, *input_shape) (got a 0-d tensor); a shape (N,) means N scalar points")
                _check_points(inputs, slice, doi, "inputs")
            if points_count(inputs) == 0:
                shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else points_describe(inputs)
                raise ValueError(f"inputs: no points to explain (shape {shape})")
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
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite: expected 'raise' or 'skip' (got {nonfinite!r})")
        self.nonfinite: str = nonfinite
        if not isinstance(affine_prefix, bool):
            raise TypeError(f"affine_prefix: expected a bool (got {type(affine_prefix).__name__})")
        self.affine_prefix = affine_prefix
        if tf32 is not None and not isinstance(tf32, bool):
            raise TypeError(f"tf32: expected None, True or False (got {tf32!r})")
        self.tf32: bool | None = tf32
        if autocast is not None and autocast is not torch.bfloat16:
            raise ValueError(f"autocast: expected None or torch.bfloat16 (got {autocast!r}); float16 would need loss scaling for its gradients")
        self.autocast: torch.dtype | None = autocast
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool (got {type(compile).__name__})")
        if compile and not (slice.is_split or slice.is_input):
            raise ValueError(
                f"compile: needs a slice split into two functions (sequential, graph or from_functions); {slice!r} is realised with hooks"
            )
        self.compile = compile
        self.checkpoint: Checkpoint | None = None
        if checkpoint is not None:
            if self.population is None:
                raise ValueError(
                    f"checkpoint: only population DoIs (ClassDoI, DatasetDoI) are checkpointed (got {type(doi).__name__}); "
                    "split a long pointwise query over its inputs instead"
                )
            self.checkpoint = Checkpoint(checkpoint, checkpoint_every)
        elif isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, float)) or not checkpoint_every >= 0:
            raise ValueError(f"checkpoint_every: expected seconds >= 0 (got {checkpoint_every!r})")
        self.seed_given = seed is not None
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
        self.survey = ModuleSurvey(slice.modules())  # one walk: defaults, placement, freezing
        self.device = dev or self.survey.device or (inputs.device if isinstance(inputs, Tensor) else torch.device("cpu"))
        self.dtype = dtype or self.survey.dtype or (inputs.dtype if isinstance(inputs, Tensor) else torch.float32)
        if self.auto_batch and self.device.type == "cuda":
            batch_size = AUTO_BATCH_CUDA
        self.slice, self.doi, self.inputs = slice, doi, inputs
        self.batch_size, self.multiply, self.seed = batch_size, multiply_activation, seed

    def size_hint(self) -> int | None:
        """How many anchors the query has, when known without reading the data."""
        if self.population is not None:
            return self.population.size_hint()
        return points_count(self.inputs)

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
            "nonfinite": self.nonfinite,
            "affine_prefix": self.affine_prefix,
            "tf32": _tf32_in_effect(self.device, self.tf32),
            "autocast": None if self.autocast is None else str(self.autocast).replace("torch.", ""),
            "compile": self.compile,
            **({"checkpoint": self.checkpoint.path} if self.checkpoint is not None else {}),
        }

    def signature(self) -> tuple[Any, ...]:
        """What every process of a distributed query must agree on (besides the seed)."""
        what = {k: v for k, v in self.describe(self.qois[0]).items() if k not in ("seed", "device", "qoi")}
        return (tuple(sorted(what.items())), tuple(repr(q) for q in self.qois), self.size_hint())


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
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 60.0,
    nonfinite: Literal["raise", "skip"] = "raise",
    distributed: bool | None = None,
    affine_prefix: bool = True,
    tf32: bool | None = None,
    autocast: torch.dtype | None = None,
    compile: bool = False,
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
        inputs: ``(N, *input_shape)`` points for a pointwise DoI; a tensor of shape
            ``(N,)`` is ``N`` scalar points (Captum's convention). Integer points (token
            ids) are explained at a slice after them, usually the word embeddings:
            ``PointDoI``, or a line or noise with ``space="slice"`` (baselines from ids
            with :meth:`slices.Slice.baseline`). A mapping of tensors that share their
            first dimension (a tokenizer's ``BatchEncoding``) is given to the model as
            ``model(**inputs)``, a tuple as ``model(*inputs)``, by a hook slice after them;
            every tensor is taken row by row with its point (an attention mask travels
            with its tokens).
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
        checkpoint: a file where a population query (``ClassDoI``, ``DatasetDoI``) keeps
            its progress: the float64 sums, the counts and the number of points done,
            written atomically every ``checkpoint_every`` seconds (at the end of a chunk
            of anchors), when the query is interrupted (Ctrl-C, or an error) and at the
            end. Running the same query again resumes from it and gives exactly the
            result of an uninterrupted run (bit for bit, with the same batch size);
            a finished checkpoint returns the result at once. A checkpoint written by a
            different query (model weights, slice, DoI, QoIs, seed, dtype, device type,
            data) or a damaged file is refused with a ``ValueError``. With
            ``seed=None`` the checkpoint's seed is used.
        checkpoint_every: seconds between checkpoints (0: after every chunk).
        nonfinite: what to do when a QoI value or a gradient is NaN or infinite:
            ``"raise"`` a ``ValueError`` naming the anchor and the sample, or ``"skip"``
            the anchor as a whole (a pooled result averages the other anchors; a
            pointwise result has NaN values and standard errors for it), with a warning;
            ``result.query["skipped"]`` counts the skipped anchors.
        distributed: ``None`` (default): when ``torch.distributed`` is initialised with
            more than one process, shard the anchors over the processes (every process
            must make the same call; each returns the whole result); ``False``: run
            alone; ``True``: shard, and fail if no group is initialised.
        affine_prefix: for a line DoI, run the affine layers right after the line's
            space (linear, convolution, batch norm with running statistics, pooling,
            reshapes) once per anchor instead of once per sample: an affine map takes
            lines to lines. When the line lives at the cut (integrated gradients at the
            input, a slice-space line at a layer) the gradient is taken after those
            layers and its weighted sum pulled back through them once per anchor; when
            the line is in input space and the cut inside the model, they are the start
            of ``h``. Exact by linearity, up to rounding (:mod:`slices._affine`); it
            applies where ``torch.fx`` can trace the layers and no hooks are registered,
            and on CUDA only where the frontier is no larger than the line's space
            (a GPU pays for memory traffic, a CPU for arithmetic). ``False``: run every
            layer per sample.
        tf32: on CUDA, whether float32 convolutions and matrix products may use TF32
            tensor cores (10-bit mantissa) for the query; the setting is restored
            after. ``None`` (default): leave PyTorch's settings as they are (cuDNN
            convolutions use TF32 unless ``torch.backends.cudnn.allow_tf32`` is off;
            matrix products do not, unless ``torch.backends.cuda.matmul.allow_tf32``).
            ``False``: exact float32 (README "Performance": about 10× smaller error
            against float64 on a ResNet-50, at about twice the time). Recorded in
            ``result.query["tf32"]``; no effect on the CPU.
        autocast: ``torch.bfloat16`` for the fast mode: the per-sample forward and
            backward passes run under ``torch.autocast`` in bfloat16, while the cut's
            activations and gradients stay in ``dtype`` and the sums in float64. The
            per-anchor passes (``h`` at the anchors, ``δ``, the line's two ends for
            ``result.completeness``) run in full precision, so the completeness gap
            shows what the fast mode costs.
        compile: run ``g`` through ``torch.compile`` (worth it for many batches of the
            same shape; the first batches pay the compilation). Needs a slice split
            into two functions (not the hook realisation).

    Returns:
        :class:`InfluenceResult` (a list of them for a list of QoIs): ``values`` of shape
        ``(N, *unit)`` for a pointwise DoI, ``unit`` for a population DoI, where ``unit``
        is the shape of ``h(x)`` for one point.
    """
    query = _Query(
        slice, qoi, doi, inputs, batch_size, device, dtype, multiply_activation, seed, channels_last, checkpoint, checkpoint_every, nonfinite,
        affine_prefix, tf32=tf32, autocast=autocast, compile=compile,
    )  # fmt: skip
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool (got {type(progress).__name__})")
    group = _distributed.current(distributed)
    total = query.size_hint()
    if group is not None and query.population is None and total is not None:
        lo, hi = group.block(total)
        total = hi - lo
    bar = progress_bar(progress and (group is None or group.rank == 0), total)
    try:
        with frozen(query.survey), _tf32(query.tf32), torch.inference_mode(False), torch.enable_grad():
            results = _Integrator(query, bar, group).run()
    finally:
        bar.close()
    return results if query.many else results[0]


def input_influence(model: nn.Module, qoi: Any, doi: DistributionOfInterest, inputs: Tensor | None = None, **options: Any) -> InfluenceResult | list[InfluenceResult]:
    """Influence on the inputs: :func:`internal_influence` at ``Slice(model, None)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (got {type(model).__name__})")
    return internal_influence(Slice(model, None), qoi, doi, inputs, **options)


def _chunk_size(batch_size: int, samples: int, input_numel: int, unit_numel: int, frontier_numel: int = 0) -> int:
    """Anchors per chunk: as many as the memory budget allows (per anchor: the input,
    float64 sums, squares and ``δ`` over the unit, and the two ends of the line and a
    float64 sum at an affine prefix's frontier), up to ``_MAX_CHUNK``, and a multiple of
    ``batch_size / gcd(batch_size, S)`` when possible, so that the chunk's ``n·S`` rows
    fill whole batches."""
    step = batch_size // math.gcd(batch_size, samples)
    per_anchor = 4 * input_numel + 8 * 3 * unit_numel + 16 * frontier_numel
    n = max(1, min(_MAX_CHUNK, _CHUNK_BYTES // per_anchor))
    return max(step, n // step * step) if step <= n else n


@contextmanager
def tol_counted(owner: str, what: str = "points") -> Iterator[list[int]]:
    """For a workflow that makes several engine calls with adaptive DoIs: the calls'
    warnings about anchors that missed ``tol`` are held back; the workflow appends each
    result's ``query["tol_missed"]`` and ``anchors`` to the list it gets, and one warning
    counts them all at the end."""
    counts: list[int] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"influence: \d+ of \d+ anchors did not reach tol", category=RuntimeWarning)
        yield counts
    missed, total = sum(counts[0::2]), sum(counts[1::2])
    if missed:
        warnings.warn(f"{owner}: {missed} of {total} {what} did not reach the tolerance of their lines within max_steps", RuntimeWarning, stacklevel=3)


@contextmanager
def tol_noted(notes: list[str]) -> Iterator[None]:
    """The workflows' warnings about lines that missed their tolerance, appended to
    ``notes`` (for a report to show) instead of raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "did not reach the tolerance" in str(w.message):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def count_missed(counts: list[int], results: Any) -> None:
    """Add the results' missed anchors and anchors to ``counts`` (see :func:`tol_counted`)."""
    for r in results if isinstance(results, list) else [results]:
        counts += [int(r.query.get("tol_missed", 0)), int(r.anchors)]


def no_grad_batched(fn: Any, x: Points, batch_size: int) -> Any:
    """``fn(x)`` without autograd, ``batch_size`` rows at a time."""
    with torch.no_grad():
        parts = [fn(points_rows(x, slice(i, i + batch_size))) for i in range(0, points_count(x), batch_size)]
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


def _check_structured(x: Points, slice: Slice, each: Any, owner: str) -> None:
    """A mapping or tuple of inputs: tensors that share their first dimension, given to
    the model as ``model(**x)`` or ``model(*x)`` by a hook slice, at a cut after them,
    with the point itself (``PointDoI``) or samples in the slice's space."""
    points_check(x, owner)
    if slice.is_input or slice.realisation not in ("hook", "functions"):
        raise ValueError(
            f"{owner}: a {type(x).__name__} of inputs is given to the model as model(**inputs) (or model(*inputs)), "
            f"which only the hook realisation does; explain them at a layer after them with Slice(model, layer, realisation='hook') "
            f"(got {slice!r})"
        )
    if each.space == "input" and each.samples > 1:
        raise ValueError(
            f"{owner}: a {type(each).__name__} in input space cannot draw points between {type(x).__name__}s of inputs; "
            f"draw them at the slice: {type(each).__name__}(..., space='slice')"
        )


def _check_points(x: Tensor, slice: Slice, each: Any, owner: str) -> None:
    """Points are floating-point, or integers (token ids) explained at a slice after them:
    the point itself (``PointDoI``), or samples drawn in the slice's space."""
    if x.is_floating_point():
        return
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{owner}: expected floating-point points, or integer token ids (got {x.dtype})")
    if slice.is_input:
        raise TypeError(
            f"{owner}: {x.dtype} points (token ids?) have no gradient; explain them at their embedding: {_embedding_slice(slice)}, "
            "with PointDoI, or LineDoI/NoiseDoI(space='slice')"
        )
    if each.space == "input" and each.samples > 1:
        raise ValueError(
            f"{owner}: a {type(each).__name__} in input space would draw points between {x.dtype} token ids; "
            f"draw them at the slice instead: {type(each).__name__}(..., space='slice') with {_embedding_slice(slice)}"
        )


def _embedding_slice(slice: Slice) -> str:
    """The slice to suggest for token ids: at the model's first embedding layer."""
    model = slice.model
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Embedding)), None) if model is not None else None
    return f"Slice(model, {name!r})" if name is not None else "a Slice at the layer that embeds them"


class _Ahead:
    """An iterator that can read its next item early: :meth:`fetch` is called once a
    chunk's work is queued on the device and before the host waits for it (the non-finite
    check), so that reading the next chunk (a ``DataLoader``, a ``Dataset``, a copy
    into pinned memory for CUDA) overlaps the device's work instead of following it."""

    _END = object()

    def __init__(self, items: Iterator[Any], device: torch.device) -> None:
        self.items, self.pin = iter(items), device.type == "cuda"
        self.early: Any = None

    def __iter__(self) -> "_Ahead":
        return self

    def __next__(self) -> Any:
        if self.early is not None:
            item, self.early = self.early, None
        else:
            item = next(self.items, self._END)
        if item is self._END:
            raise StopIteration
        return item

    def fetch(self) -> None:
        if self.early is None:
            item = next(self.items, self._END)
            if self.pin and item is not self._END:
                item = _pinned(item)
            self.early = item


def _pinned(item: Any) -> Any:
    """CPU tensors in ``item`` (a tensor, or tuples and mappings of ints and tensors) in
    pinned memory, so that their copy to the GPU runs without holding up the host."""
    if isinstance(item, Tensor):
        return item.pin_memory() if item.device.type == "cpu" else item
    if isinstance(item, tuple):
        return tuple(_pinned(i) for i in item)
    if isinstance(item, dict):
        return {k: _pinned(v) for k, v in item.items()}
    return item


def _versions(x: Points) -> tuple[int, ...]:
    """The version counters of the tensors in ``x`` (they move when a tensor is written into)."""
    return tuple(t._version for t in points_tensors(x))


class _Fitting:
    """Until the model has run once, an error in the model's forward pass (torch's: a
    shape that does not fit a layer, a wrong dtype; or the model's own ``ValueError`` or
    ``TypeError`` about its arguments) is the data's fault: it is raised as a
    ``ValueError`` that names the data and the shape of one point. (Errors of a QoI and
    of this library are left as they are.)"""

    def __init__(self, query: _Query, x: Points) -> None:
        self.query, self.x = query, x

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None or issubclass(kind, torch.cuda.OutOfMemoryError):
            return
        if not issubclass(kind, RuntimeError) and not (issubclass(kind, (ValueError, TypeError)) and raised_by_a_model(traceback)):
            return
        owner = f"doi: the data of {self.query.doi!r}" if self.query.population is not None else "inputs"
        first = (str(error).strip().splitlines() or [""])[0]
        what = "keys, shapes and dtypes" if is_structured(self.x) else "shape (and layout)"
        raise ValueError(
            f"{owner}: the model fails on points of shape {points_describe(self.x)} ({kind.__name__}: {first}); "
            f"check that the points have the {what} the model takes"
        ) from None


@dataclass
class _Chunk:
    """What the rows of one chunk of anchors are drawn from."""

    x: Points  # (n, *input) the anchors' inputs (or a mapping or tuple of such tensors)
    first_id: int  # the position of the first of them in the stream of anchors
    ids: Tensor  # (n,) the positions of all of them
    anchors: Tensor  # (n, *space) the anchors in the DoI's space (x, or h(x))
    reference: Tensor | None  # (n, *space) the DoI's reference points (baselines)
    anchor_output: Any  # the model's output at the anchors, for QoIs that need it
    delta: Tensor | None  # (n, *unit) float64 h(x) − h(b), for multiply_activation
    frontier: list[tuple[Tensor, Tensor]]  # per frontier tensor of the affine prefix: (a(x), a(b))
    anchor_ids: list[int] | None = None  # the anchors' positions when not first_id, first_id + 1, ... (a round of an adaptive DoI)

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ids.device


class _Integrator:
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


_ROW_TABLES: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}


def _row_table(rows: int, samples: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(r // S, r % S)`` for rows ``r`` of a chunk, at least ``rows`` long: made once
    per ``S`` and device and shared by queries (read only), grown to a power of two."""
    key = (samples, device)
    table = _ROW_TABLES.get(key)
    if table is None or table[0].shape[0] < rows:
        r = torch.arange(1 << max(rows - 1, 1).bit_length(), device=device)
        table = _ROW_TABLES[key] = (r // samples, r % samples)
    return table


def _line_ends(prefix: AffinePrefix, anchors: Tensor, reference: Tensor | None, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Both ends of each anchor's line at an affine prefix's frontier: ``a(x)`` and
    ``a(b)`` (one row, broadcast, when all anchors share the baseline)."""
    assert reference is not None
    ends = no_grad_batched(prefix.frontier, anchors, batch_size)
    if reference.stride(0) == 0:
        starts = [t.expand(anchors.shape[0], *t.shape[1:]) for t in prefix.frontier(reference[:1].contiguous())]
    else:
        starts = list(no_grad_batched(prefix.frontier, reference, batch_size))
    return list(zip(ends, starts))


def _in_layout(t: Points, channels_last: bool | str) -> Points:
    """``t`` channels-last when asked for and 4-D (detached: a fresh sample)."""
    if not isinstance(t, Tensor):
        return points_apply(t, Tensor.detach)
    if channels_last and t.ndim == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.detach()


def _set_layout(chunk: _Chunk, layout: torch.memory_format) -> None:
    """Put the chunk's 4-D anchors, references and frontier ends in ``layout`` (broadcast
    references stay views)."""

    def put(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        return t.contiguous(memory_format=layout) if t.ndim == 4 and t.stride(0) != 0 else t

    chunk.anchors = put(chunk.anchors)
    if chunk.reference is not None:
        chunk.reference = put(chunk.reference)
    chunk.frontier = [(put(a), put(b)) for a, b in chunk.frontier]


def _skip(parts: Iterator[Points], count: int, tail: list[Any]) -> Iterator[Points]:
    """The stream of anchors without its first ``count`` points (done before a
    checkpoint), after checking that the ``m`` points before them hash as they did
    (``tail = [m, sha256]``)."""
    m, digest = int(tail[0]), str(tail[1])
    seen, window = 0, []
    for part in parts:
        n = points_count(part)
        if seen >= count:
            yield part
            continue
        lo, hi = max(seen, count - m), min(seen + n, count)
        if lo < hi:
            window.append(points_rows(part, slice(lo - seen, hi - seen)))
        if seen + n >= count:
            if hash_rows(points_cat(window)) != digest:
                raise ValueError(
                    f"checkpoint: the data differs from the checkpoint's at the point where it stopped (points {count - m}..{count - 1}); "
                    "the data must be the same and come in the same order (no shuffling). Delete the checkpoint to start afresh"
                )
            if seen + n > count:
                yield points_rows(part, slice(count - seen, None))
        seen += n
    if seen < count:
        raise ValueError(f"checkpoint: the data has {seen} points, fewer than the {count} the checkpoint has done; is it the same data?")


def _delta(h: Any, batch_size: int, x: Tensor, anchors: Tensor, reference: Tensor | None, space_is_slice: bool) -> Tensor:
    """``h(x) − h(b)`` per anchor (``h(x)`` when the DoI has no reference), float64."""
    if space_is_slice:
        delta = anchors if reference is None else anchors - reference
    else:
        hx = no_grad_batched(h, x, batch_size)
        if reference is not None and reference.stride(0) == 0:  # one baseline for all anchors
            reference = reference[:1].contiguous()
        delta = hx if reference is None else hx - no_grad_batched(h, reference, batch_size)
    return delta.double()


def _index_output(output: Any, index: Tensor) -> Any:
    if isinstance(output, Tensor):
        return output[index]
    if isinstance(output, (tuple, list)):
        return type(output)(_index_output(o, index) for o in output)
    if isinstance(output, dict):
        return {k: _index_output(v, index) for k, v in output.items()}
    return output


def _tf32(allow: bool | None) -> Any:
    """Allow or forbid TF32 for convolutions and matrix products, restoring the settings
    after (``None``: leave them)."""
    return contextlib.nullcontext() if allow is None else _tf32_set(allow)


def _tf32_in_effect(device: torch.device, tf32: bool | None) -> dict[str, bool] | None:
    """Whether convolutions and matrix products may use TF32 during the query (CUDA only)."""
    if device.type != "cuda":
        return None
    if tf32 is not None:
        return {"convolutions": tf32, "matmul": tf32}
    return {"convolutions": bool(torch.backends.cudnn.allow_tf32), "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


@contextmanager
def _tf32_set(allow: bool) -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
