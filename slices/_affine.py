"""The affine prefix of a function: the layers right after its input that are affine in it.

Split ``g = r ∘ a`` where ``a(z) = (u_1, …, u_m)`` is the largest part of ``g``'s graph
that is affine in ``z`` (linear and convolution layers, batch norm with running
statistics, average pooling, padding, reshapes, sums and scalings; ``u_i = A_i z + c_i``)
and ``r`` is the rest. Two consequences make lines through ``g`` cheap:

* a line stays a line: ``a(b + α(x − b)) = a(b) + α(a(x) − a(b))``, so samples on a line
  in ``z`` are samples on lines at the frontier ``u``, from ``a(x)`` and ``a(b)`` computed
  once per anchor;
* gradients pull back linearly: ``∂(q∘g)/∂z = Σ_i A_iᵀ ∂(q∘r)/∂u_i`` with ``A_i`` the same
  at every point, so ``Σ_k w_k ∂(q∘g)/∂z(z_k) = Σ_i A_iᵀ (Σ_k w_k ∂(q∘r)/∂u_i(u_k))``: one
  vector–Jacobian product per anchor instead of one per sample.

Per sample only ``r`` runs, forward and backward. The split is found on a ``torch.fx``
trace of ``g``; whatever cannot be traced, or does not match ``g`` on a probe, has no
prefix (``None``) and runs as usual.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

_AFFINE_MODULES: tuple[type, ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)  # fmt: skip
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_HEAVY_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, *_BATCH_NORMS)

# functions and tensor methods affine in their first argument (the others constant)
_FIRST_ARG_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.t,
    torch.narrow, torch.movedim, torch.mean, torch.sum, torch.neg, operator.neg, operator.pos, operator.getitem,
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.pad,
}  # fmt: skip
_HEAVY_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, torch.matmul, operator.matmul}
_FIRST_ARG_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "mean", "sum",
    "t", "expand", "expand_as", "view_as", "reshape_as", "narrow", "neg", "clone", "movedim",
}  # fmt: skip
_SUMS = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub"}
_PRODUCTS = {operator.mul, torch.mul, torch.matmul, operator.matmul, "mul", "matmul"}
_QUOTIENTS = {operator.truediv, torch.div, "div"}
_SHAPES = {"size", "dim"}  # values about the batch, allowed only inside the prefix


class AffinePrefix:
    """``g = rest ∘ prefix`` with ``prefix`` affine (see the module docstring).

    ``frontier(z)`` gives the tuple ``(u_1, …, u_m)``; ``rest(*u)`` the output of ``g``;
    ``pull_back(z, c)`` the vector–Jacobian product ``Σ_i A_iᵀ c_i`` (at any ``z`` of the
    right shape: it does not depend on ``z``)."""

    def __init__(self, prefix: fx.GraphModule, rest: fx.GraphModule) -> None:
        self._prefix, self._rest = prefix, rest

    def frontier(self, z: Tensor) -> tuple[Tensor, ...]:
        return self._prefix(z)

    def rest(self, *u: Tensor) -> Any:
        return self._rest(*u)

    def pull_back(self, z: Tensor, cotangents: Sequence[Tensor]) -> Tensor:
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            u = self._prefix(leaf)
            (grad,) = torch.autograd.grad(u, leaf, list(cotangents))
        return grad


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, AffinePrefix | None]]" = weakref.WeakKeyDictionary()


def affine_prefix(fn: nn.Module, example: Tensor) -> AffinePrefix | None:
    """The affine prefix of ``fn`` (a module of one tensor), checked on ``example``
    (a few inputs); ``None`` when it has none worth using. Cached per module while its
    structure and hooks stay the same."""
    key = _structure(fn)
    if key is None:
        return None
    cached = _CACHE.get(fn)
    if cached is not None and cached[0] == key:
        return cached[1]
    found = _build(fn, example)
    _CACHE[fn] = (key, found)
    return found


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _structure(fn: nn.Module) -> tuple[Any, ...] | None:
    """What the split depends on: the submodules, their types and forwards; ``None``
    when a module has hooks: tracing would bypass them, and the pull-back would show a
    backward hook one summed gradient per anchor instead of one per sample."""
    if isinstance(fn, torch.jit.ScriptModule) or any(getattr(_module, name, None) for name in _GLOBAL_HOOKS):
        return None  # TorchScript cannot be traced by torch.fx
    parts = []
    for name, m in fn.named_modules():
        if any(getattr(m, hooks, None) for hooks in _HOOKS):
            return None
        bn = isinstance(m, _BATCH_NORMS) and (not m.track_running_stats or m.running_mean is None)
        forward = m.__dict__.get("forward") or next((c.__dict__["forward"] for c in type(m).__mro__ if "forward" in c.__dict__), None)
        parts.append((name, id(m), forward, m.training, bn))
    return tuple(parts)


class _Tracer(fx.Tracer):
    """Leaves: torch's own layers, and user modules not named in ``through``."""

    def __init__(self, through: set[str]) -> None:
        super().__init__()
        self.through = through

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or (
            not isinstance(m, nn.Sequential) and module_qualified_name not in self.through
        )


