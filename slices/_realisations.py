"""Three ways to realise ``f = g ∘ h`` at a cut; they compute the same functions.

* :class:`SequentialSplit` — the model is an ``nn.Sequential`` (possibly nested) and the
  cut is between two of its children: ``h`` and ``g`` are the two halves.
* :class:`GraphSplit` — ``torch.fx`` traces the model (treating every module that does
  not contain the cut as a leaf) and the cut node separates the graph: every path from
  the input to the output goes through it. ``h`` and ``g`` are the two sub-graphs.
* :class:`HookSplit` — the fallback for any ``nn.Module``: ``h`` runs the model until
  the cut and stops; ``g(z; x)`` runs the model on ``x`` with the cut's value replaced
  by ``z``. When the cut separates the graph the result does not depend on ``x``; when
  it does not (a skip connection jumps over it) ``g`` is the model with the other
  activations held at their values for ``x``, which is what hook-based libraries such as
  Captum compute.
* :class:`FunctionSplit` — ``h`` and ``g`` given by the user.

Every realisation offers ``forward_cut(x) -> (z, output)``: one forward pass of ``f``
in which ``z = h(x)`` is detached from ``h`` and made a leaf that requires grad, so that
``autograd.grad(q(output), z)`` is ``∂(q∘g)/∂h`` at ``h(x)`` and no graph is kept for
``h``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

from ._affine import eliminate_dead_code, mutates
from ._cut import Cut


def _check_tensor(t: Any, cut: Cut) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(
            f"Slice: the {cut.at} of layer {cut.layer!r} is a {type(t).__name__}, not a tensor; "
            "cut at a submodule whose output is one tensor, or use Cut(layer, at='input')"
        )
    return t


def _as_leaf(t: Any, cut: Cut, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` detached from ``h`` as a leaf that requires grad (in ``dtype`` if given: the
    cut stays in the query's precision under autocast)."""
    t = _check_tensor(t, cut).detach()
    return (t if dtype is None else t.to(dtype)).requires_grad_(True)


def _writes_into_leaf(error: RuntimeError) -> bool:
    """Is ``error`` autograd refusing an in-place write into a leaf that requires grad
    (or into a view of one)?"""
    return "leaf Variable that requires grad is being used in an in-place operation" in str(error)


class _LeafGuard:
    """Calls ``g`` on ``z`` so that ``g`` never writes into the caller's ``z``. A model may
    write into its input in place (``x.relu_()`` first thing in a block): autograd
    refuses that for a leaf that requires grad, and ``g`` then gets a copy of ``z`` (the
    gradient through ``clone`` is the identity), from that call on; ``copy`` starts
    ``True`` where the write can be seen without running. A ``z`` that does not require
    grad (a call without gradients) is always copied: nothing would stop the write."""

    def __init__(self, copy: bool = False) -> None:
        self.copy = copy

    def __call__(self, g: Callable[[Tensor], Any], z: Tensor) -> Any:
        if self.copy or not z.requires_grad:
            return g(z.clone())
        try:
            return g(z)
        except RuntimeError as e:
            if not _writes_into_leaf(e):
                raise
        self.copy = True
        return g(z.clone())


class _ModuleSplit:
    """``h`` and ``g`` as two modules: ``g(z)`` needs nothing but ``z``."""

    realisation: str
    is_split = True

    def __init__(self, h: nn.Module, g: nn.Module, cut: Cut) -> None:
        self._h, self._g, self._cut = h, g, cut
        self._guard = _LeafGuard(_writes_into_input(g))

    def h(self, x: Tensor) -> Tensor:
        return _check_tensor(self._h(x), self._cut)

    def g(self, z: Tensor, x: Tensor | None = None) -> Any:
        # g may write into z (an in-place ReLU after a batch norm cut): a leaf that
        # requires grad must not be written into, so g then gets a copy
        return self._guard(self._g, z)

    def forward_cut(self, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Any]:
        with torch.no_grad():
            z = self._h(x)
        z = _as_leaf(z, self._cut, dtype)
        return z, self.g(z)


