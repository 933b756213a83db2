"""The points a query explains: checking them (their kind, and against the model on the
first batch), streaming them in chunks (regrouped, past a checkpoint's position, read one
chunk ahead into pinned memory), and running a function over them in batches without
autograd (:func:`no_grad_batched`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import Tensor, nn

from doi._points import Points, is_structured
from doi._points import cat as points_cat
from doi._points import check as points_check
from doi._points import count as points_count
from doi._points import describe as points_describe
from doi._points import rows as points_rows
from doi._points import tensors as points_tensors
from slices import Slice
from slices._slice import raised_by_a_model

from ._checkpoint import hash_rows

if TYPE_CHECKING:
    from ._options import _Query


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


def _versions(x: Points) -> tuple[int, ...]:
    """The version counters of the tensors in ``x`` (they move when a tensor is written into)."""
    return tuple(t._version for t in points_tensors(x))


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