def _build(fn: nn.Module, example: Tensor) -> AffinePrefix | None:
    """Trace ``fn`` with user modules as leaves, then again through those of them that
    take an affine value and contain layers of their own (a block, not a leaf with its
    own Python code, whose side effects tracing would run once), until no more do."""
    through: set[str] = set()
    while True:
        try:
            graph = _Tracer(through).trace(fn)
        except Exception:  # control flow, unsupported ops: no prefix, the plain path works
            return None
        kind = _kinds(fn, graph)
        more = {str(n.target) for n in graph.nodes if _is_block_taking_affine(fn, n, kind)}
        if not more:
            break
        through |= more
    split = _split(fn, graph, kind)
    if split is None:
        return None
    prefix, rest = (fx.GraphModule(fn, g) for g in split)
    for module in (prefix, rest):
        eliminate_dead_code(module)
    return AffinePrefix(prefix, rest) if _agrees(fn, prefix, rest, example) else None


def _is_block_taking_affine(root: nn.Module, n: fx.Node, kind: dict[fx.Node, str]) -> bool:
    """Is ``n`` a call of a user module with submodules (a block) that an affine value
    enters, traced as a leaf so far?"""
    if n.op != "call_module" or kind.get(n) != "other" or not any(kind.get(a) == "affine" for a in n.all_input_nodes):
        return False
    m = root.get_submodule(str(n.target))
    return not m.__module__.startswith(("torch.nn", "torch.ao.nn")) and next(m.children(), None) is not None


def _kinds(root: nn.Module, graph: fx.Graph) -> dict[fx.Node, str]:
    """Each node: ``"affine"`` in the input ``z``, ``"const"`` (free of ``z``), ``"shape"``
    (a size of ``z``) or ``"other"``; ``{}`` when the graph has several inputs."""
    nodes = list(graph.nodes)
    if sum(n.op == "placeholder" for n in nodes) != 1:
        return {}
    kind: dict[fx.Node, str] = {}
    for n in nodes:
        if n.op == "placeholder":
            kind[n] = "affine"
        elif n.op == "output":
            continue
        elif n.op == "get_attr":
            kind[n] = "const"
        else:
            inputs = [kind[a] for a in n.all_input_nodes]
            if all(k == "const" for k in inputs):
                kind[n] = "const"
            elif "other" in inputs:
                kind[n] = "other"
            elif n.op == "call_method" and n.target in _SHAPES or n.op == "call_function" and n.target is getattr:
                kind[n] = "shape"
            elif "shape" in inputs and "affine" not in inputs:
                kind[n] = "shape"
            else:
                kind[n] = "affine" if _is_affine(root, n, kind) else "other"
    return kind


def _split(root: nn.Module, graph: fx.Graph, kind: dict[fx.Node, str]) -> tuple[fx.Graph, fx.Graph] | None:
    """The prefix graph ``z -> (u_1, …, u_m)`` and the rest ``(u_1, …, u_m) -> output``;
    ``None`` when the prefix saves no work or cannot be cut off cleanly."""
    if not kind:
        return None
    nodes = list(graph.nodes)
    affine = [n for n in nodes if kind.get(n) == "affine" and n.op != "placeholder"]
    if any(mutates(root, n) for n in affine):
        return None  # an in-place op inside the prefix: keep it simple
    heavy = any(_is_heavy(root, n) for n in affine)
    if not heavy:
        return None
    prefix_nodes = {n for n, k in kind.items() if k in ("affine", "shape")}
    if _mutated_then_read_in_prefix(root, nodes, prefix_nodes):
        return None
    frontier = [n for n in nodes if kind.get(n) == "affine" and any(u not in prefix_nodes for u in n.users)]
    if any(kind.get(u) != "shape" and u not in prefix_nodes for n in nodes if kind.get(n) == "shape" for u in n.users):
        return None  # a size of z used after the prefix would be the anchors', not the samples'
    if not frontier:
        return None

    prefix = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for n in nodes:
        if kind.get(n) in ("affine", "shape", "const"):
            env[n] = prefix.node_copy(n, lambda a: env[a])
    prefix.output(tuple(env[n] for n in frontier))

    rest = fx.Graph()
    env = {}
    for i, n in enumerate(frontier):
        env[n] = rest.placeholder(f"u{i}")
        if any(mutates(root, u) and u.args and u.args[0] is n for u in n.users):
            env[n] = rest.call_method("clone", (env[n],))  # the rest would write into our leaf
    for n in nodes:
        if n in env or kind.get(n) in ("affine", "shape"):
            continue
        env[n] = rest.node_copy(n, lambda a: env[a])
    return prefix, rest


def _target(n: fx.Node) -> Any:
    return n.target if n.op in ("call_function", "call_method") else None


