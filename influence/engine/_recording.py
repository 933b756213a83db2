"""Record the outputs of named layers during forward passes, for QoIs that read them
(:class:`~qoi.NeuronQoI`).

A layer's output may be written in place after the layer has run: ``ReLU(inplace=True)``
after a batch norm, or ``out += identity; out.relu_()`` in a residual block, as in
torchvision's ResNets, MobileNets and DenseNets. The tensor the layer returned then holds
the later values, and its autograd history is the later op's. So the recorder keeps a
copy of every output (``clone`` is differentiable: the gradient through the copy is the
gradient through the layer's output as it was), and the model goes on with the
original, exactly as without the recorder.

A layer that runs more than once in one forward pass (a module reused, like
torchvision's ``Bottleneck.relu``) has no single output; reading it is an error.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from torch import Tensor, nn

from slices._cut import find_module


def _copy(value: Any) -> Any:
    """``value`` with every tensor in it cloned (tuples, lists and dicts walked)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


class LayerRecorder:
    """The outputs of some layers in the current forward pass: ``recorder.outputs`` maps a
    layer's name to a copy of its output. :meth:`clear` before each forward pass,
    :meth:`check` after it."""

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.outputs: dict[str, Any] = {}
        self._calls: dict[str, int] = {}

    def clear(self) -> None:
        if self.outputs:
            self.outputs.clear()
            self._calls.clear()

    def _record(self, name: str, output: Any) -> None:
        self._calls[name] = self._calls.get(name, 0) + 1
        self.outputs[name] = _copy(output)

    def check(self) -> None:
        """Raise if a recorded layer ran more than once since :meth:`clear`."""
        for name, calls in self._calls.items():
            if calls > 1:
                raise ValueError(
                    f"qoi: layer {name!r} runs {calls} times in one forward pass (a module used more than once, "
                    "e.g. one ReLU shared by a block), so it has no single output to read; "
                    "name a module that runs once, or give each use its own module"
                )

    @contextmanager
    def attached(self, model: nn.Module | None, what: str = "NeuronQoI") -> Iterator[Mapping[str, Any]]:
        """Hooks on the layers for the duration of the block (removed also on error)."""
        if not self.layers:
            yield self.outputs
            return
        if model is None:
            raise ValueError(
                f"qoi: reads layers {self.layers} but the slice has no model to find them in; pass model= to Slice.from_functions"
            )
        handles = []
        try:
            for name in self.layers:
                module = find_module(model, name, what=what)
                handles.append(module.register_forward_hook(lambda m, args, out, name=name: self._record(name, out)))
            yield self.outputs
        finally:
            for handle in handles:
                handle.remove()
