"""Loading what a query file names: factories imported and called, weights, arrays and
data sets, token strings.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from doi._points import Points, is_structured
from doi._points import count as points_count
from doi._points import tensors as points_tensors

from .checks import QueryError, did_you_mean, join_path, show_value
from .trust import check_resolved, refused

# --- loading: the session ------------------------------------------------------------------------


def import_callable(spec: str, path: str, folder: Path) -> Any:
    """``package.module:attr.attr``; a module that is not importable from ``sys.path`` is
    looked for in the query file's folder too. Callables of the standard library's process
    and file modules are refused, by name and by where the resolved object is defined
    (see :mod:`~influence.queries.trust`)."""
    why = refused(spec)
    if why is not None:
        raise QueryError(path, why)
    module_name, _, attr = spec.partition(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or module_name.split(".")[0] != e.name.split(".")[0]:
                raise
            sys.path.insert(0, str(folder))
            try:
                module = importlib.import_module(module_name)
            finally:
                with contextlib.suppress(ValueError):
                    sys.path.remove(str(folder))
    except ImportError as e:
        raise QueryError(path, f"cannot import module {module_name!r} ({e}); is it installed, or next to the query file?") from None
    except Exception as e:
        raise QueryError(path, f"importing module {module_name!r} failed: {type(e).__name__}: {e}") from None
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            names = [n for n in dir(value) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise QueryError(path, f"{module_name!r} has no attribute {part!r}; {hint}".rstrip("; ").rstrip())
        value = getattr(value, part)
        why = check_resolved(value, spec)
        if why is not None:
            raise QueryError(path, why)
    if not callable(value):
        raise QueryError(path, f"{spec!r} is a {type(value).__name__}, not a callable")
    return value


def call_factory(fn: Callable[..., Any], kwargs: dict[str, Any], kwargs_path: str) -> Any:
    """``fn(**kwargs)``; arguments it does not take, and ``ValueError``/``TypeError`` it
    raises, are :class:`QueryError` at ``kwargs_path``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            params = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = [k for k in kwargs if k not in params]
            if unknown and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
                hint = did_you_mean(unknown[0], params)
                raise QueryError(join_path(kwargs_path, unknown[0]), f"{fn.__name__}() has no argument {unknown[0]!r}; {hint}it takes: {', '.join(params) or '(nothing)'}") from None
            raise QueryError(kwargs_path, f"{getattr(fn, '__name__', 'the factory')}(): {e}") from None
    try:
        return fn(**kwargs)
    except (ValueError, TypeError) as e:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unexpected and unexpected.group(1) in kwargs:
            raise QueryError(join_path(kwargs_path, unexpected.group(1)), f"not an argument of {getattr(fn, '__name__', 'the factory')}() ({e})") from None
        raise QueryError(kwargs_path, f"{getattr(fn, '__name__', 'the factory')}() refused its arguments: {e}") from None