def _is_affine(root: nn.Module, n: fx.Node, kind: dict[fx.Node, str]) -> bool:
    """Is node ``n``, some of whose inputs are affine in ``z`` and the rest constant,
    itself affine in ``z``?"""
    def k(a: Any) -> str:
        return kind.get(a, "const") if isinstance(a, fx.Node) else "const"

    args = list(n.args)
    if n.op == "call_module":
        m = root.get_submodule(str(n.target))
        if type(m) in _BATCH_NORMS:
            affine_type = m.track_running_stats and m.running_mean is not None and not m.training
        else:  # dropout is the identity in eval mode only
            affine_type = type(m) in _AFFINE_MODULES and not (type(m) in _DROPOUTS and m.training)
        return affine_type and len(args) == 1 and not n.kwargs and k(args[0]) == "affine"
    t = _target(n)
    if t is None:
        return False
    if t in _FIRST_ARG_FUNCTIONS or (n.op == "call_method" and t in _FIRST_ARG_METHODS):
        rest = args[1:] + list(n.kwargs.values())
        return bool(args) and k(args[0]) == "affine" and all(k(a) in ("const", "shape") for a in _flat(rest))
    if t in (torch.cat, torch.stack):
        return bool(args) and all(k(a) in ("affine", "const") for a in _flat(args))
    if t is F.dropout or t is torch.dropout:
        training = n.kwargs.get("training", args[2] if len(args) > 2 else True)
        return training is False and k(args[0]) == "affine"
    if t in _SUMS:
        return all(k(a) in ("affine", "const") for a in _flat(args + list(n.kwargs.values())))
    if t in _PRODUCTS:
        return len(args) == 2 and sorted(k(a) for a in args) == ["affine", "const"] and not n.kwargs
    if t in _QUOTIENTS:
        return len(args) == 2 and k(args[0]) == "affine" and k(args[1]) == "const" and not n.kwargs
    return False


def _flat(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flat(v))
        elif isinstance(v, dict):
            out.extend(_flat(list(v.values())))
        else:
            out.append(v)
    return out


def _is_heavy(root: nn.Module, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(root.get_submodule(str(n.target)), _HEAVY_MODULES)
    return n.op == "call_function" and n.target in _HEAVY_FUNCTIONS or n.op == "call_method" and n.target == "matmul"


def mutates(root: nn.Module, n: fx.Node) -> bool:
    """Does ``n`` write into its first argument?"""
    if n.kwargs.get("inplace") is True:
        return True
    if n.op == "call_module":
        return getattr(root.get_submodule(str(n.target)), "inplace", False) is True
    if n.op == "call_method":
        return str(n.target).endswith("_")
    if n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        return name.endswith("_") and not name.startswith("_") or name in ("iadd", "isub", "imul", "itruediv")
    return False


def eliminate_dead_code(module: fx.GraphModule) -> None:
    """Remove the nodes whose values are never used, except those that write into an
    argument, and recompile. ``torch.fx``'s own pass removes ``z.relu_()`` or
    ``ReLU(inplace=True)(z)`` when the code goes on with ``z`` and not with their
    result, which silently drops the op."""
    graph = module.graph
    for n in reversed(list(graph.nodes)):
        if not n.users and n.op not in ("placeholder", "output") and not mutates(module, n) and not n.is_impure():
            graph.erase_node(n)
    module.recompile()


def _mutated_then_read_in_prefix(root: nn.Module, nodes: list[fx.Node], prefix_nodes: set[fx.Node]) -> bool:
    """Is a value written in place by an op outside the prefix and read afterwards by an
    op inside it (``z.relu_(); lin(z)``: fx's ``lin`` node takes ``z``, not the result of
    ``relu_``)? The prefix would then compute with the value before the write."""
    order = {n: i for i, n in enumerate(nodes)}
    for m in nodes:
        if m in prefix_nodes or not mutates(root, m) or not m.args or not isinstance(m.args[0], fx.Node):
            continue
        if any(u is not m and u in prefix_nodes and order[u] > order[m] for u in m.args[0].users):
            return True
    return False


def _agrees(fn: nn.Module, prefix: fx.GraphModule, rest: fx.GraphModule, example: Tensor) -> bool:
    """``rest(prefix(z)) == fn(z)`` on three rows made from the example, and the frontier
    keeps rows apart (row ``r`` of every ``u_i`` depends on row ``r`` of ``z`` only). A
    model that refuses the probe (e.g. one written for a batch of one) gets no prefix."""
    with torch.no_grad():
        one = example[:1].detach()
        z = torch.cat([one, -0.5 * one, 0.25 * one])
        try:  # each on its own copy: the model may write into its input
            expected = fn(z.clone())
            u = prefix(z.clone())
            alone = prefix(z[1:2].clone())
            if any(t.shape[0] != 3 or not _close(t[1:2], a) for t, a in zip(u, alone)):
                return False
            return _close(rest(*u), expected)
        except Exception:
            return False


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        scale = float(b.detach().abs().max()) if b.numel() else 0.0
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1e-30)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b
