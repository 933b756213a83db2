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
    flags = {}
    modes = {}
    for root in modules:
        for m in root.modules():
            modes.setdefault(m, m.training)
        for p in root.parameters():
            flags.setdefault(p, p.requires_grad)
    try:
        for m in modes:
            m.training = False
        for p in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