def _writes_into_input(g: nn.Module) -> bool:
    """Does ``g`` write into its input in place (as far as can be seen without running it)?"""
    if isinstance(g, fx.GraphModule):
        (z,) = [n for n in g.graph.nodes if n.op == "placeholder"]
        return any(mutates(g, u) and u.args and u.args[0] is z for u in z.users)
    first = g
    while isinstance(first, nn.Sequential) and len(first):
        first = first[0]
    return getattr(first, "inplace", False) is True


class SequentialSplit(_ModuleSplit):
    """``h`` and ``g`` are two halves of a (nested) ``nn.Sequential``."""

    realisation = "sequential"

    @classmethod
    def build(cls, model: nn.Module, cut: Cut) -> "SequentialSplit | None":
        halves = _split_sequential(model, cut.layer.split("."), cut.at)
        return None if halves is None else cls(*halves, cut)


def _split_sequential(model: nn.Module, path: list[str], at: str) -> tuple[nn.Module, nn.Module] | None:
    if type(model) is not nn.Sequential:
        return None
    names = list(model._modules)
    if path[0] not in names:
        return None
    i = names.index(path[0])
    children = list(model.children())
    if len(path) == 1:
        split = i + 1 if at == "output" else i
        return nn.Sequential(*children[:split]), nn.Sequential(*children[split:])
    inner = _split_sequential(children[i], path[1:], at)
    if inner is None:
        return None
    return nn.Sequential(*children[:i], inner[0]), nn.Sequential(inner[1], *children[i + 1 :])


