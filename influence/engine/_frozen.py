"""Hold a model still for the duration of a query and give it back exactly as it was."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn


class ModuleSurvey:
    """What a query needs to know of its modules, from one walk over them: the modules in
    training mode and the parameters that require grad (to freeze and restore), where
    the first tensor lives and the first floating parameter's dtype (the query's
    defaults), whether every tensor is already on a device and dtype, and whether there
    is a 2-D convolution."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.training: list[nn.Module] = []
        self.grad: list[nn.Parameter] = []
        self.has_conv = False
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._placements: set[tuple[torch.device, torch.dtype | None]] = set()
        seen: set[int] = set()
        placements = self._placements
        buffer_device = None
        stack = list(reversed(modules))
        while stack:  # every module once, in the order of named_modules
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            children = m._modules
            if children:
                stack.extend(c for c in reversed(children.values()) if c is not None)
            if m.training:
                self.training.append(m)
            if not self.has_conv and isinstance(m, nn.Conv2d):
                self.has_conv = True
            for t in m._parameters.values():
                if t is None:
                    continue
                if t.requires_grad:
                    self.grad.append(t)  # type: ignore[arg-type]
                floating = t.is_floating_point()
                if self.dtype is None and floating:
                    self.dtype = t.dtype
                if self.device is None:
                    self.device = t.device
                placements.add((t.device, t.dtype if floating else None))
            for t in m._buffers.values():
                if t is not None:
                    buffer_device = buffer_device or t.device
                    placements.add((t.device, t.dtype if t.is_floating_point() else None))
        self.device = self.device or buffer_device  # the first parameter's, else the first buffer's

    def all_on(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Is every parameter and buffer on ``device``, every floating one in ``dtype``?"""
        return all(d == device and (t is None or t == dtype) for d, t in self._placements)


@contextmanager
def frozen(modules: Sequence[nn.Module] | ModuleSurvey) -> Iterator[None]:
    """Put every module in eval mode and every parameter to ``requires_grad=False``;
    restore both on exit, also when the body raises. With frozen weights the part of
    the network before the cut records no autograd graph."""
    survey = modules if isinstance(modules, ModuleSurvey) else ModuleSurvey(modules)
    try:
        for m in survey.training:
            m.training = False
        for p in survey.grad:
            p.requires_grad_(False)
        yield
    finally:
        for p in survey.grad:
            p.requires_grad_(True)
        for m in survey.training:
            m.training = True
