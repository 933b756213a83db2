"""A network ``f`` split at a cut into ``f = g ∘ h``.

``h`` maps the model's inputs ``x`` to the activations ``z = h(x)`` at the cut (the
slice's *units*); ``g`` maps those activations to the model's output. Internal influence
is taken with respect to ``z``: ``∂(q∘g)/∂z`` at ``z = h(x)``. The input slice has
``h = id`` and ``g = f``.
"""

from __future__ import annotations

from collections.abc import Mapping

import copy
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from ._affine import AffinePrefix, affine_prefix
from ._cut import Cut, find_module
from ._realisations import FunctionSplit, GraphSplit, HookSplit, SequentialSplit, _ModuleSplit

Realisation = Literal["auto", "sequential", "graph", "hook"]
_REALISATIONS = ("auto", "sequential", "graph", "hook")


_OURS = tuple(str(Path(__file__).resolve().parent.parent / name) for name in ("influence", "slices", "doi", "qoi"))


def raised_by_a_model(traceback: Any) -> bool:
    """Was an error raised inside a module's forward pass, by code that is not this
    library's (a model's own check of its arguments, e.g. a Hugging Face model given no
    ``input_ids``)?"""
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code)
        traceback = traceback.tb_next
    in_module = any(code.co_name in ("_call_impl", "_wrapped_call_impl") for code in frames)
    return in_module and not frames[-1].co_filename.startswith(_OURS)