def read_state_dict(path: Path, where: str) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise QueryError(
            where, f"{path.name} cannot be loaded with weights_only=True (it holds Python objects, e.g. a whole pickled model); save model.state_dict() instead"
        ) from None
    except Exception as e:
        raise QueryError(where, f"cannot read {path.name} as a torch file ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(state, dict) and set(state) & {"state_dict", "model_state_dict"} and not all(isinstance(v, Tensor) for v in state.values()):
        key = "state_dict" if "state_dict" in state else "model_state_dict"
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise QueryError(where, f"{path.name} is not a state_dict (a mapping of parameter names to tensors); save model.state_dict()")
    return state


def fit_weights(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch (file vs model): " + ", ".join(mismatched[:4]) + (" ..." if len(mismatched) > 4 else ""))
        if missing:
            parts.append("missing in the file: " + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected[:6]) + (" ..." if len(unexpected) > 6 else ""))
        raise QueryError(where, "the weights do not fit the model: " + "; ".join(parts) + "; check model.factory and model.kwargs")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise QueryError(where, f"the weights do not fit the model: {e}") from None


def load_model(spec: dict[str, Any], folder: Path) -> nn.Module:
    """The model of a validated ``model`` section, in eval mode, on the CPU."""
    if spec["torchscript"] is not None:
        path = spec["torchscript"]
        try:
            with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the user asked for this file
                warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise QueryError("model.torchscript", f"cannot load {path.name} as TorchScript ({type(e).__name__}: {str(e)[:200]})") from None
        return model.eval()
    fn = import_callable(spec["factory"], "model.factory", folder)
    model = call_factory(fn, spec["kwargs"], "model.kwargs")
    if not isinstance(model, nn.Module):
        raise QueryError("model.factory", f"{spec['factory']!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if spec["weights"] is not None:
        fit_weights(model, read_state_dict(spec["weights"], "model.weights"), "model.weights")
    return model.eval()


def _as_tensor(value: Any, name: str, where: str) -> Tensor:
    try:
        return torch.as_tensor(value).clone() if not isinstance(value, Tensor) else value
    except Exception:
        raise QueryError(where, f"array {name!r} is a {type(value).__name__}, not an array of numbers") from None


def _read_arrays(path: Path, where: str) -> dict[str, Any]:
    try:
        if path.suffix.lower() in (".npz", ".npy"):
            import numpy as np

            with open(path, "rb") as f:
                found = np.load(f, allow_pickle=False)
                if not hasattr(found, "files"):
                    return {"": np.asarray(found)}
                with found:
                    return {k: found[k] for k in found.files}
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise QueryError(where, f"{path.name} holds objects that weights_only=True refuses (e.g. numpy arrays or pickled classes); save a dict of tensors") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise QueryError(where, f"cannot read {path.name} ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(loaded, Tensor):
        return {"": loaded}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise QueryError(where, f"{path.name} must hold a dict of named tensors, e.g. torch.save({{'x': x, 'y': y}}, path) (got {type(loaded).__name__})")
    return dict(loaded)


def _array_file(spec: dict[str, Any], where: str) -> Tensor:
    arrays = _read_arrays(spec["file"], join_path(where, "file"))
    key = spec["key"]
    if key is None:
        if len(arrays) != 1:
            raise QueryError(join_path(where, "key"), f"{spec['file'].name} holds several arrays ({', '.join(sorted(arrays))}); name one with key:")
        key = next(iter(arrays))
    elif key not in arrays:
        hint = did_you_mean(key, list(arrays))
        raise QueryError(join_path(where, "key"), f"no array {key!r} in {spec['file'].name}; {hint}arrays: {', '.join(sorted(arrays))}")
    return _as_tensor(arrays[key], key, where)


@dataclass
class Data:
    """The data section, loaded: ``x`` the inputs — a tensor ``(N, ...)``, or for
    ``inputs`` given as a mapping or list a dict or tuple of tensors sharing ``N``
    (given to the model as ``model(**x)`` / ``model(*x)``) — ``y`` ``(N,)`` int64 labels
    or ``None``, every named array (rows already filtered by ``classes``), and per row the
    token strings to show (``tokens``, from the data's ``tokens``; ``None`` without it).
    Floating inputs are as given; integer inputs (token ids, masks) stay integers in a
    mapping or list, and a single integer array does when the model has an
    ``nn.Embedding`` (else it becomes floats, e.g. ``uint8`` images)."""

    x: Points
    y: Tensor | None
    arrays: dict[str, Tensor]
    rows: int
    unusable: dict[str, str] = field(default_factory=dict)  # array name -> why it cannot be used
    tokens: list[list[str]] | None = None

    def array(self, name: str, where: str) -> Tensor:
        if name in self.unusable:
            raise QueryError(where, self.unusable[name])
        if name not in self.arrays:
            hint = did_you_mean(name, list(self.arrays))
            raise QueryError(where, f"no array {name!r} in the data; {hint}arrays: {', '.join(sorted(self.arrays))}")
        return self.arrays[name]

    @property
    def structured(self) -> bool:
        """Inputs given as a mapping or list of arrays."""
        return is_structured(self.x)

    @property
    def integer(self) -> bool:
        """Some input tensor holds integers (token ids): no gradient, no path between them."""
        return any(not t.is_floating_point() for t in points_tensors(self.x))

    @property
    def ids(self) -> Tensor | None:
        """The token ids ``(N, L)``, as :mod:`influence.text` finds them: ``input_ids`` of a
        mapping, the first array of a list, or the inputs themselves; ``None`` when those
        are not 2-D integers."""
        x = self.x
        ids = x.get("input_ids") if isinstance(x, Mapping) else x[0] if isinstance(x, tuple) else x
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            return None
        return ids

    @property
    def mask(self) -> Tensor | None:
        """The attention mask ``(N, L)`` (a mapping's ``attention_mask``), else ``None``."""
        mask = self.x.get("attention_mask") if isinstance(self.x, Mapping) else None
        ids = self.ids
        return mask if isinstance(mask, Tensor) and ids is not None and mask.shape == ids.shape else None

    def token_strings(self, row: int) -> list[str]:
        """Row ``row``'s tokens as shown: the data's token strings, else ``#id``."""
        if self.tokens is not None:
            return self.tokens[row]
        ids = self.ids
        assert ids is not None
        return [f"#{t}" for t in ids[row].tolist()]


def _has_embedding(model: nn.Module | None) -> bool:
    """Does the model embed token ids (an ``nn.Embedding`` somewhere)?"""
    if model is None:
        return False
    return any(isinstance(m, nn.Embedding) or getattr(m, "original_name", None) == "Embedding" for m in model.modules())


def _input_entries(layout: Any) -> list[tuple[Any, str, str]]:
    """``(key, array name, field)`` of each input tensor: key ``None`` for one array, an
    int for a list, the argument name for a mapping."""
    if isinstance(layout, str):
        return [(None, layout, "data.inputs")]
    if isinstance(layout, list):
        return [(i, name, f"data.inputs[{i}]") for i, name in enumerate(layout)]
    return [(key, name, join_path("data.inputs", key)) for key, name in layout.items()]


def _assemble(layout: Any, arrays: dict[str, Tensor]) -> Points:
    entries = _input_entries(layout)
    if isinstance(layout, str):
        return arrays[layout]
    if isinstance(layout, list):
        return tuple(arrays[name] for _, name, _ in entries)
    return {key: arrays[name] for key, name, _ in entries}


def _read_vocab(path: Path, where: str) -> list[str]:
    """A vocabulary file: one token per line (id = line number), or a ``.json`` mapping
    of tokens to ids (a Hugging Face ``vocab.json``) or list of tokens."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QueryError(where, f"{path.name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise QueryError(where, f"cannot read {path.name} ({e.strerror or e})") from None
    if path.suffix.lower() == ".json":
        import json

        try:
            found = json.loads(text)
        except json.JSONDecodeError as e:
            raise QueryError(where, f"{path.name} is not valid JSON ({e.msg}, line {e.lineno})") from None
        if isinstance(found, list) and all(isinstance(t, str) for t in found):
            return list(found)
        if isinstance(found, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in found.items()):
            vocab = [""] * (max(found.values(), default=-1) + 1)
            for token, i in found.items():
                vocab[i] = token
            return vocab
        raise QueryError(where, f"{path.name} must hold a mapping of tokens to ids (vocab.json) or a list of tokens")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not vocab:
        raise QueryError(where, f"{path.name} is empty; a vocabulary file has one token per line (id = line number, from 0)")
    return vocab


def _token_rows(spec: Any, raw: dict[str, Any], arrays: dict[str, Tensor], ids: Tensor | None, n: int, source: str) -> list[list[str]]:
    """The token strings of every row, from an array of the data or a vocabulary."""
    where = "data.tokens"
    if isinstance(spec, dict):
        if ids is None:
            raise QueryError(
                where, "a vocabulary maps token ids, but data.inputs holds none: name 2-D integer ids (a mapping's input_ids, or the first array of a list)"
            )
        vocab = _read_vocab(spec["vocab"], join_path(where, "vocab"))
        top = int(ids.max()) if ids.numel() else -1
        if top >= len(vocab) or (ids.numel() and int(ids.min()) < 0):
            bad = top if top >= len(vocab) else int(ids.min())
            raise QueryError(join_path(where, "vocab"), f"token id {bad} of the data is not a line of {spec['vocab'].name} ({len(vocab)} tokens, ids 0..{len(vocab) - 1})")
        return [[vocab[t] for t in row] for row in ids.tolist()]
    if spec not in raw:
        names = sorted(raw)
        hint = did_you_mean(spec, names)
        raise QueryError(where, f"no array {spec!r} in {source}; {hint}arrays: {', '.join(names) or '(none)'}")
    value = raw[spec]
    if spec in arrays:
        raise QueryError(where, f"array {spec!r} holds numbers; tokens must be token strings, a list of N rows of L strings (or use {{vocab: FILE}} to show ids as strings)")
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != n:
        got = f"{len(value)} rows" if isinstance(value, (list, tuple)) else type(value).__name__
        raise QueryError(where, f"array {spec!r} must give the token strings of each of the {n} points (got {got})")
    length = None if ids is None else ids.shape[1]
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or not all(isinstance(t, str) for t in row):
            raise QueryError(where, f"row {i} of {spec!r} must be a list of token strings (got {show_value(row)})")
        if length is None:
            length = len(row)
        if len(row) != length:
            what = "the token ids" if ids is not None else "row 0"
            raise QueryError(where, f"row {i} of {spec!r} has {len(row)} tokens, {what} {length}; give one string per position, padding included")
        rows.append(list(row))
    return rows


def load_data(spec: dict[str, Any], folder: Path, model: nn.Module | None = None) -> Data:
    """The data of a validated ``data`` section (``model``, when given, decides whether a
    single integer array is token ids: see :class:`Data`)."""
    if spec["path"] is not None:
        raw = _read_arrays(spec["path"], "data.path")
        source = spec["path"].name
    else:
        fn = import_callable(spec["factory"], "data.factory", folder)
        raw = call_factory(fn, spec["kwargs"], "data.kwargs")
        source = spec["factory"]
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
            raise QueryError("data.factory", f"{source!r} returned a {type(raw).__name__}; a data factory returns a dict of named arrays, e.g. {{'x': x, 'y': y}}")
        raw = dict(raw)
    arrays, other = {}, {}
    for k, v in raw.items():  # arrays that are not numbers (e.g. class names, token strings) stay out until asked for
        try:
            arrays[k] = _as_tensor(v, k, "data")
        except QueryError as e:
            other[k] = e.message
    names = sorted([*arrays, *other])

    def pick(name: str, where: str) -> Tensor:
        if name in other:
            raise QueryError(where, other[name])
        if name not in arrays:
            hint = did_you_mean(name, names)
            raise QueryError(where, f"no array {name!r} in {source}; {hint}arrays: {', '.join(names) or '(none)'}")
        return arrays[name]

    layout = spec["inputs"]
    single = isinstance(layout, str)
    n: int | None = None
    first = ""
    for _, name, where in _input_entries(layout):
        t = pick(name, where)
        if (t.ndim < 2 if single else t.ndim < 1) or t.shape[0] == 0:
            shape = "(N, ...)" if single else "(N, ...) (N points first)"
            raise QueryError(where, f"array {name!r} must be a batch of points {shape} with N >= 1 (got shape {tuple(t.shape)})")
        if t.is_complex() or (single and t.dtype == torch.bool):
            raise QueryError(where, f"array {name!r} has dtype {t.dtype}; inputs must be real numbers" + ("" if single else " or integers (token ids, masks)"))
        if n is None:
            n, first = t.shape[0], name
        elif t.shape[0] != n:
            raise QueryError(where, f"array {name!r} has {t.shape[0]} rows but {first!r} has {n}; every input needs one row per point")
        if single and not t.is_floating_point() and not _has_embedding(model):
            t = t.to(torch.get_default_dtype())
        arrays[name] = t
    assert n is not None
    y = None
    if spec["labels"] is not None:
        if spec["labels"] in arrays or spec["labels"] != "y":
            y = pick(spec["labels"], "data.labels")
            if y.ndim != 1 or y.shape[0] != n or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise QueryError("data.labels", f"array {spec['labels']!r} must hold {n} int labels, shape ({n},) (got {tuple(y.shape)} {y.dtype})")
            y = y.long()
    tokens = None
    if spec.get("tokens") is not None:
        probe = Data(_assemble(layout, arrays), None, arrays, n)
        tokens = _token_rows(spec["tokens"], raw, arrays, probe.ids, n, source)
    if spec["classes"] is not None:
        assert y is not None
        present = sorted(set(torch.unique(y).tolist()))
        for i, c in enumerate(spec["classes"]):
            if c not in present:
                raise QueryError(f"data.classes[{i}]", f"class {c} is not in the data (labels present: {present[:20]})")
        keep = torch.isin(y, torch.tensor(spec["classes"]))
        arrays = {k: (v[keep] if v.ndim >= 1 and v.shape[0] == n else v) for k, v in arrays.items()}
        y = y[keep]
        if tokens is not None:
            tokens = [row for row, k in zip(tokens, keep.tolist()) if k]
    x = _assemble(layout, arrays)
    if y is not None:
        arrays[spec["labels"]] = y
    return Data(x, y, arrays, points_count(x), other, tokens)
