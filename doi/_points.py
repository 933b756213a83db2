"""Batches of points: a tensor ``(N, *shape)``, or a mapping or tuple of tensors that share
their first dimension ``N`` (a tokenizer's ``BatchEncoding``: ``input_ids``,
``attention_mask``, ...; the model is then called as ``model(**points)`` or
``model(*points)``). Every tensor of a structured batch is taken row by row with its
points, so an attention mask always travels with its tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

import torch
from torch import Tensor

Points = Union[Tensor, Mapping[str, Tensor], tuple[Tensor, ...]]


def is_structured(points: Any) -> bool:
    """A mapping or tuple of tensors (not one tensor)?"""
    return isinstance(points, (Mapping, tuple))


def tensors(points: Points) -> list[Tensor]:
    if isinstance(points, Tensor):
        return [points]
    return list(points.values()) if isinstance(points, Mapping) else list(points)


def apply(points: Points, fn: Callable[[Tensor], Tensor]) -> Points:
    """``fn`` applied to every tensor, the structure kept (a mapping becomes a dict)."""
    if isinstance(points, Tensor):
        return fn(points)
    if isinstance(points, Mapping):
        return {k: fn(v) for k, v in points.items()}
    return tuple(fn(v) for v in points)


def count(points: Points) -> int:
    """How many points: the shared first dimension."""
    if isinstance(points, Tensor):
        return points.shape[0]
    return tensors(points)[0].shape[0]


def rows(points: Points, index: slice | Tensor) -> Points:
    """The points ``index`` (a slice or a tensor of positions) of every tensor."""
    if isinstance(points, Tensor):
        return points[index]
    return apply(points, lambda t: t[index])


def cat(parts: list[Points]) -> Points:
    """Batches of points, one after the other."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)  # type: ignore[arg-type]
    if isinstance(first, Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in first}  # type: ignore[index]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))  # type: ignore[index]


def describe(points: Points) -> str:
    """The shape of one point, for messages: ``(3, 32, 32)`` or ``{input_ids: (7,), ...}``."""
    if isinstance(points, Tensor):
        return str(tuple(points.shape[1:]))
    if isinstance(points, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(v.shape[1:])}" for k, v in points.items()) + "}"
    return "(" + ", ".join(str(tuple(v.shape[1:])) for v in points) + ")"


def check(points: Any, owner: str) -> None:
    """A non-empty mapping or tuple of tensors with one first dimension; ``TypeError`` or
    ``ValueError`` naming ``owner`` otherwise."""
    items = list(points.items()) if isinstance(points, Mapping) else list(enumerate(points))
    if not items:
        raise ValueError(f"{owner}: an empty {type(points).__name__}; give the model's input tensors")
    for key, value in items:
        if not isinstance(value, Tensor):
            raise TypeError(f"{owner}[{key!r}]: expected a tensor (N, ...) (got {type(value).__name__})")
        if value.ndim == 0:
            raise ValueError(f"{owner}[{key!r}]: expected a batch (N, ...) (got a 0-d tensor)")
    sizes = {key: value.shape[0] for key, value in items}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{owner}: its tensors must share their first dimension, the number of points (got {sizes})")

