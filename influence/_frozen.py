"""Hold a model still for the duration of a query and give it back exactly as it was."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def frozen(modules: list[nn.Module]) -> Iterator[None]:
    """Put every module in eval mode and every parameter to ``requires_grad=False``;
    restore both on exit, also when the body raises. With frozen weights the part of
    the network before the cut records no autograd graph."""
    modes: dict[nn.Module, bool] = {}  # the modules in training mode
    flags: dict[nn.Parameter, bool] = {}  # the parameters that require grad
    for root in modules:
        for m in root.modules():
            if m.training:
                modes[m] = True
            for p in m._parameters.values():  # one walk over the modules
                if p is not None and p.requires_grad:
                    flags[p] = True
    try:
        for m in modes:
            m.training = False
        for p in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p in flags:
            p.requires_grad_(True)
        for m in modes:
            m.training = True