class _CutTracer(fx.Tracer):
    """Traces only through the modules that contain the cut; every other module is a
    leaf, so the cut module appears as one node and hooks on other modules still fire."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        parts = layer.split(".")
        self._trace_through = {".".join(parts[:k]) for k in range(len(parts))}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name not in self._trace_through


class GraphSplit(_ModuleSplit):
    """``h`` and ``g`` are the two sides of a ``torch.fx`` graph cut."""

    realisation = "graph"

    @classmethod
    def build(cls, model: nn.Module, cut: Cut) -> "GraphSplit | None":
        """The split, or ``None`` when fx cannot trace the model or the cut does not
        separate the graph."""
        try:
            graph = _CutTracer(cut.layer).trace(model)
        except Exception:  # control flow, unsupported ops: the hook fallback handles it
            return None
        calls = [n for n in graph.nodes if n.op == "call_module" and n.target == cut.layer]
        if len(calls) != 1:
            return None
        node = calls[0]
        if cut.at == "input":
            if not node.args or not isinstance(node.args[0], fx.Node):
                return None
            order = {n: i for i, n in enumerate(graph.nodes)}
            value, call = node.args[0], node
            if any(mutates(model, u) and order[u] < order[call] for u in value.users):
                return None  # written in place before the layer reads it: the node is not the layer's input
            node = value
        parts = _partition(model, graph, node)
        if parts is None:
            return None
        h_module, g_module = (fx.GraphModule(model, graph) for graph in parts)
        eliminate_dead_code(g_module)
        return cls(h_module, g_module, cut)


def _partition(model: nn.Module, graph: fx.Graph, cut: fx.Node) -> tuple[fx.Graph, fx.Graph] | None:
    """Split ``graph`` at node ``cut`` if every input-dependent value used after the cut
    is computed from the cut (a separating node); else ``None``."""
    nodes = list(graph.nodes)
    depends_on_input: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in depends_on_input for a in n.all_input_nodes):
            depends_on_input.add(n)
    ancestors: set[fx.Node] = set()
    stack = [cut]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in ancestors:
                ancestors.add(a)
                stack.append(a)
    downstream: set[fx.Node] = set()
    for n in nodes[nodes.index(cut) + 1 :]:
        if any(a is cut or a in downstream for a in n.all_input_nodes):
            downstream.add(n)
    output = nodes[-1]
    if output.op != "output" or output not in downstream:
        return None
    if any(mutates(model, n) and n not in ancestors and n is not cut and n not in downstream for n in nodes):
        return None  # an in-place write whose result is not used (``x.relu_()``) would be lost
    for n in downstream:
        for a in n.all_input_nodes:
            if a is not cut and a not in downstream and a in depends_on_input:
                return None  # a value from before the cut skips over it

    h_graph, env = fx.Graph(), {}
    for n in nodes:
        if n.op == "placeholder" or n in ancestors or n is cut:
            env[n] = h_graph.node_copy(n, lambda a: env[a])
    h_graph.output(env[cut])

    g_graph = fx.Graph()
    env = {cut: g_graph.placeholder("z")}
    for n in nodes:
        if n in downstream or (n not in depends_on_input and n.op not in ("placeholder", "output")):
            env[n] = g_graph.node_copy(n, lambda a: env[a])
    return h_graph, g_graph


def call(model: Callable[..., Any], x: Any) -> Any:
    """``model(**x)`` for a mapping of inputs (a tokenizer's output), ``model(*x)`` for a
    tuple, ``model(x)`` for a tensor."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once ``h(x)`` is known."""


class HookSplit:
    """Forward hooks on the cut module: capture its value, or substitute ``z`` for it."""

    realisation = "hook"
    is_split = False

    def __init__(self, model: nn.Module, module: nn.Module, cut: Cut) -> None:
        self._model, self._module, self._cut = model, module, cut

    def _run(self, x: Tensor, swap: Callable[[Any], Any]) -> tuple[list[Any], Any]:
        """Run the model on ``x``; at the cut, record the value and replace it by
        ``swap(value)`` (which may raise :class:`_StopForward`)."""
        seen: list[Any] = []

        def replace(value: Any) -> Any:
            seen.append(value)
            if len(seen) > 1:
                raise ValueError(
                    f"Slice: layer {self._cut.layer!r} runs more than once in one forward pass; "
                    "cut at a module that runs once"
                )
            return swap(value)

        if self._cut.at == "output":
            handle = self._module.register_forward_hook(lambda m, args, out: replace(out))
        else:
            handle = self._module.register_forward_pre_hook(
                lambda m, args: (replace(args[0]), *args[1:]) if args else replace(None)
            )
        try:
            try:
                out = call(self._model, x)  # model(**x) for a mapping of inputs, model(*x) for a tuple
            except _StopForward:
                out = None
        finally:
            handle.remove()
        if not seen:
            raise ValueError(f"Slice: layer {self._cut.layer!r} never ran in the model's forward pass")
        return seen, out

    def h(self, x: Tensor) -> Tensor:
        def stop(value: Any) -> Any:
            _as_leaf(value, self._cut)
            raise _StopForward

        seen, _ = self._run(x, stop)
        return seen[0]

    def g(self, z: Tensor, x: Tensor | None = None) -> Any:
        if x is None:
            raise ValueError(
                f"Slice.g: this slice at {self._cut.layer!r} is realised with hooks (the model could "
                "not be split into two graphs), so g needs the inputs x that z came from: g(z, x)"
            )

        def substitute(value: Any) -> Tensor:
            value = _as_leaf(value, self._cut)
            if value.shape != z.shape:
                raise ValueError(
                    f"Slice.g: z has shape {tuple(z.shape)} but layer {self._cut.layer!r} "
                    f"produces {tuple(value.shape)} for these inputs"
                )
            return z.clone()  # the model may write into it (an in-place ReLU); z stays as given

        return self._run(x, substitute)[1]

    def forward_cut(self, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Any]:
        leaf: list[Tensor] = []

        def detach(value: Any) -> Tensor:
            leaf.append(_as_leaf(value, self._cut, dtype))
            return leaf[0].clone()  # a leaf that requires grad cannot be written into in place

        out = self._run(x, detach)[1]
        return leaf[0], out


class FunctionSplit:
    """``h`` and ``g`` given as callables (the identity ``h`` for an input slice)."""

    is_split = True

    def __init__(self, h: Callable[[Tensor], Tensor] | None, g: Callable[[Tensor], Any], realisation: str) -> None:
        self._h, self._g, self.realisation = h, g, realisation
        self._guard = _LeafGuard()

    def h(self, x: Tensor) -> Tensor:
        return x if self._h is None else self._h(x)

    def g(self, z: Tensor, x: Tensor | None = None) -> Any:
        return self._guard(self._g, z)

    def forward_cut(self, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Any]:
        if self._h is None:
            z = x.detach()
        else:
            with torch.no_grad():
                z = self._h(x)
            if not isinstance(z, Tensor):
                raise TypeError(f"Slice: h returned a {type(z).__name__}, expected a tensor")
        z = (z.detach() if dtype is None else z.detach().to(dtype)).requires_grad_(True)
        return z, self.g(z)
