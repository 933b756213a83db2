"""Labelled data in memory, as the workflows (contrast, audit, essence, demo) take it:
a pair of tensors ``(x, y)`` or a mapping with keys ``"x"`` and ``"y"`` (what
:func:`influence.synthetic.glyph_images` returns). Workflows that also take text accept
``(inputs, y)`` with ``inputs`` token ids, or a mapping or tuple of tensors (a
tokenizer's output) given to the model as ``model(**inputs)`` (:func:`labelled_points`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from doi._points import Points, check as check_points, count, is_structured


ACCEPTED = "a pair of tensors (x, y) or a mapping with keys 'x' and 'y'"


def labelled(data: Any, owner: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from ``data``: ``x`` floating ``(N, ...)``, ``y`` integer ``(N,)``."""
    if isinstance(data, Mapping):
        if "x" not in data or "y" not in data:
            raise ValueError(f"{owner}: data must be {ACCEPTED} (the mapping has keys {sorted(map(str, data))})")
        data = (data["x"], data["y"])
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError(f"{owner}: data must be {ACCEPTED} (got {type(data).__name__})")
    x, y = data
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{owner}: x must be a non-empty batch (N, ...) (got shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: x must be floating point (got {x.dtype})")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{owner}: y must be integer labels of shape ({x.shape[0]},) (got {y.dtype} {tuple(y.shape)})")
    return x, y


def labelled_points(data: Any, owner: str) -> tuple[Points, Tensor]:
    """``(inputs, y)`` from ``data``: ``inputs`` a tensor ``(N, ...)`` (floating, or
    integer token ids) or a mapping or tuple of tensors sharing ``N``; ``y`` integer
    ``(N,)``. A mapping with keys ``"x"`` and ``"y"`` is read as ``(x, y)``."""
    if isinstance(data, Mapping) and "x" in data and "y" in data:
        data = (data["x"], data["y"])
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor)):
        raise TypeError(f"{owner}: data must be (inputs, labels): inputs a tensor, or a mapping or tuple of tensors (got {type(data).__name__})")
    x, y = data
    if isinstance(x, list):
        x = tuple(x)
    if is_structured(x):
        check_points(x, f"{owner}: data's inputs")
    elif not isinstance(x, Tensor):
        raise TypeError(f"{owner}: data's inputs must be a tensor, or a mapping or tuple of tensors (got {type(x).__name__})")
    elif x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{owner}: inputs must be a non-empty batch (N, ...) (got shape {tuple(x.shape)})")
    n = count(x)
    if n == 0:
        raise ValueError(f"{owner}: data's inputs hold no points")
    if y.ndim != 1 or y.shape[0] != n or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{owner}: labels must be integers of shape ({n},) (got {y.dtype} {tuple(y.shape)})")
    return x, y


def class_list(value: int | Sequence[int] | None, y: Tensor, name: str, owner: str) -> tuple[int, ...]:
    """``value`` as a tuple of class labels present in ``y`` (``None``: every label)."""
    present = sorted(int(c) for c in torch.unique(y))
    if value is None:
        return tuple(present)
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value) if isinstance(value, (tuple, list)) else None
    if not items or not all(isinstance(c, int) and not isinstance(c, bool) for c in items):
        raise TypeError(f"{owner}: {name} must be a class label or a list of them (got {value!r})")
    missing = [c for c in items if c not in present]
    if missing:
        raise ValueError(f"{owner}: {name} {missing} not in the data's labels {present[:20]}")
    return tuple(dict.fromkeys(items))


def pixel_maps(attributions: Tensor, input_ndim: int) -> Tensor:
    """Per-pixel attributions ``(N, H, W)`` from input attributions: ``(N, C, H, W)`` are
    summed over channels, ``(N, H, W)`` are returned as they are."""
    if attributions.ndim == 4:
        return attributions.sum(1)
    if attributions.ndim == 3:
        return attributions
    raise ValueError(f"attributions must be (N, C, H, W) or (N, H, W) (got shape {tuple(attributions.shape)}, inputs of {input_ndim} dims)")


def check_choice(value: Any, name: str, owner: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{owner}: {name} must be one of {tuple(options)} (got {value!r})")
    return value
