"""QoIs on the model's output: a class score, a comparison of two, the predicted class.

For an output of shape ``(B, C)`` the score of class ``c`` is ``f_c = out[:, c]``; for
``(B, C, *rest)`` (e.g. a segmentation map) it is summed over ``rest``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._base import QoIContext, QuantityOfInterest
from ._select import check_selector, select


def _check_class(value: Any, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int class index (got {type(value).__name__} {value!r})")
    if value < 0:
        raise ValueError(f"{owner}: {name} must be >= 0 (got {value})")
    return value


def class_scores(out: Any, owner: Any) -> Tensor:
    """``out`` as ``(B, C)`` scores (summing any trailing dimensions)."""
    if not isinstance(out, Tensor) or out.ndim < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{owner!r}: needs an output of shape (batch, classes, ...); got {shape}")
    return out.flatten(2).sum(-1) if out.ndim > 2 else out


def _check_in_range(c: int, scores: Tensor, name: str, owner: Any) -> None:
    if c >= scores.shape[1]:
        raise ValueError(f"{owner!r}: {name} {c} is out of range for an output with {scores.shape[1]} classes")


class ClassQoI(QuantityOfInterest):
    """``f_c``: the score of class ``c``."""

    def __init__(self, c: int, *, output: Any = None) -> None:
        self.c = _check_class(c, "class", "ClassQoI")
        self.output = check_selector(output, "ClassQoI")

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        scores = class_scores(select(output, self.output, self), self)
        _check_in_range(self.c, scores, "class", self)
        return scores[:, self.c]

    def __repr__(self) -> str:
        return f"ClassQoI({self.c})"


class ComparativeQoI(QuantityOfInterest):
    """``f_a − f_b``: what makes the model prefer class ``a`` over class ``b``."""

    def __init__(self, a: int, b: int, *, output: Any = None) -> None:
        self.a = _check_class(a, "a", "ComparativeQoI")
        self.b = _check_class(b, "b", "ComparativeQoI")
        self.output = check_selector(output, "ComparativeQoI")

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        scores = class_scores(select(output, self.output, self), self)
        _check_in_range(self.a, scores, "a", self)
        _check_in_range(self.b, scores, "b", self)
        return scores[:, self.a] - scores[:, self.b]

    def __repr__(self) -> str:
        return f"ComparativeQoI({self.a}, {self.b})"


class MaxClassQoI(QuantityOfInterest):
    """``f_{c(x)}`` where ``c(x)`` is the class predicted at each sample's *anchor*
    point (not at the sample: along a path from a black baseline the argmax changes and
    the explanation must stay about the explained point). Called directly on an output,
    without an anchor output, it uses each row's own argmax."""

    needs_anchor_output = True

    def __init__(self, *, output: Any = None) -> None:
        self.output = check_selector(output, "MaxClassQoI")

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        scores = class_scores(select(output, self.output, self), self)
        anchor = scores if context.anchor_output is None else class_scores(select(context.anchor_output, self.output, self), self)
        predicted = anchor.argmax(dim=1, keepdim=True)
        return scores.gather(1, predicted).squeeze(1)

    def __repr__(self) -> str:
        return "MaxClassQoI()"
