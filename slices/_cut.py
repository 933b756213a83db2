"""Where a network is cut: a named submodule, at its output or at its input."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from torch import nn

CutSide = Literal["output", "input"]


@dataclass(frozen=True)
class Cut:
    """The place where ``f`` is split into ``g ∘ h``.

    ``layer`` is a dotted name from ``model.named_modules()`` (e.g. ``"layer2"``,
    ``"features.7"``); ``at="output"`` cuts after that module runs, ``at="input"``
    just before it (on its first positional argument), which is handy when the tensor
    you want (say, flattened features) is made by a functional call and has no module
    of its own.
    """

    layer: str
    at: CutSide = "output"

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise TypeError(f"Cut: layer must be a non-empty module name (got {self.layer!r})")
        if self.at not in ("output", "input"):
            raise ValueError(f"Cut: at must be 'output' or 'input' (got {self.at!r})")

    def __str__(self) -> str:
        return self.layer if self.at == "output" else f"{self.layer}@input"


def find_module(model: nn.Module, name: str, *, what: str = "layer") -> nn.Module:
    """Return ``model``'s submodule called ``name``, or raise a ``ValueError`` listing
    the closest valid names."""
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    else:
        shown = list(modules)[:12]
        more = ", ..." if len(modules) > len(shown) else ""
        hint = "valid names: " + ", ".join(repr(c) for c in shown) + more
    raise ValueError(f"{what}: unknown layer {name!r} in {type(model).__name__}; {hint}")
