"""The layers of a model, with the shape of each one's output for one input point, so
that users can pick a slice (``influence layers``).

Ordinary modules are measured with forward hooks during one forward pass. TorchScript
modules do not run Python hooks; for them each scripted ``forward`` graph is copied with
the inputs and outputs of its direct submodule calls added to its return value, run once,
and the same is done inside each called submodule with the inputs it received. Calls
inside control flow (``if``/loops in the scripted code) cannot be reached this way; their
shape is reported as unknown, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerInfo:
    """One module: dotted ``name`` (``""`` for the whole model), its class ``type``, and
    ``shape``: the output shape for one point (batch dimension dropped), a description
    such as ``"tuple of 2"``, or ``None`` when unknown (``note`` says why)."""

    name: str
    type: str
    shape: str | None
    calls: int = 1
    note: str = ""


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return str(tuple(value.shape[1:])) if value.ndim >= 1 else "scalar"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: " + ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
    if isinstance(value, dict):
        return f"dict with keys {', '.join(map(str, list(value)[:6]))}"
    return type(value).__name__


def _type_name(module: nn.Module) -> str:
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


def describe_layers(model: nn.Module, example: Tensor | None) -> list[LayerInfo]:
    """Every module of ``model`` with its output shape on ``example`` (a batch of one
    point, ``(1, *input_shape)``); shapes are ``None`` when ``example`` is ``None``."""
    modules = dict(model.named_modules())
    if example is None:
        return [LayerInfo(name, _type_name(m), None, 0) for name, m in modules.items()]
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if isinstance(model, torch.jit.ScriptModule):
            outputs, notes = _script_outputs(model, example)
        else:
            outputs, notes = _hooked_outputs(model, modules, example), {}
    finally:
        for m, mode in was_training.items():
            m.training = mode
    found = []
    for name, m in modules.items():
        seen = outputs.get(name, [])
        if seen:
            found.append(LayerInfo(name, _type_name(m), _describe(seen[0]), len(seen)))
        else:
            note = notes.get(name, "not called in the forward pass")
            found.append(LayerInfo(name, _type_name(m), None, 0, note))
    return found


def _hooked_outputs(model: nn.Module, modules: dict[str, nn.Module], example: Tensor) -> dict[str, list[Any]]:
    outputs: dict[str, list[Any]] = {}
    handles = []
    try:
        for name, m in modules.items():
            handles.append(m.register_forward_hook(lambda mod, args, out, name=name: outputs.setdefault(name, []).append(out)))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _script_outputs(model: torch.jit.ScriptModule, example: Tensor) -> tuple[dict[str, list[Any]], dict[str, str]]:
    outputs: dict[str, list[Any]] = {}
    notes: dict[str, str] = {}
    with torch.no_grad():
        outputs[""] = [model(example)]
        _probe_script(model, "", (example,), outputs, notes)
    return outputs, notes


def _attr_path(value: Any, self_value: Any) -> list[str] | None:
    """The chain of attribute names from the graph's ``self`` to ``value``, or ``None``."""
    names: list[str] = []
    while value is not self_value:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.append(node.s("name"))
        value = node.inputsAt(0)
    return names[::-1]


def _probe_script(module: Any, prefix: str, args: tuple[Any, ...], outputs: dict[str, list[Any]], notes: dict[str, str]) -> None:
    """Record the outputs of the submodules that ``module.forward`` calls directly, then
    recurse into each with the arguments it received."""
    try:
        graph = module.forward.graph.copy()
    except Exception as e:  # not a scripted forward
        notes[prefix] = f"no TorchScript graph ({type(e).__name__})"
        return
    self_value = next(iter(graph.inputs()))
    calls: list[tuple[str, Any]] = []
    nested: set[str] = set()
    for node in graph.findAllNodes("prim::CallMethod", True):
        path = _attr_path(node.inputsAt(0), self_value)
        if path is None or node.s("name") != "forward":
            continue
        name = ".".join(path)
        if node.owningBlock() is graph.block():  # top level, reachable
            calls.append((name, node))
        else:
            nested.add(name)
    for name in nested:
        full = f"{prefix}.{name}" if prefix else name
        notes.setdefault(full, "called inside scripted control flow (if/loop): its shape cannot be recorded without hooks")
    if not calls:
        return
    try:
        values = [v for _, node in calls for v in list(node.inputs())[1:]] + [node.output() for _, node in calls]
        ret = graph.return_node()
        original = list(ret.inputs())
        tup = graph.create("prim::TupleConstruct", original + values)
        tup.output().setType(torch._C.TupleType([v.type() for v in original + values]))
        tup.insertBefore(ret)
        for _ in original:
            ret.removeInput(0)
        ret.addInput(tup.output())
        fn = torch._C._create_function_from_graph("influence_layers_probe", graph)
        result = fn(module._c, *args)
    except Exception as e:
        reason = f"the scripted graph could not be instrumented ({type(e).__name__})"
        for name, _ in calls:
            notes.setdefault(f"{prefix}.{name}" if prefix else name, reason)
        return
    result = list(result)[len(original) :]
    arg_counts = [len(list(node.inputs())) - 1 for _, node in calls]
    call_args, offset = [], 0
    for n in arg_counts:
        call_args.append(tuple(result[offset : offset + n]))
        offset += n
    call_outputs = result[offset:]
    for (name, _), out, received in zip(calls, call_outputs, call_args):
        full = f"{prefix}.{name}" if prefix else name
        first = full not in outputs
        outputs.setdefault(full, []).append(out)
        if first:
            target = module
            for part in name.split("."):
                target = getattr(target, part)
            _probe_script(target, full, received, outputs, notes)


def format_layers(layers: list[LayerInfo]) -> str:
    """A table: name, type, output shape (per point)."""
    rows = [(info.name or "(model)", info.type, (info.shape or "?") + (f"  ×{info.calls}" if info.calls > 1 else ""), info.note) for info in layers]
    widths = [max(len(r[i]) for r in rows + [("layer", "type", "output shape (per point)", "")]) for i in range(3)]
    lines = [f"{'layer':<{widths[0]}}  {'type':<{widths[1]}}  output shape (per point)"]
    for name, kind, shape, note in rows:
        lines.append(f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {shape}" + (f"   ({note})" if note and shape == "?" else ""))
    return "\n".join(lines)
