"""The QoI of one internal neuron: a unit of a layer's output, or a whole channel.

For an activation ``a`` of shape ``(B, C, *spatial)``, ``NeuronQoI(layer, c)`` is the
channel ``Σ_{spatial} a[:, c, ...]``; ``NeuronQoI(layer, (c, i, j))`` is the unit
``a[:, c, i, j]``. For ``(B, F)`` an int picks unit ``a[:, i]``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._base import QoIContext, QuantityOfInterest


class NeuronQoI(QuantityOfInterest):
    """One neuron (or channel) of the module named ``layer``."""

    def __init__(self, layer: str, index: int | tuple[int, ...]) -> None:
        if not isinstance(layer, str) or not layer:
            raise TypeError(f"NeuronQoI: layer must be a module name (got {layer!r})")
        if isinstance(index, list):
            index = tuple(index)
        ints = (index,) if isinstance(index, int) else index
        if not isinstance(ints, tuple) or not ints or not all(isinstance(i, int) and not isinstance(i, bool) for i in ints):
            raise TypeError(f"NeuronQoI: index must be an int or a tuple of ints (got {index!r})")
        if any(i < 0 for i in ints):
            raise ValueError(f"NeuronQoI: index must be non-negative (got {index!r})")
        self.layer, self.index = layer, index
        self.layers = (layer,)

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        if self.layer not in context.activations:
            raise ValueError(
                f"{self!r}: no activation recorded for layer {self.layer!r}; the layer must run after the slice's cut "
                "(and be a module the model calls)"
            )
        act = context.activations[self.layer]
        unit = tuple(act.shape[1:])
        index = (self.index,) if isinstance(self.index, int) else self.index
        if len(index) > len(unit) or (not isinstance(self.index, int) and len(index) != len(unit)):
            raise ValueError(f"{self!r}: index {self.index!r} does not fit activations of shape {unit} at {self.layer!r}")
        for d, (i, n) in enumerate(zip(index, unit)):
            if i >= n:
                raise ValueError(f"{self!r}: index {self.index!r} is out of range in dim {d} (size {n}) of {unit} at {self.layer!r}")
        picked = act[(slice(None), *index)]
        return picked.flatten(1).sum(1) if picked.ndim > 1 else picked

    def __repr__(self) -> str:
        return f"NeuronQoI({self.layer!r}, {self.index!r})"
