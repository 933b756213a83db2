"""Quantities of interest: the behaviour being explained, one scalar per sample.

A QoI maps the model's output ``f(x)`` (and, for internal neurons, activations recorded
during the same forward pass) to a ``(B,)`` tensor. QoIs form a vector space:
``ClassQoI(a) - ClassQoI(b)`` is the comparison ``f_a − f_b``; ``2 * q`` scales.
Influence is linear in the QoI, so the influence of ``Σ c_j q_j`` is ``Σ c_j χ(q_j)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Mapping

from torch import Tensor

from ._select import check_selector, select


@dataclass(frozen=True)
class QoIContext:
    """What a QoI may read besides the output: ``activations`` (layer name ->
    ``(B, *shape)``, for the layers the QoI lists in ``layers``) and ``anchor_output``
    (the model's output at each sample's anchor point, for :class:`~qoi.MaxClassQoI`)."""

    activations: Mapping[str, Tensor] = field(default_factory=dict)
    anchor_output: Any = None


class QuantityOfInterest(ABC):
    """Base of every QoI. Subclasses write :meth:`_evaluate`; ``__call__`` checks that
    the result is one scalar per sample.

    Class attributes a subclass may set: ``layers`` (names of modules whose outputs it
    reads from ``context.activations``) and ``needs_anchor_output``.
    """

    layers: tuple[str, ...] = ()
    needs_anchor_output: bool = False

    def __call__(self, output: Any, context: QoIContext | None = None) -> Tensor:
        value = self._evaluate(output, context or QoIContext())
        batch = _batch_size(output, context)
        if not isinstance(value, Tensor) or value.ndim != 1 or (batch is not None and value.shape[0] != batch):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            want = f"({batch},)" if batch is not None else "(batch,)"
            raise ValueError(f"{self!r}: a QoI must give one scalar per sample, shape {want}; got {got}")
        return value

    @abstractmethod
    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        """``(B,)`` values of the quantity for a batch."""

    def __add__(self, other: Any) -> "LinearQoI":
        return LinearQoI(((1.0, self), (1.0, as_qoi(other))))

    def __sub__(self, other: Any) -> "LinearQoI":
        return LinearQoI(((1.0, self), (-1.0, as_qoi(other))))

    def __mul__(self, c: Any) -> "LinearQoI":
        if isinstance(c, bool) or not isinstance(c, Real):
            return NotImplemented
        return LinearQoI(((float(c), self),))

    __rmul__ = __mul__

    def __neg__(self) -> "LinearQoI":
        return LinearQoI(((-1.0, self),))


def _batch_size(output: Any, context: QoIContext | None) -> int | None:
    if isinstance(output, Tensor) and output.ndim >= 1:
        return output.shape[0]
    if context is not None:
        for act in context.activations.values():
            return act.shape[0]
    return None


class LinearQoI(QuantityOfInterest):
    """``Σ_j c_j q_j``."""

    def __init__(self, terms: tuple[tuple[float, QuantityOfInterest], ...]) -> None:
        flat: list[tuple[float, QuantityOfInterest]] = []
        for c, q in terms:
            if isinstance(q, LinearQoI):
                flat += [(c * c2, q2) for c2, q2 in q.terms]
            else:
                flat.append((c, q))
        self.terms = tuple(flat)
        self.layers = tuple(dict.fromkeys(name for _, q in flat for name in q.layers))
        self.needs_anchor_output = any(q.needs_anchor_output for _, q in flat)

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        total: Tensor | None = None
        for c, q in self.terms:
            v = c * q(output, context)
            total = v if total is None else total + v
        assert total is not None
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{c:g}*{q!r}" for c, q in self.terms)


class FunctionQoI(QuantityOfInterest):
    """A plain callable ``output -> (B,)``; ``output=`` selects from a tuple/dict."""

    def __init__(self, fn: Callable[[Any], Tensor], output: Any = None) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionQoI: fn must be callable (got {type(fn).__name__})")
        self.fn, self.output = fn, check_selector(output, "FunctionQoI")

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        return self.fn(select(output, self.output, self, allow_structured=self.output is None))

    def __repr__(self) -> str:
        return f"FunctionQoI({getattr(self.fn, '__name__', 'callable')})"


def as_qoi(value: Any) -> QuantityOfInterest:
    """Coerce a QoI shorthand: a QoI is returned as is, an int ``c`` is ``ClassQoI(c)``,
    a callable ``output -> (B,)`` is wrapped."""
    if isinstance(value, QuantityOfInterest):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        from ._class import ClassQoI

        return ClassQoI(value)
    if callable(value):
        return FunctionQoI(value)
    raise TypeError(
        f"qoi must be a QuantityOfInterest, an int class index or a callable output -> (batch,) (got {type(value).__name__})"
    )