class Slice:
    """``model`` split at ``layer`` into ``g ∘ h``.

    Args:
        model: the network ``f``.
        layer: a dotted name from ``model.named_modules()`` (the cut is at that module's
            output), a :class:`Cut`, or ``None`` for the input slice (``h = id``).
        realisation: how to build ``h`` and ``g``. ``"auto"`` takes the first that
            applies of ``"sequential"`` (halves of an ``nn.Sequential``), ``"graph"``
            (a ``torch.fx`` graph split at a node every input-to-output path goes
            through) and ``"hook"`` (forward-hook substitution, any module). All agree.

    Shapes: ``h(x)`` maps ``(B, *input)`` to ``(B, *unit)``; ``g(z)`` maps
    ``(B, *unit)`` to the model's output. With the hook realisation ``g`` also needs the
    inputs that ``z`` came from, ``g(z, x)``: the model must run up to the cut.
    """

    def __init__(self, model: nn.Module, layer: str | Cut | None, *, realisation: Realisation = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Slice: model must be a torch.nn.Module (got {type(model).__name__})")
        if realisation not in _REALISATIONS:
            raise ValueError(f"Slice: realisation must be one of {_REALISATIONS} (got {realisation!r})")
        self.model = model
        if layer is None:
            self.cut: Cut | None = None
            self._impl: Any = FunctionSplit(None, model, "identity")
            return
        cut = layer if isinstance(layer, Cut) else Cut(layer)
        if not isinstance(cut.layer, str):
            raise TypeError(f"Slice: layer must be a module name, a Cut or None (got {layer!r})")
        module = find_module(model, cut.layer, what="Slice")
        self.cut = cut
        impl: Any = None
        if realisation in ("auto", "sequential"):
            impl = SequentialSplit.build(model, cut)
        if impl is None and realisation in ("auto", "graph"):
            impl = GraphSplit.build(model, cut)
        if impl is None and realisation in ("auto", "hook"):
            impl = HookSplit(model, module, cut)
        if impl is None:
            raise ValueError(
                f"Slice: realisation={realisation!r} does not apply to {type(model).__name__} at "
                f"{cut.layer!r}; use realisation='auto' (falls back to hooks)"
            )
        self._impl = impl

    @classmethod
    def input(cls, model: nn.Module) -> "Slice":
        """The input slice: ``h`` is the identity, ``g`` is the model."""
        return cls(model, None)

    @classmethod
    def from_functions(
        cls, h: Callable[[Tensor], Tensor], g: Callable[[Tensor], Any], *, model: nn.Module | None = None
    ) -> "Slice":
        """A slice given by its two halves. ``model`` (optional) is the module in which
        layer names of :class:`~qoi.NeuronQoI` are looked up, and whose parameters are
        frozen during a query; when ``h`` or ``g`` are modules they are frozen too."""
        if not callable(h) or not callable(g):
            raise TypeError("Slice.from_functions: h and g must be callables")
        self = cls.__new__(cls)
        self.model = model
        self.cut = None
        self._impl = FunctionSplit(h, g, "functions")
        return self

    @property
    def layer(self) -> str | None:
        """The cut's layer name (``None`` for the input slice and user functions)."""
        return None if self.cut is None else self.cut.layer

    @property
    def realisation(self) -> str:
        """``"identity"``, ``"sequential"``, ``"graph"``, ``"hook"`` or ``"functions"``."""
        return self._impl.realisation

    @property
    def is_split(self) -> bool:
        """True when ``g(z)`` is a function of ``z`` alone (no inputs needed)."""
        return self._impl.is_split

    @property
    def is_input(self) -> bool:
        return self._impl.realisation == "identity"

    def h(self, x: Tensor) -> Tensor:
        """Activations at the cut: ``(B, *input) -> (B, *unit)``."""
        return self._impl.h(x)

    def g(self, z: Tensor, x: Tensor | None = None) -> Any:
        """The model's output from activations at the cut: ``(B, *unit) -> output``.
        ``x`` (the inputs ``z`` came from) is needed only when ``is_split`` is False."""
        return self._impl.g(z, x)

    def baseline(self, x: Any) -> Tensor:
        """The slice-space baseline of inputs ``x``: ``h(x)`` without autograd, with the
        model in eval mode (restored after). For a text model sliced at its word
        embeddings, ``x`` are baseline token ids (a pad or mask token at each position):
        ``LineDoI(slc.baseline(pad_ids), space="slice")``, with ``pad_ids`` of shape
        ``(1, L)`` (one baseline for every anchor) or ``(N, L)`` (one per anchor)."""
        if not isinstance(x, (Tensor, Mapping, tuple)):
            raise TypeError(f"Slice.baseline: expected inputs as the model takes them: a tensor, or a mapping or tuple of tensors (got {type(x).__name__})")
        model = self.model
        modes = [(m, m.training) for m in model.modules()] if model is not None else []
        try:
            for m, _ in modes:
                m.training = False
            with torch.no_grad():
                return self.h(x)
        except (RuntimeError, ValueError, TypeError) as e:
            if isinstance(e, RuntimeError) or raised_by_a_model(e.__traceback__):
                first = (str(e).strip().splitlines() or [""])[0]
                raise ValueError(f"Slice.baseline: the model fails on these inputs ({type(e).__name__}: {first}); give baseline inputs as the model takes them") from None
            raise
        finally:
            for m, mode in modes:
                m.training = mode

    def forward_cut(self, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Any]:
        """One forward pass of ``f`` on ``x`` returning ``(z, output)`` where ``z = h(x)``
        is a fresh leaf tensor that requires grad (in ``dtype`` when given), so gradients
        of the output stop at the cut and no graph is kept for ``h``."""
        return self._impl.forward_cut(x, dtype)

    def g_affine_prefix(self, z: Tensor) -> AffinePrefix | None:
        """``g = rest ∘ prefix`` with ``prefix`` the affine layers right after the cut (see
        :mod:`slices._affine`), checked on activations ``z``; ``None`` when ``g`` has no
        such prefix, cannot be traced, or needs the inputs (hook realisation). Call it
        with the model in eval mode (batch norm is affine only there)."""
        g = self._impl._g if isinstance(self._impl, (_ModuleSplit, FunctionSplit)) else None
        return affine_prefix(g, z) if isinstance(g, nn.Module) else None

    def h_affine_prefix(self, x: Tensor) -> AffinePrefix | None:
        """The same for ``h``: the affine layers right after the input, checked on ``x``
        (``None`` for the input slice, hooks and user functions)."""
        return affine_prefix(self._impl._h, x) if isinstance(self._impl, _ModuleSplit) else None

    def modules(self) -> list[nn.Module]:
        """The modules whose parameters a query freezes (and restores)."""
        found = [self.model] if self.model is not None else []
        if isinstance(self._impl, FunctionSplit):
            found += [f for f in (self._impl._h, self._impl._g) if isinstance(f, nn.Module)]
        return found

    def moved(self, device: torch.device, dtype: torch.dtype) -> "Slice":
        """This slice on ``device``/``dtype``: itself when the model is already there,
        else the same slice over a converted copy (the user's model is not touched)."""
        if isinstance(self._impl, FunctionSplit) and not self.is_input:
            # user functions cannot be converted; refuse clearly rather than fail deep in torch
            params = [p for m in self.modules() for p in m.parameters()]
            tensors = params + [b for m in self.modules() for b in m.buffers()]
            if any(t.device != device for t in tensors) or any(p.dtype != dtype for p in params if p.is_floating_point()):
                found = {(str(t.device), str(t.dtype).replace("torch.", "")) for t in params or tensors}
                raise ValueError(
                    f"device/dtype: a slice made with Slice.from_functions cannot be converted to "
                    f"device={device}, dtype={str(dtype).replace('torch.', '')} (its modules are on {sorted(found)}); "
                    "move h and g there yourself, or leave device and dtype unset"
                )
            return self
        if self.model is None:
            return self
        tensors = (t for m in self.model.modules() for d in (m._parameters, m._buffers) for t in d.values() if t is not None)
        if all(t.device == device and (t.dtype == dtype or not t.is_floating_point()) for t in tensors):
            return self
        model = copy.deepcopy(self.model).to(device=device, dtype=dtype)
        return Slice(model, self.cut, realisation=self.realisation if self.cut is not None else "auto")

    def __repr__(self) -> str:
        where = "input" if self.is_input else (str(self.cut) if self.cut else "functions")
        model = type(self.model).__name__ if self.model is not None else None
        return f"Slice({model}, {where!r}, realisation={self.realisation!r})"
