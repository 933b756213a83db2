"""Data in the forms users have it: a tensor ``x``, a pair ``(x, y)``, a
``torch.utils.data.Dataset`` (items ``x`` or ``(x, y, ...)``) or a ``DataLoader``. ``x``
may be a mapping of tensors that share their first dimension (a tokenizer's output), and
a Dataset's items mappings (collated into one per batch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from ._points import Points, check, count, rows

ACCEPTED = "a tensor x (or a mapping of tensors), a pair (x, y), a torch Dataset or a DataLoader"


def check_data(data: Any, owner: str) -> None:
    """Raise a ``TypeError``/``ValueError`` naming ``data`` if it is not usable."""
    if isinstance(data, Tensor):
        if data.ndim < 1 or data.shape[0] == 0:
            raise ValueError(f"{owner}: data is empty")
        return
    if isinstance(data, Mapping):
        check(data, f"{owner}: data")
        if count(data) == 0:
            raise ValueError(f"{owner}: data is empty")
        return
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not isinstance(data[1], Tensor) or not isinstance(data[0], (Tensor, Mapping)):
            raise TypeError(f"{owner}: data must be {ACCEPTED} (got a {type(data).__name__} of {len(data)} items)")
        x, y = data
        if isinstance(x, Mapping):
            check(x, f"{owner}: data x")
        elif x.ndim < 1:
            raise ValueError(f"{owner}: data is empty")
        n = count(x)
        if n == 0:
            raise ValueError(f"{owner}: data is empty")
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{owner}: data labels y must have shape ({n},) to match x (got {tuple(y.shape)})")
        return
    if isinstance(data, DataLoader):
        return
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{owner}: data is empty")
        return
    raise TypeError(f"{owner}: data must be {ACCEPTED} (got {type(data).__name__})")


def data_size(data: Any) -> int | None:
    """The number of points, when known without iterating."""
    if isinstance(data, (Tensor, Mapping)):
        return count(data)
    if isinstance(data, (tuple, list)):
        return count(data[0])
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(dataset)
    except TypeError:
        return None


def rows_of(data: Any, index: Tensor | slice) -> Points | None:
    """The points ``data[index]`` without reading the others: from a tensor, a pair
    ``(x, y)`` or a sized map-style Dataset (``None`` for a DataLoader or an iterable)."""
    if isinstance(data, (Tensor, Mapping)):
        return rows(data, index)
    if isinstance(data, (tuple, list)):
        return rows(data[0], index)
    if isinstance(data, DataLoader) or isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        return None
    positions = range(len(data))[index] if isinstance(index, slice) else index.tolist()  # type: ignore[arg-type]
    if not positions:
        return None
    return _split_batch(default_collate([data[i] for i in positions]), "data")[0]  # as a DataLoader batch


def labels_of(data: Any) -> Tensor | None:
    """The label tensor when it is at hand without iterating (a pair ``(x, y)``)."""
    return data[1] if isinstance(data, (tuple, list)) else None


def _split_batch(batch: Any, owner: str) -> tuple[Points, Tensor | None]:
    if isinstance(batch, (Tensor, Mapping)):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (Tensor, Mapping)):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], y
    raise TypeError(f"{owner}: data batches must be tensors, mappings of tensors or tuples (x, y, ...) (got {type(batch).__name__})")


def batches(data: Any, batch_size: int, owner: str) -> Iterator[tuple[Points, Tensor | None]]:
    """Yield ``(x, y)`` batches (``y`` is ``None`` when the data has no labels)."""
    if isinstance(data, (Tensor, Mapping)):
        for i in range(0, count(data), batch_size):
            yield rows(data, slice(i, i + batch_size)), None
        return
    if isinstance(data, (tuple, list)):
        x, y = data
        for i in range(0, count(x), batch_size):
            yield rows(x, slice(i, i + batch_size)), y[i : i + batch_size]
        return
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield _split_batch(batch, owner)


def as_label_tensor(y: Tensor | None, owner: str) -> Tensor:
    if y is None:
        raise ValueError(f"{owner}: the data has no labels; give (x, y) or a Dataset of (x, y) pairs")
    if y.ndim != 1:
        raise ValueError(f"{owner}: labels must be a 1-D tensor of class indices (got shape {tuple(y.shape)})")
    return torch.as_tensor(y)
