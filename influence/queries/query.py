"""Influence queries written in YAML: parse and validate, then load and run.

A query file has a ``model`` and a ``data`` section shared by a list of ``queries``; an
optional ``defaults`` section sets options for every query::

    model:    {factory: "influence.synthetic:trained_cnn", kwargs: {seed: 0}}
    data:     {factory: "influence.synthetic:glyph_images", kwargs: {split: test}}
    queries:
      - name: top_neurons
        slice: res                                # a layer name; null/absent: the input
        doi: {kind: class, label: 3}              # point | line | noise | class | dataset
        qoi: {kind: comparative, a: 3, b: 8}      # class | comparative | neuron | max_class | linear | callable
                                                  # | next_token | continuation
        output: {top: {k: 5, by: channel}}

Text models take the same file: a model factory returning a Hugging Face model; data
whose ``inputs`` map the model's argument names to arrays (``model(**inputs)``; a list
calls ``model(*inputs)``), integer ids and masks kept as integers, every row's tensors
selected together; ``tokens`` for display (an array of token strings, or ``{vocab:
FILE}``). Token ids are explained at the word embeddings, with a line from the pad
token's embedding (``baseline: {token: 0, keep: [1, 2]}``, one baseline per sentence)::

    data:
      factory: "influence.text_data:sentences"
      inputs: {input_ids: input_ids, attention_mask: attention_mask}
      labels: labels
      tokens: tokens
    queries:
      - slice: bert.embeddings.word_embeddings
        doi: {kind: line, space: slice, baseline: {token: 0, keep: [1, 2]}}
        qoi: {kind: class, label: 1}                  # or next_token, continuation (LMs)

Three stages, each usable on its own:

1. :func:`load_query_file` / :func:`parse_query` check the whole file — structure, types,
   names of kinds, that files exist — and return a :class:`QueryFile` of plain, validated
   values. Nothing is imported or loaded (``influence validate``).
2. :meth:`QueryFile.prepare` imports the factories, loads weights and data: a
   :class:`Session`.
3. :meth:`Session.build` turns one query into library objects (``Slice``, DoI, QoI,
   inputs) and checks them against the model and the data with one forward pass on one
   point; :meth:`BuiltQuery.run` calls :func:`influence.internal_influence`.

Every mistake in the file, found at any stage, raises :class:`QueryError` whose ``path``
names the field (``queries[1].doi.steps``). The tables :data:`DOI_KINDS`,
:data:`QOI_KINDS` and the section schemas drive validation, the did-you-mean hints, the
README's schema table and the tests.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import inspect
import math
import os
import pickle
import re
import sys
import warnings
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml
from torch import Tensor, nn

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI, PointwiseDoI
from doi._line import resolve_baseline
from doi._points import Points, is_structured
from doi._points import apply as points_apply
from doi._points import count as points_count
from doi._points import describe as points_describe
from doi._points import rows as points_rows
from doi._points import tensors as points_tensors
from qoi import (
    ClassQoI, ComparativeQoI, ContinuationQoI, FunctionQoI, LinearQoI, MaxClassQoI, NeuronQoI, NextTokenQoI, QoIContext, QuantityOfInterest,
)  # fmt: skip
from slices import Cut, Slice
from slices._cut import find_module
from slices._realisations import call as call_model

from ..engine import internal_influence
from ..engine import frozen
from ..workflows import RANKINGS
from ..engine import LayerRecorder
from ..engine import InfluenceResult

__all__ = [
    "QueryError",
    "QueryFile",
    "Session",
    "BuiltQuery",
    "load_query_file",
    "parse_query",
    "DOI_KINDS",
    "QOI_KINDS",
    "SECTIONS",
]

_INT_LIMIT = 2**62


class QueryError(ValueError):
    """A mistake in a query file: ``path`` is the field (``queries[1].doi.steps``, or the
    file name for a file-level problem), ``message`` says what is wrong and how to fix it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = " ".join(str(message).split())
        super().__init__(f"{path}: {self.message}" if path else self.message)


def _join(path: str, key: str | int) -> str:
    """``path.key``, ``path[3]``, or ``path['odd key']`` for a key that is not a name."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    """``value`` for an error message: its type and a short repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if value is None or isinstance(value, (bool, int, float, str)):
        return text
    return f"{type(value).__name__} {text}"


def _did_you_mean(word: Any, options: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


# --- checks: one small object per type of value ---------------------------------------


@dataclass(frozen=True)
class _Ctx:
    """What validation needs besides the value: the folder relative paths start from."""

    folder: Path


class Check(ABC):
    """Validates one value and returns it normalised; ``what`` describes the accepted
    values (used in messages and in the README table)."""

    what = "a value"

    @abstractmethod
    def __call__(self, value: Any, path: str, ctx: _Ctx) -> Any:
        """The value, normalised, or a :class:`QueryError` naming ``path``."""

    def fail(self, path: str, value: Any, extra: str = "") -> QueryError:
        return QueryError(path, f"must be {self.what} (got {_show(value)}){extra}")


class Int(Check):
    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum
        self.what = "an int" if minimum is None else f"an int >= {minimum}"

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, value)
        if (self.minimum is not None and value < self.minimum) or abs(value) >= _INT_LIMIT:
            raise self.fail(path, value)
        return value


class Float(Check):
    """A finite number; strings such as ``1e-3`` (which YAML 1.1 reads as text) count."""

    def __init__(self, minimum: float | None = None, *, positive: bool = False, below: float | None = None) -> None:
        self.minimum, self.positive, self.below = minimum, positive, below
        self.what = "a number > 0" if positive else ("a number" if minimum is None else f"a number >= {minimum}")
        if below is not None:
            self.what = f"a number in (0, {below:g})" if positive else f"a number < {below:g}"

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = None
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise self.fail(path, value)
        if (self.positive and number <= 0) or (self.minimum is not None and number < self.minimum) or (self.below is not None and number >= self.below):
            raise self.fail(path, value)
        return number


class Bool(Check):
    what = "true or false"

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, value)
        return value


class Str(Check):
    def __init__(self, what: str = "a string", pattern: str | None = None) -> None:
        self.what, self.pattern = what, pattern

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> str:
        if not isinstance(value, str) or not value or (self.pattern and not re.fullmatch(self.pattern, value)):
            raise self.fail(path, value)
        return value


class Choice(Check):
    def __init__(self, options: Sequence[str]) -> None:
        self.options = tuple(options)
        self.what = "one of " + ", ".join(repr(o) for o in self.options)

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> str:
        if not isinstance(value, str) or value not in self.options:
            hint = _did_you_mean(value, self.options)
            raise QueryError(path, f"must be {self.what} (got {_show(value)})" + (f"; {hint.strip()}" if hint else ""))
        return value


class Maybe(Check):
    """``null`` or what ``inner`` accepts."""

    def __init__(self, inner: Check) -> None:
        self.inner = inner
        self.what = f"null or {inner.what}"

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> Any:
        if value is None:
            return None
        try:
            return self.inner(value, path, ctx)
        except QueryError as e:
            if e.path == path:
                raise QueryError(path, e.message.replace(f"must be {self.inner.what}", f"must be {self.what}", 1)) from None
            raise


class ImportPath(Str):
    """``package.module:name`` (the module is imported only when the query runs)."""

    def __init__(self) -> None:
        super().__init__("an import path 'package.module:name'", r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class FilePath(Check):
    """An existing file; a relative path is read from the query file's folder."""

    def __init__(self, suffixes: Sequence[str] = ()) -> None:
        self.suffixes = tuple(suffixes)
        self.what = "a file path" + (f" ({', '.join(self.suffixes)})" if self.suffixes else "")

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.fail(path, value)
        if self.suffixes and Path(value).suffix.lower() not in self.suffixes:
            raise QueryError(path, f"unsupported file type {Path(value).suffix or '(none)'!r} in {value!r}; use {' or '.join(self.suffixes)}")
        target = Path(value).expanduser()
        if not target.is_absolute():
            target = ctx.folder / target
        try:
            exists, is_dir = target.exists(), target.is_dir()
        except (OSError, ValueError) as e:
            raise QueryError(path, f"cannot use {value!r} as a path ({e})") from None
        where = f" (relative paths are read from the query file's folder, {ctx.folder})" if not Path(value).is_absolute() else ""
        if not exists:
            raise QueryError(path, f"file not found: {str(target)!r}{where}")
        if is_dir:
            raise QueryError(path, f"{str(target)!r} is a folder, not a file")
        if not os.access(target, os.R_OK):
            raise QueryError(path, f"file {str(target)!r} is not readable (check its permissions)")
        return target


class AnyMapping(Check):
    """A mapping with string keys, its values passed on as they are (factory kwargs)."""

    what = "a mapping of names to values"

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, value)
        for key in value:
            if not isinstance(key, str) or not key.isidentifier():
                raise QueryError(_join(path, str(key)), f"keyword names must be identifiers (got {_show(key)})")
        return dict(value)


class Custom(Check):
    """A check written as a function ``(value, path, ctx) -> normalised value``."""

    def __init__(self, what: str, fn: Callable[[Any, str, _Ctx], Any]) -> None:
        self.what, self.fn = what, fn

    def __call__(self, value: Any, path: str, ctx: _Ctx) -> Any:
        return self.fn(value, path, ctx)


# --- schemas: named keys with checks and defaults -------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Key:
    """One key of a mapping: its check, its default (``REQUIRED`` if none), and a line of
    documentation (the README's schema table lists every key)."""

    name: str
    check: Check
    default: Any = REQUIRED
    doc: str = ""


@dataclass(frozen=True)
class Schema:
    """The keys a mapping may have."""

    keys: tuple[Key, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def parse(self, value: Any, path: str, ctx: _Ctx, *, what: str = "a mapping", also: Sequence[str] = ()) -> dict[str, Any]:
        """``value`` checked key by key, with defaults filled in. ``also`` names keys the
        caller handles itself (e.g. ``kind``)."""
        if not isinstance(value, dict):
            raise QueryError(path, f"must be {what} with keys {', '.join(self.names) or '(none)'} (got {_show(value)})")
        valid = (*also, *self.names)
        for key in value:
            if not isinstance(key, str):
                raise QueryError(path, f"keys must be strings (got {_show(key)}); valid keys: {', '.join(valid)}")
            if key not in valid:
                hint = _did_you_mean(key, valid)
                raise QueryError(_join(path, key), f"unknown key; {hint}valid keys here: {', '.join(valid) or '(none)'}")
        out: dict[str, Any] = {}
        for key in self.keys:
            where = _join(path, key.name)
            if key.name in value:
                out[key.name] = key.check(value[key.name], where, ctx)
            elif key.default is REQUIRED:
                raise QueryError(where, f"missing; {key.doc or 'this key is required'}")
            else:
                out[key.name] = copy.deepcopy(key.default)
        return out


def _mapping_check(schema: Schema, what: str) -> Check:
    return Custom(what, lambda value, path, ctx: schema.parse(value, path, ctx))


# --- baselines, selectors and slices ------------------------------------------------------


_BASELINE_FORMS = (
    "a number, {mean: data}, {array: NAME}, {file: PATH, key: NAME}, {callable: 'module:function'} "
    "or, in space: slice, {activation_of: <one of the others>} or {token: ID, keep: [IDS]}"
)
_BASELINE_EXTRAS = {"key": "file", "keep": "token"}  # the optional second key of a form


def _parse_baseline(value: Any, path: str, ctx: _Ctx, *, inner: bool = False) -> Any:
    """A number, or a one-key mapping naming where the baseline tensor comes from;
    ``{token: ID, keep: [IDS]}`` is the slice-space baseline of token ids (every id
    replaced by ``ID`` except padding and the ``keep`` ids)."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return Float()(value, path, ctx)
        except QueryError:
            pass
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise QueryError(path, f"must be {_BASELINE_FORMS} (got {_show(value)})")
    forms = ("mean", "array", "file", "callable") if inner else ("mean", "array", "file", "callable", "activation_of", "token")
    if inner and "token" in value:
        raise QueryError(_join(path, "token"), "{token: ID} is itself a slice-space baseline; write it without activation_of")
    kinds = [k for k in value if k in forms]
    extra = [k for k in value if k not in forms and k not in _BASELINE_EXTRAS]
    if extra:
        key = extra[0]
        hint = _did_you_mean(key, forms)
        raise QueryError(_join(path, str(key)), f"unknown key; {hint}a baseline is {_BASELINE_FORMS}")
    if len(kinds) != 1:
        raise QueryError(path, f"must be {_BASELINE_FORMS} (got {_show(value)})")
    kind = kinds[0]
    for extra_key, owner in _BASELINE_EXTRAS.items():
        if extra_key in value and kind != owner:
            form = "{file: PATH, key: NAME}" if owner == "file" else "{token: ID, keep: [IDS]}"
            raise QueryError(_join(path, extra_key), f"applies to {form} only")
    where = _join(path, kind)
    if kind == "mean":
        return {"mean": Str("'data' or the name of an array of the data section")(value["mean"], where, ctx)}
    if kind == "array":
        return {"array": Str("the name of an array of the data section")(value["array"], where, ctx)}
    if kind == "file":
        key = Maybe(Str("an array name"))(value.get("key"), _join(path, "key"), ctx)
        return {"file": FilePath((".pt", ".pth", ".npz", ".npy"))(value["file"], where, ctx), "key": key}
    if kind == "callable":
        return {"callable": ImportPath()(value["callable"], where, ctx)}
    if kind == "token":
        token = Custom("a token id, an int >= 0", lambda v, p, c: _token_id(v, p))(value["token"], where, ctx)
        keep = value.get("keep", [])
        if keep != []:
            if not isinstance(keep, list):
                raise QueryError(_join(path, "keep"), f"must be a list of token ids (ints >= 0) kept as they are, e.g. [CLS] and [SEP] (got {_show(keep)})")
            keep = [_token_id(v, _join(_join(path, "keep"), i)) for i, v in enumerate(keep)]
        return {"token": token, "keep": keep}
    return {"activation_of": _parse_baseline(value["activation_of"], where, ctx, inner=True)}


def _token_id(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT_LIMIT:
        raise QueryError(path, f"must be a token id, an int >= 0 (got {_show(value)})")
    return value


def _parse_selector(value: Any, path: str, ctx: _Ctx) -> Any:
    """Which tensor of a tuple/dict output a QoI reads: an int, a key, or a callable."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Int(0)(value, path, ctx)
    if isinstance(value, dict) and list(value) == ["callable"]:
        return {"callable": ImportPath()(value["callable"], _join(path, "callable"), ctx)}
    raise QueryError(path, f"must be null, an int index, a str key or {{callable: 'module:function'}} (got {_show(value)})")


_SELECTOR = Custom("null, an int index, a key, or {callable: 'module:function'}", _parse_selector)

SLICE_SCHEMA = Schema(
    (
        Key("layer", Maybe(Str("a dotted module name")), REQUIRED, "the module to cut at, a name from `influence layers` (null: the input)"),
        Key("at", Choice(("output", "input")), "output", "cut at the layer's output, or just before it"),
        Key("realisation", Choice(("auto", "sequential", "graph", "hook")), "auto", "how h and g are built"),
    )
)


def _parse_slice(value: Any, path: str, ctx: _Ctx) -> dict[str, Any]:
    if value is None:
        return {"layer": None, "at": "output", "realisation": "auto"}
    if isinstance(value, str):
        value = {"layer": value}
    out = SLICE_SCHEMA.parse(value, path, ctx, what="a layer name or a mapping")
    if out["layer"] is None and out["at"] != "output":
        raise QueryError(_join(path, "at"), "applies to a layer; the input slice (layer: null) has no 'at'")
    if out["layer"] is not None:
        Cut(out["layer"], out["at"])
    return out


# --- DoI and QoI kinds: the registry -----------------------------------------------------


class _Builder:
    """What a kind's ``build`` may ask for: baselines, data, imports. The validation
    builder answers with placeholders (so the library's own argument checks run without
    loading anything); a :class:`Session`'s builder answers with the real things."""

    def baseline(self, spec: Any, path: str, space: str) -> Any:
        return 0.0 if not isinstance(spec, (int, float)) else spec

    def population_data(self, path: str, label: int | None) -> Any:
        x = torch.zeros(1, 1)
        return x if label is None else (x, torch.tensor([label]))

    def imported(self, spec: str, path: str) -> Any:
        return lambda *args: None

    def selector(self, spec: Any, path: str) -> Any:
        if isinstance(spec, dict):
            return self.imported(spec["callable"], _join(path, "callable"))
        return spec

    def pointwise(self, spec: dict[str, Any], path: str) -> PointwiseDoI:
        return DOI_KINDS[spec["kind"]].build(spec, path, self)

    def target(self, spec: Any, path: str) -> Any:
        """A continuation's token ids: the list itself, or a data array."""
        return [0] if isinstance(spec, str) else spec


@dataclass(frozen=True)
class Kind:
    """A named DoI or QoI form: its keys, and how to make the library object."""

    name: str
    schema: Schema
    doc: str
    build: Callable[[dict[str, Any], str, _Builder], Any]
    pointwise: bool = True  # DoIs: explains given points (else: a population)
    adaptive: "Adaptive | None" = None  # DoIs whose work per point ``tol`` may choose


@dataclass(frozen=True)
class Adaptive:
    """How a DoI kind takes ``tol`` (each point's work chosen to meet a relative error):
    the key that caps that work (``max_steps``) and the keys ``tol`` replaces (a line's
    ``steps`` and ``rule``), which may not be given with it. A validated spec holds only
    the keys that apply: with ``tol``, not the replaced ones; without it, neither ``tol``
    nor the cap (so the JSON's "query as run" reads as it was run)."""

    cap: Key
    replaces: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[Key, Key]:
        """The schema keys: ``tol`` and the cap."""
        return (_TOL, self.cap)

    def args(self, p: dict[str, Any]) -> dict[str, Any]:
        """The library's keyword arguments for ``tol`` (none without it)."""
        return {} if p.get("tol") is None else {"tol": p["tol"], self.cap.name: p[self.cap.name]}

    def settle(self, raw: Any, spec: dict[str, Any], path: str) -> dict[str, Any]:
        """``spec`` with the keys that do not apply dropped, or a :class:`QueryError` for
        ``tol`` given with a key it replaces, or a cap given without ``tol``."""
        raw = raw if isinstance(raw, dict) else {}
        cap = self.cap.name
        if spec.get("tol") is None:
            if raw.get(cap) is not None:
                raise QueryError(_join(path, cap), f"caps the work that tol chooses per point; give tol too, or remove {cap}")
            return {k: v for k, v in spec.items() if k not in ("tol", cap)}
        given = [k for k in self.replaces if k in raw]
        if given:
            raise QueryError(
                _join(path, "tol"),
                f"chooses each point's {' and '.join(self.replaces)}; give tol or {' and '.join(given)}, not both (cap the work with {cap})",
            )
        return {k: v for k, v in spec.items() if k not in self.replaces}


_TOL = Key(
    "tol", Maybe(Float(positive=True, below=1.0)), None,
    "choose each point's work to meet this relative error (a line with multiply_activation: its completeness gap)",
)  # fmt: skip
_LINE_ADAPTIVE = Adaptive(Key("max_steps", Int(8), 1024, "with tol: the most gradient evaluations per point"), replaces=("steps", "rule"))
_NOISE_ADAPTIVE = Adaptive(Key("max_samples", Maybe(Int(1)), None, "with tol: the most samples per point (null: 1024, or samples if more)"))


def _line(p: dict[str, Any], path: str, b: _Builder) -> LineDoI:
    baseline = b.baseline(p["baseline"], _join(path, "baseline"), p["space"])
    return LineDoI(baseline, steps=p.get("steps"), rule=p.get("rule", "gauss-legendre"), space=p["space"], **_LINE_ADAPTIVE.args(p))


def _parse_each(value: Any, path: str, ctx: _Ctx) -> dict[str, Any]:
    return parse_doi(value, path, ctx, pointwise_only=True)


_SPACE = Key("space", Choice(("input", "slice")), "input", "where the path/noise lives: the inputs, or the activations at the cut")
_EACH = Key("each", Custom("a pointwise DoI", _parse_each), {"kind": "point"}, "the pointwise DoI around every member")

DOI_KINDS: dict[str, Kind] = {
    "point": Kind("point", Schema(()), "the point itself (saliency; gradient × input with multiply_activation)", lambda p, path, b: PointDoI()),
    "line": Kind(
        "line",
        Schema(
            (
                Key("baseline", Custom(_BASELINE_FORMS, _parse_baseline), 0.0, "the start of the path"),
                Key("steps", Int(1), 32, "quadrature nodes"),
                Key("rule", Choice(("gauss-legendre", "riemann-left", "riemann-right", "midpoint", "trapezoid")), "gauss-legendre", "quadrature rule"),
                *_LINE_ADAPTIVE.keys,
                _SPACE,
            )
        ),
        "the segment from a baseline to the point (integrated gradients with multiply_activation)",
        _line,
        adaptive=_LINE_ADAPTIVE,
    ),
    "noise": Kind(
        "noise",
        Schema(
            (
                Key("sigma", Float(positive=True), 0.1, "noise standard deviation"),
                Key("samples", Int(1), 32, "samples per point"),
                Key("sampler", Choice(("sobol", "random")), "sobol", "randomised quasi-Monte Carlo, or independent draws"),
                Key("replicates", Maybe(Int(1)), None, "sobol only: independent randomisations (must divide samples)"),
                *_NOISE_ADAPTIVE.keys,
                _SPACE,
            )
        ),
        "Gaussian noise around the point (SmoothGrad)",
        lambda p, path, b: NoiseDoI(p["sigma"], p["samples"], p["sampler"], p["replicates"], p["space"], **_NOISE_ADAPTIVE.args(p)),
        adaptive=_NOISE_ADAPTIVE,
    ),
    "class": Kind(
        "class",
        Schema((Key("label", Int(0), REQUIRED, "the class whose points of the data section form the population"), _EACH)),
        "uniform over the data section's points of one class",
        lambda p, path, b: ClassDoI(b.population_data(path, p["label"]), p["label"], each=b.pointwise(p["each"], _join(path, "each"))),
        pointwise=False,
    ),
    "dataset": Kind(
        "dataset",
        Schema((_EACH,)),
        "uniform over all points of the data section",
        lambda p, path, b: DatasetDoI(b.population_data(path, None), each=b.pointwise(p["each"], _join(path, "each"))),
        pointwise=False,
    ),
}


def _neuron(p: dict[str, Any], path: str, b: _Builder) -> NeuronQoI:
    index = p["index"]
    return NeuronQoI(p["layer"], tuple(index) if isinstance(index, list) else index)


def _parse_index(value: Any, path: str, ctx: _Ctx) -> Any:
    if isinstance(value, list) and value:
        return [Int(0)(v, _join(path, i), ctx) for i, v in enumerate(value)]
    try:
        return Int(0)(value, path, ctx)
    except QueryError:
        raise QueryError(path, f"must be an int >= 0 (a channel) or a list of ints (one unit) (got {_show(value)})") from None


def _linear(p: dict[str, Any], path: str, b: _Builder) -> LinearQoI:
    terms = []
    for i, term in enumerate(p["terms"]):
        where = _join(_join(path, "terms"), i)
        built = _build_qoi(term["qoi"], _join(where, "qoi"), b)
        if isinstance(built, list):
            raise QueryError(_join(_join(where, "qoi"), "per_token"), "gives one QoI per token; a term of linear must be one QoI (set per_token: false)")
        terms.append((term["weight"], built))
    return LinearQoI(tuple(terms))


_OUTPUT = Key("output", _SELECTOR, None, "which tensor of a tuple/dict model output: an int, a key, or {callable: ...}")
_TERM_SCHEMA = Schema(
    (
        Key("weight", Float(), 1.0, "the coefficient"),
        Key("qoi", Custom("a QoI", lambda v, path, ctx: parse_qoi(v, path, ctx)), REQUIRED, "a QoI (any kind)"),
    )
)


def _parse_terms(value: Any, path: str, ctx: _Ctx) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a non-empty list of {{weight: NUMBER, qoi: QOI}} (got {_show(value)})")
    return [_TERM_SCHEMA.parse(t, _join(path, i), ctx, what="a term") for i, t in enumerate(value)]


QOI_KINDS: dict[str, Kind] = {
    "class": Kind(
        "class",
        Schema((Key("label", Int(0), REQUIRED, "the class index c"), _OUTPUT)),
        "f_c, the score of one class",
        lambda p, path, b: ClassQoI(p["label"], output=b.selector(p["output"], _join(path, "output"))),
    ),
    "comparative": Kind(
        "comparative",
        Schema((Key("a", Int(0), REQUIRED, "the class preferred"), Key("b", Int(0), REQUIRED, "the class compared with"), _OUTPUT)),
        "f_a − f_b: what makes the model prefer class a over b",
        lambda p, path, b: ComparativeQoI(p["a"], p["b"], output=b.selector(p["output"], _join(path, "output"))),
    ),
    "neuron": Kind(
        "neuron",
        Schema(
            (
                Key("layer", Str("a dotted module name"), REQUIRED, "the module whose output holds the neuron"),
                Key("index", Custom("an int (channel) or a list of ints (unit)", _parse_index), REQUIRED, "a channel (int) or one unit (list)"),
            )
        ),
        "one internal neuron or channel (after the cut)",
        _neuron,
    ),
    "max_class": Kind(
        "max_class",
        Schema((_OUTPUT,)),
        "the score of the class predicted at each anchor",
        lambda p, path, b: MaxClassQoI(output=b.selector(p["output"], _join(path, "output"))),
    ),
    "linear": Kind(
        "linear",
        Schema((Key("terms", Custom("a list of {weight, qoi}", _parse_terms), REQUIRED, "Σ weight · qoi"),)),
        "a linear combination Σ weight·qoi of other QoIs",
        _linear,
    ),
    "callable": Kind(
        "callable",
        Schema((Key("function", ImportPath(), REQUIRED, "'module:function', output -> (batch,)"), _OUTPUT)),
        "your own function of the output",
        lambda p, path, b: FunctionQoI(b.imported(p["function"], _join(path, "function")), output=b.selector(p["output"], _join(path, "output"))),
    ),
    "next_token": Kind(
        "next_token",
        Schema(
            (
                Key("token", Custom("a token id, an int >= 0", lambda v, p, c: _token_id(v, p)), REQUIRED, "the token id whose prediction is explained"),
                Key("position", Int(), -1, "the position whose logits predict it (-1: the next token after the input)"),
                Key("log_prob", Bool(), False, "its log-probability instead of its logit"),
                _OUTPUT,
            )
        ),
        "a causal language model's logit (or log-probability) of one token at one position",
        lambda p, path, b: NextTokenQoI(p["token"], p["position"], log_prob=p["log_prob"], output=b.selector(p["output"], _join(path, "output"))),
    ),
    "continuation": Kind(
        "continuation",
        Schema(
            (
                Key("target", Custom("a list of token ids or an array name", lambda v, p, c: _parse_target(v, p, c)), REQUIRED, "the continuation every input ends with: token ids, or the name of a 1-D array of the data"),
                Key("per_token", Bool(), False, "one QoI per token of the continuation (a list of results), instead of their sum"),
                _OUTPUT,
            )
        ),
        "log p(continuation | prompt) of a causal language model (teacher forcing)",
        lambda p, path, b: _continuation(p, path, b),
    ),
}


def _parse_target(value: Any, path: str, ctx: _Ctx) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        return [_token_id(v, _join(path, i)) for i, v in enumerate(value)]
    raise QueryError(path, f"must be a non-empty list of token ids or the name of an array of the data section (got {_show(value)})")


def _continuation(p: dict[str, Any], path: str, b: _Builder) -> Any:
    qoi = ContinuationQoI(b.target(p["target"], _join(path, "target")), output=b.selector(p["output"], _join(path, "output")))
    return qoi.per_token() if p["per_token"] else qoi


def _parse_kind(value: Any, path: str, ctx: _Ctx, kinds: dict[str, Kind], what: str) -> dict[str, Any]:
    names = ", ".join(kinds)
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise QueryError(path, f"must be a {what}: a kind name ({names}) or a mapping with 'kind' (got {_show(value)})")
    if "kind" not in value:
        raise QueryError(_join(path, "kind"), f"missing; say which {what}: one of {names}")
    kind = Choice(tuple(kinds))(value["kind"], _join(path, "kind"), ctx)
    rest = {k: v for k, v in value.items() if k != "kind"}
    return {"kind": kind, **kinds[kind].schema.parse(rest, path, ctx, also=("kind",))}


@contextlib.contextmanager
def _at(path: str, *, broad: bool = False) -> Iterator[None]:
    """Report a library ``ValueError``/``TypeError`` (any error when ``broad``) raised in
    the body as a :class:`QueryError` at ``path``."""
    try:
        yield
    except QueryError:
        raise
    except (ValueError, TypeError) as e:
        raise QueryError(path, str(e)) from None
    except Exception as e:
        if not broad:
            raise
        raise QueryError(path, f"{type(e).__name__}: {e}") from None


def parse_doi(value: Any, path: str, ctx: _Ctx, *, pointwise_only: bool = False) -> dict[str, Any]:
    """A DoI spec (a kind name or a mapping with ``kind``), checked; the library's own
    argument checks run on a placeholder object."""
    spec = _parse_kind(value, path, ctx, DOI_KINDS, "DoI")
    kind = DOI_KINDS[spec["kind"]]
    if pointwise_only and not kind.pointwise:
        pointwise = ", ".join(k for k, v in DOI_KINDS.items() if v.pointwise)
        raise QueryError(_join(path, "kind"), f"each must be a pointwise DoI ({pointwise}) (got {spec['kind']!r})")
    if spec["kind"] == "line":
        _check_baseline_space(spec["baseline"], spec["space"], _join(path, "baseline"))
    adaptive = kind.adaptive
    if adaptive is None:
        with _at(path, broad=True):
            kind.build(spec, path, _Builder())
        return spec
    spec = adaptive.settle(value, spec, path)
    fixed = {k: v for k, v in spec.items() if k not in ("tol", adaptive.cap.name)}
    with _at(path, broad=True):
        kind.build(fixed, path, _Builder())
    if spec.get("tol") is not None:  # what only tol (or its cap) makes wrong is reported there
        try:
            kind.build(spec, path, _Builder())
        except Exception as e:
            cap = adaptive.cap.name
            text = str(e) if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
            raise QueryError(_join(path, cap if cap in str(e) else "tol"), text) from None
    return spec


def _check_baseline_space(baseline: Any, space: str, path: str) -> None:
    if isinstance(baseline, dict) and "token" in baseline and space != "slice":
        raise QueryError(
            path, "{token: ...} is a baseline at the word embeddings; it needs space: slice and a slice at the embedding layer "
            "(e.g. slice: bert.embeddings.word_embeddings)",
        )
    if isinstance(baseline, dict) and "activation_of" in baseline and space != "slice":
        raise QueryError(path, "{activation_of: ...} gives an activation at the cut; it needs space: slice (or give the input baseline itself)")
    if isinstance(baseline, dict) and "mean" in baseline and space == "slice":
        raise QueryError(path, "{mean: ...} is an input; in space: slice write {activation_of: {mean: ...}} for its activation at the cut")


def parse_qoi(value: Any, path: str, ctx: _Ctx) -> dict[str, Any]:
    """A QoI spec, checked like :func:`parse_doi`."""
    spec = _parse_kind(value, path, ctx, QOI_KINDS, "QoI")
    with _at(path, broad=True):
        _build_qoi(spec, path, _Builder())
    return spec


def _build_qoi(spec: dict[str, Any], path: str, b: _Builder) -> QuantityOfInterest:
    return QOI_KINDS[spec["kind"]].build(spec, path, b)


def _parse_qois(value: Any, path: str, ctx: _Ctx) -> list[dict[str, Any]] | dict[str, Any]:
    if isinstance(value, list):
        if not value:
            raise QueryError(path, "the list of QoIs is empty; give one QoI or a non-empty list")
        return [parse_qoi(v, _join(path, i), ctx) for i, v in enumerate(value)]
    return parse_qoi(value, path, ctx)


# --- sections ---------------------------------------------------------------------------------


DTYPES = ("float16", "bfloat16", "float32", "float64")


def _parse_device(value: Any, path: str, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError(path, f"must be a device name such as 'cpu' or 'cuda' (got {_show(value)})")
    try:
        torch.device(value)
    except Exception:
        raise QueryError(path, f"must be a device name such as 'cpu', 'cuda' or 'cuda:1' (got {value!r})") from None
    return value


OPTION_KEYS = (
    Key("batch_size", Custom("an int >= 1 or 'auto'", lambda v, p, c: _parse_batch_size(v, p, c)), 64, "sample rows per forward/backward pass; 'auto': 64 on CPU, the largest that fits on CUDA"),
    Key("seed", Maybe(Int(0)), 0, "seed of the random draws (null: a fresh one, recorded in the result)"),
    Key("multiply_activation", Bool(), False, "multiply by h(x) − h(baseline): integrated gradients, gradient × input"),
    Key("dtype", Maybe(Choice(DTYPES)), None, "compute precision (null: the model's)"),
    Key("device", Maybe(Custom("a device name", _parse_device)), None, "where to compute (null: the model's); --device overrides"),
    Key("channels_last", Maybe(Bool()), None, "4-D batches in channels-last layout (null: on CPU for conv models, with fallback)"),
    Key("affine_prefix", Bool(), True, "lines: run the affine layers after the line's space once per point, not per sample (exact)"),
    Key("nonfinite", Choice(("raise", "skip")), "raise", "NaN/inf QoI values or gradients: raise naming the point, or skip the point"),
    Key("tf32", Maybe(Bool()), None, "CUDA: let float32 convolutions and matmuls use TF32 (null: PyTorch's settings)"),
    Key("autocast", Maybe(Choice(("bfloat16",))), None, "fast mode: per-sample passes under bfloat16 autocast, the cut and sums in full precision"),
    Key("compile", Bool(), False, "run g through torch.compile (split slices only)"),
)


def _parse_checkpoint(value: Any, path: str, ctx: _Ctx) -> Path:
    """A checkpoint file (it need not exist yet; its folder must); relative to the query
    file's folder."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise QueryError(path, f"must be a file path (got {_show(value)})")
    target = Path(value).expanduser()
    if not target.is_absolute():
        target = ctx.folder / target
    if target.is_dir():
        raise QueryError(path, f"{str(target)!r} is a folder; give a file path, e.g. {str(target / 'query.ckpt')!r}")
    if not target.parent.is_dir():
        raise QueryError(path, f"folder not found: {str(target.parent)!r} (relative paths are read from the query file's folder)")
    return target


def _word_or_int(value: Any, path: str, word: str, minimum: int, expected: str) -> Any:
    """``word`` itself, or an int ``>= minimum``; else a QueryError saying ``expected``."""
    if isinstance(value, str) and value == word:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value < _INT_LIMIT:
        return value
    raise QueryError(path, f"must be {expected} (got {_show(value)})")


def _parse_batch_size(value: Any, path: str, ctx: _Ctx) -> Any:
    return _word_or_int(value, path, "auto", 1, "an int >= 1 or 'auto'")

MODEL_SCHEMA = Schema(
    (
        Key("factory", Maybe(ImportPath()), None, "'package.module:callable' returning an nn.Module"),
        Key("kwargs", AnyMapping(), {}, "keyword arguments of the factory"),
        Key("weights", Maybe(FilePath()), None, "a state_dict file, loaded with weights_only=True"),
        Key("torchscript", Maybe(FilePath()), None, "a TorchScript file (instead of factory)"),
    )
)

DATA_SCHEMA = Schema(
    (
        Key("path", Maybe(FilePath((".npz", ".pt", ".pth"))), None, "an .npz or .pt file of named arrays"),
        Key("factory", Maybe(ImportPath()), None, "'package.module:callable' returning a dict of named arrays (instead of path)"),
        Key("kwargs", AnyMapping(), {}, "keyword arguments of the factory"),
        Key(
            "inputs", Custom("an array name, a list of them, or a mapping of argument names to them", lambda v, p, c: _parse_input_names(v, p, c)), "x",
            "the array of inputs (N, ...); a list [A, B] calls model(A, B), a mapping {input_ids: A, attention_mask: B} calls model(input_ids=A, attention_mask=B) (integer arrays stay integers: token ids, masks)",
        ),
        Key("labels", Maybe(Str("an array name")), "y", "the array of int labels (N,); null: none"),
        Key("classes", Maybe(Custom("a list of ints", lambda v, p, c: _int_list(v, p, c, minimum=0))), None, "keep only points with these labels"),
        Key(
            "tokens", Maybe(Custom("an array name or {vocab: FILE}", lambda v, p, c: _parse_tokens(v, p, c))), None,
            "token strings to show: an array of the data (a list of N rows of L strings), or {vocab: FILE} (one token per line, id = line number; or a .json mapping of tokens to ids); null: the ids",
        ),
    )
)


def _parse_input_names(value: Any, path: str, ctx: _Ctx) -> Any:
    """One array name, a list of them (``model(*inputs)``) or a mapping of the model's
    argument names to them (``model(**inputs)``)."""
    name = Str("an array name")
    if isinstance(value, str):
        return name(value, path, ctx)
    if isinstance(value, list):
        if not value:
            raise QueryError(path, "the list is empty; name the arrays passed to the model, e.g. [input_ids, attention_mask]")
        return [name(v, _join(path, i), ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not value:
            raise QueryError(path, "the mapping is empty; map the model's arguments to arrays, e.g. {input_ids: ids, attention_mask: mask}")
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise QueryError(path, f"keys must be the model's argument names, identifiers such as input_ids (got {_show(key)})")
            out[key] = name(v, _join(path, key), ctx)
        return out
    raise QueryError(
        path, f"must be an array name, a list of array names (model(*inputs)) or a mapping of argument names to array names "
        f"(model(**inputs)), e.g. {{input_ids: ids, attention_mask: mask}} (got {_show(value)})",
    )


def _parse_tokens(value: Any, path: str, ctx: _Ctx) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and list(value) == ["vocab"]:
        return {"vocab": FilePath()(value["vocab"], _join(path, "vocab"), ctx)}
    if isinstance(value, dict) and value:
        key = next((k for k in value if k != "vocab"), None)
        if key is not None:
            hint = _did_you_mean(key, ["vocab"])
            raise QueryError(_join(path, str(key)), f"unknown key; {hint}tokens is an array name or {{vocab: FILE}}")
    raise QueryError(path, f"must be the name of an array of token strings (N rows of L strings) or {{vocab: FILE}} (one token per line) (got {_show(value)})")


def _int_list(value: Any, path: str, ctx: _Ctx, minimum: int = 0) -> list[int]:
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a non-empty list of ints >= {minimum} (got {_show(value)})")
    return [Int(minimum)(v, _join(path, i), ctx) for i, v in enumerate(value)]


INPUTS_SCHEMA = Schema(
    (
        Key("label", Maybe(Int(0)), None, "explain the points of this class"),
        Key("indices", Maybe(Custom("a list of ints", _int_list)), None, "explain these rows of the data (instead of label)"),
        Key("limit", Maybe(Int(1)), None, "at most this many points (the first ones)"),
    )
)

def _parse_anchor(value: Any, path: str, ctx: _Ctx) -> Any:
    return _word_or_int(value, path, "mean", 0, "'mean' or an int >= 0 (a point's position among the inputs)")


TOP_SCHEMA = Schema(
    (
        Key("k", Int(1), 10, "how many entries"),
        Key("by", Choice(("unit", "channel")), "unit", "rank single units, or channels"),
        Key("agg", Choice(("sum", "max")), "sum", "how a channel aggregates its units"),
        Key("absolute", Bool(), False, "rank by |influence|"),
        Key("anchor", Custom("'mean' or an int >= 0", _parse_anchor), "mean", "pointwise DoIs: which point's explanation ranks ('mean': their mean)"),
    )
)

REGION_SCHEMA = Schema(
    (
        Key("box", Maybe(Custom("[top, bottom, left, right]", lambda v, p, c: _box(v, p, c))), None, "a half-open pixel box on the last two unit dims"),
        Key("mask", Maybe(Str("an array name")), None, "a bool array of the data section: (H, W), unit-shaped, or one per point"),
        Key("invert", Bool(), False, "use the complement"),
    )
)


def _box(value: Any, path: str, ctx: _Ctx) -> list[int]:
    if not isinstance(value, list) or len(value) != 4:
        raise QueryError(path, f"must be [top, bottom, left, right] (got {_show(value)})")
    top, bottom, left, right = (Int(0)(v, _join(path, i), ctx) for i, v in enumerate(value))
    if bottom <= top or right <= left:
        raise QueryError(path, f"must have top < bottom and left < right (half-open pixel ranges) (got {value})")
    return [top, bottom, left, right]


def _parse_regions(value: Any, path: str, ctx: _Ctx) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise QueryError(path, f"must be a mapping of region names to {{box: ...}} or {{mask: ...}} (got {_show(value)})")
    out = {}
    for name, spec in value.items():
        where = _join(path, str(name))
        if not isinstance(name, str) or not name:
            raise QueryError(path, f"region names must be strings (got {_show(name)})")
        region = REGION_SCHEMA.parse(spec, where, ctx, what="a region")
        if (region["box"] is None) == (region["mask"] is None):
            raise QueryError(where, "give exactly one of box: [top, bottom, left, right] or mask: ARRAY")
        out[name] = region
    return out


PLOT_KINDS = ("heatmaps", "neuron_grid", "contrast", "audit_bars", "curves", "essence", "tokens")
"""The pictures ``output.plots`` can ask for (see :mod:`influence._outputs`)."""


def _parse_plots(value: Any, path: str, ctx: _Ctx) -> bool | list[str]:
    if isinstance(value, bool):
        return value
    if not isinstance(value, list):
        raise QueryError(path, f"must be true (every picture that applies), false, or a list of {', '.join(PLOT_KINDS)} (got {_show(value)})")
    return list(dict.fromkeys(Choice(PLOT_KINDS)(v, _join(path, i), ctx) for i, v in enumerate(value)))


def _parse_audit_region(value: Any, path: str, ctx: _Ctx) -> dict[str, Any]:
    region = REGION_SCHEMA.parse(value, path, ctx, what="a region")
    if (region["box"] is None) == (region["mask"] is None):
        raise QueryError(path, "give exactly one of box: [top, bottom, left, right] or mask: ARRAY")
    return region


def _parse_token_ids(value: Any, path: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a token id or a non-empty list of token ids (ints >= 0) (got {_show(value)})")
    return [_token_id(v, _join(path, i)) for i, v in enumerate(value)]


def _parse_rankings(value: Any, path: str, ctx: _Ctx) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a non-empty list of {', '.join(RANKINGS)} (got {_show(value)})")
    return list(dict.fromkeys(Choice(RANKINGS)(v, _join(path, i), ctx) for i, v in enumerate(value)))


def _parse_curve_baseline(value: Any, path: str, ctx: _Ctx) -> Any:
    if isinstance(value, str) and value in ("mean", "blur"):
        return value
    try:
        return Float()(value, path, ctx)
    except QueryError:
        raise QueryError(path, f"must be a number, 'mean' or 'blur' (got {_show(value)})") from None


AUDIT_SCHEMA = Schema(
    (
        Key("region", Maybe(Custom("a region", _parse_audit_region)), None, "the region: {box: [top, bottom, left, right]} or {mask: ARRAY, invert: false} (input queries)"),
        Key(
            "tokens", Maybe(Custom("a list of token ids", lambda v, p, c: _parse_token_ids(v, p))), None,
            "instead of region, for text: the audited token ids (e.g. a suspected cue word), with the query's line at the word embeddings",
        ),
        Key("factor", Float(positive=True), 3.0, "flag a class whose share exceeds factor x its area share"),
        Key("flag_on", Choice(("positive", "absolute")), "positive", "which share the flag compares"),
        Key("classes", Maybe(Custom("a list of ints", _int_list)), None, "the classes audited (default: every label)"),
    )
)

def _parse_audit(value: Any, path: str, ctx: _Ctx) -> dict[str, Any]:
    """The audit's keys; ``tokens`` appears only when given (a region audit reads as before)."""
    out = AUDIT_SCHEMA.parse(value, path, ctx)
    if out["tokens"] is None:
        del out["tokens"]
    return out


ESSENCE_SCHEMA = Schema(
    (
        Key("k", Custom("a list of ints >= 1", lambda v, p, c: _int_list(v, p, c, minimum=1)), [1, 2, 4, 8], "how many units are kept"),
        Key("rankings", Custom("a list of rankings", _parse_rankings), ["contrast"], "contrast, influence, gradient_x_activation"),
        Key("ablation", Choice(("mean", "zero")), "mean", "what the other units become"),
        Key("draws", Int(1), 100, "random sets of k units to compare with"),
        Key("by", Maybe(Choice(("unit", "channel"))), None, "keep units or whole channels (default: output.top.by)"),
    )
)

CURVES_SCHEMA = Schema(
    (
        Key("steps", Int(1), 16, "points 0, 1/steps, ..., 1 on each curve"),
        Key("baseline", Custom("a number, 'mean' or 'blur'", _parse_curve_baseline), 0.0, "what removed pixels become"),
        Key("random_orders", Int(1), 4, "random pixel orders averaged for the comparison"),
    )
)

OUTPUT_SCHEMA = Schema(
    (
        Key("top", _mapping_check(TOP_SCHEMA, "a top-k table"), TOP_SCHEMA.parse({}, "", _Ctx(Path("."))), "the table printed"),
        Key("save", Bool(), True, "write <out>/<name>.json and <name>.pt"),
        Key("plots", Custom("true, false or a list of pictures", _parse_plots), False, "PNG pictures (matplotlib: the viz extra)"),
        Key("regions", Custom("a mapping of regions", _parse_regions), {}, "report the sum and |share| of influence per region"),
        Key("audit", Maybe(Custom("an audit", lambda v, p, c: _parse_audit(v, p, c))), None, "per class, the share of attribution in a region (or on given tokens)"),
        Key("essence", Maybe(_mapping_check(ESSENCE_SCHEMA, "an essence check")), None, "keep the top-k units, AUC against random units"),
        Key("curves", Maybe(_mapping_check(CURVES_SCHEMA, "curves")), None, "deletion and insertion curves of the attributions"),
        Key("report", Bool(), False, "add the query to <out>/report.html and report.md"),
    )
)

QUERY_SCHEMA = Schema(
    (
        Key("name", Maybe(Str("a name of letters, digits, '_', '-' or '.'", r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")), None, "names the output files (default query<i>)"),
        Key("slice", Custom("a layer name or a mapping", _parse_slice), {"layer": None, "at": "output", "realisation": "auto"}, "where to cut; null: the input (input influence)"),
        Key("doi", Custom("a DoI", lambda v, p, c: parse_doi(v, p, c)), REQUIRED, "the distribution of interest, e.g. {kind: line, steps: 32}"),
        Key("qoi", Custom("a QoI or a list of QoIs", _parse_qois), REQUIRED, "the quantity of interest, e.g. {kind: class, label: 3}"),
        Key("inputs", Maybe(_mapping_check(INPUTS_SCHEMA, "a selection")), None, "pointwise DoIs: which data points to explain (default: all)"),
        Key("output", _mapping_check(OUTPUT_SCHEMA, "an output mapping"), OUTPUT_SCHEMA.parse({}, "", _Ctx(Path("."))), "what to print and save"),
        *(Key(k.name, k.check, None, k.doc) for k in OPTION_KEYS),
        Key("checkpoint", Maybe(Custom("a file path", _parse_checkpoint)), None, "class and dataset DoIs: a file keeping the query's progress; a rerun resumes from it"),
    )
)

DEFAULTS_SCHEMA = Schema(OPTION_KEYS)

SECTIONS: dict[str, Schema] = {
    "model": MODEL_SCHEMA,
    "data": DATA_SCHEMA,
    "defaults": DEFAULTS_SCHEMA,
    "queries[]": QUERY_SCHEMA,
    "queries[].slice": SLICE_SCHEMA,
    "queries[].inputs": INPUTS_SCHEMA,
    "queries[].output": OUTPUT_SCHEMA,
    "queries[].output.top": TOP_SCHEMA,
    "queries[].output.regions.<name>": REGION_SCHEMA,
    "queries[].output.audit": AUDIT_SCHEMA,
    "queries[].output.essence": ESSENCE_SCHEMA,
    "queries[].output.curves": CURVES_SCHEMA,
}
"""Every section's schema, by where it appears in the file (the README lists them all)."""


# --- the validated file -------------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySpec:
    """One validated query: plain values, defaults filled in."""

    index: int
    name: str
    slice: dict[str, Any]
    doi: dict[str, Any]
    qoi: Any  # a QoI spec, or a list of them
    inputs: dict[str, Any] | None
    output: dict[str, Any]
    options: dict[str, Any]

    @property
    def path(self) -> str:
        return f"queries[{self.index}]"

    @property
    def pointwise(self) -> bool:
        return DOI_KINDS[self.doi["kind"]].pointwise

    def echo(self) -> dict[str, Any]:
        """The query as run, with defaults filled in (JSON-ready)."""
        return _plain(
            {"name": self.name, "slice": self.slice, "doi": self.doi, "qoi": self.qoi, "inputs": self.inputs, "output": self.output, **self.options}
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class QueryFile:
    """A validated query file (nothing imported or loaded yet)."""

    source: str
    folder: Path
    model: dict[str, Any]
    data: dict[str, Any]
    queries: tuple[QuerySpec, ...]

    def prepare(self, device: str | None = None) -> "Session":
        """Import the factories and load the model and data (see :class:`Session`)."""
        return Session(self, device)


def _read_yaml(path: Path) -> Any:
    class _Loader(yaml.SafeLoader):
        """Safe loading that also refuses duplicate keys."""

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, f"found an unhashable key {_show(key)}", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen[key] = loader.construct_object(value_node, deep=True)
        return seen

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QueryError(name, "query file not found") from None
    except IsADirectoryError:
        raise QueryError(name, "is a folder, not a query file") from None
    except UnicodeDecodeError as e:
        raise QueryError(name, f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise QueryError(name, f"cannot read the query file ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        where = f" (line {e.problem_mark.line + 1})" if e.problem_mark is not None else ""
        problem = e.problem or str(e)
        tag = re.search(r"tag '([^']*)'", problem)
        if tag and "constructor" in problem:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise QueryError(
                name,
                f"YAML tag {shown!r} is not allowed{where}: query files are read with safe loading "
                "(plain mappings, lists, strings, numbers, booleans); remove the tag",
            ) from None
        raise QueryError(name, f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise QueryError(name, f"invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise QueryError(name, "invalid YAML: nested too deeply") from None


def load_query_file(path: str | os.PathLike[str]) -> QueryFile:
    """Read and validate a query file (``yaml.safe_load`` semantics). Raises
    :class:`QueryError`; imports and loads nothing heavy."""
    path = Path(path)
    document = _read_yaml(path)
    return parse_query(document, path.resolve().parent, source=str(path))


_TOP_KEYS = ("model", "data", "defaults", "queries")


def parse_query(document: Any, folder: str | os.PathLike[str] = ".", *, source: str = "<query>") -> QueryFile:
    """Validate a parsed query document; relative paths start from ``folder``."""
    ctx = _Ctx(Path(folder))
    if document is None:
        raise QueryError(source, "the query file is empty; it needs sections model, data and queries")
    if not isinstance(document, dict):
        raise QueryError(source, f"a query file must be a mapping with sections model, data and queries (got {_show(document)})")
    for key in document:
        if not isinstance(key, str) or key not in _TOP_KEYS:
            hint = _did_you_mean(key, _TOP_KEYS)
            raise QueryError(_join("", key if isinstance(key, str) else repr(key)), f"unknown section; {hint}valid sections: {', '.join(_TOP_KEYS)}")
    for section in ("model", "data", "queries"):
        if section not in document:
            raise QueryError(section, "missing section; a query file needs model, data and queries (see README, 'YAML queries')")
    model = MODEL_SCHEMA.parse(document["model"], "model", ctx, what="a model section")
    if (model["factory"] is None) == (model["torchscript"] is None):
        raise QueryError("model", "give exactly one of factory: 'package.module:callable' or torchscript: FILE")
    if model["torchscript"] is not None:
        for key in ("weights", "kwargs"):
            if document["model"].get(key):
                raise QueryError(_join("model", key), "applies to factory models only; a TorchScript file holds its own weights")
    data = DATA_SCHEMA.parse(document["data"], "data", ctx, what="a data section")
    if (data["path"] is None) == (data["factory"] is None):
        raise QueryError("data", "give exactly one of path: FILE (.npz or .pt) or factory: 'package.module:callable'")
    if data["path"] is not None and document["data"].get("kwargs"):
        raise QueryError("data.kwargs", "applies to factory data only")
    if data["classes"] is not None and data["labels"] is None:
        raise QueryError("data.classes", "filters by label, but data.labels is null; name the labels array")
    defaults = DEFAULTS_SCHEMA.parse(document.get("defaults") or {}, "defaults", ctx, what="a defaults section")
    raw = document["queries"]
    if not isinstance(raw, list):
        raise QueryError("queries", f"must be a list of queries (got {_show(raw)})")
    if not raw:
        raise QueryError("queries", "the list is empty; add at least one query with doi and qoi")
    queries = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"queries[{i}]"
        q = QUERY_SCHEMA.parse(item, path, ctx, what="a query")
        name = q["name"] or f"query{i}"
        if name in names:
            raise QueryError(_join(path, "name"), f"{name!r} is already the name of queries[{names[name]}]; names must be unique")
        names[name] = i
        options = {k.name: defaults[k.name] if q[k.name] is None else q[k.name] for k in OPTION_KEYS}
        if q["checkpoint"] is not None:
            if DOI_KINDS[q["doi"]["kind"]].pointwise:
                raise QueryError(_join(path, "checkpoint"), f"applies to class and dataset DoIs (pooled queries); a {q['doi']['kind']} DoI is not checkpointed")
            options["checkpoint"] = q["checkpoint"]
        spec = QuerySpec(i, name, q["slice"], q["doi"], q["qoi"], q["inputs"], q["output"], options)
        _cross_check(spec, q, data)
        queries.append(spec)
    return QueryFile(source, ctx.folder, model, data, tuple(queries))


def _walk_qois(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield spec
    if spec["kind"] == "linear":
        for term in spec["terms"]:
            yield from _walk_qois(term["qoi"])


def _cross_check(spec: QuerySpec, raw: dict[str, Any], data: dict[str, Any]) -> None:
    """Checks that involve more than one field."""
    path = spec.path
    if not spec.pointwise and spec.inputs is not None:
        raise QueryError(
            _join(path, "inputs"), f"a {spec.doi['kind']} DoI takes its points from the data section; remove inputs (it applies to point, line and noise)"
        )
    if not spec.pointwise and spec.output["top"]["anchor"] != "mean":
        raise QueryError(_join(path, "output.top.anchor"), f"applies to pointwise DoIs; a {spec.doi['kind']} DoI gives one pooled explanation")
    inputs = spec.inputs or {}
    if inputs.get("label") is not None and inputs.get("indices") is not None:
        raise QueryError(_join(path, "inputs"), "give label or indices, not both")
    _cross_check_output(spec, data)
    if not isinstance(data["inputs"], str):  # a mapping or list of inputs: model(**inputs) / model(*inputs)
        what = "a mapping" if isinstance(data["inputs"], dict) else "a list"
        if spec.slice["layer"] is None:
            raise QueryError(
                _join(path, "slice"),
                f"data.inputs is {what} of arrays (token ids, masks), which has no gradient at the input; explain it at a layer "
                "after the inputs, e.g. the word embeddings (slice: bert.embeddings.word_embeddings, or transformer.wte for GPT-2)",
            )
        if spec.slice["realisation"] not in ("auto", "hook"):
            raise QueryError(_join(path, "slice.realisation"), f"data.inputs is {what} of arrays, given to the model as model(**inputs) / model(*inputs), which only realisation: hook does (or auto)")
        each, where = (spec.doi, _join(path, "doi")) if spec.pointwise else (spec.doi["each"], _join(path, "doi.each"))
        if each["kind"] in ("line", "noise") and each["space"] == "input":
            fix = " and baseline: {token: 0} (the pad id at every position but padding)" if each["kind"] == "line" else ""
            raise QueryError(
                _join(where, "space"),
                f"data.inputs is {what} of arrays (token ids, masks); a {each['kind']} in input space cannot draw points between them: "
                f"use space: slice at the embedding layer{fix}",
            )
    if data["labels"] is None:
        if spec.doi["kind"] == "class":
            raise QueryError(_join(path, "doi.label"), "a class DoI needs labels, but data.labels is null")
        if inputs.get("label") is not None:
            raise QueryError(_join(path, "inputs.label"), "needs labels, but data.labels is null")


def _cross_check_output(spec: QuerySpec, data: dict[str, Any]) -> None:
    """What the pictures and analyses of ``output`` need from the rest of the query."""
    out, path = spec.output, _join(spec.path, "output")
    at_input = spec.slice["layer"] is None
    audit = out["audit"]
    if audit is not None:
        where = _join(path, "audit")
        if audit["region"] is None and audit.get("tokens") is None:
            raise QueryError(
                _join(where, "region"), "missing; give region: {box: [top, bottom, left, right]} or {mask: ARRAY} (images, slice: null), or tokens: [IDS] (text, at the word embeddings)"
            )
        if audit["region"] is not None and audit.get("tokens") is not None:
            raise QueryError(_join(where, "tokens"), "give region (images) or tokens (text), not both")
        if audit.get("tokens") is not None:
            if at_input:
                raise QueryError(_join(where, "tokens"), "audits token attributions at the word embeddings; use it in a query whose slice is the embedding layer")
            each = spec.doi if spec.pointwise else spec.doi["each"]
            base = each.get("baseline")
            if each["kind"] != "line" or each["space"] != "slice" or not isinstance(base, dict) or "token" not in base:
                raise QueryError(
                    _join(where, "tokens"),
                    "attributes with the query's line at the word embeddings: give the query (or its each) doi "
                    "{kind: line, space: slice, baseline: {token: ID, keep: [IDS]}}",
                )
            if each.get("rule", "gauss-legendre") != "gauss-legendre":
                raise QueryError(_join(where, "tokens"), f"the token audit integrates with rule gauss-legendre; the query's line uses {each['rule']!r}")
    for key, needs_input in (("audit", True), ("curves", True), ("essence", False)):
        if out[key] is None:
            continue
        where = _join(path, key)
        if key == "audit" and out[key].get("tokens") is not None:
            needs_input = False
        if needs_input != at_input:
            raise QueryError(where, "attributes to the input; use it in a query with slice: null" if needs_input else "keeps units of a layer; use it in a query with a slice (a layer name)")
        if key != "curves" and data["labels"] is None:
            raise QueryError(where, "needs labels, but data.labels is null")
    if out["curves"] is not None and not spec.pointwise:
        raise QueryError(_join(path, "curves"), f"needs one attribution per image: a point, line or noise DoI (got {spec.doi['kind']})")
    if out["essence"] is not None and (isinstance(spec.qoi, list) or spec.qoi["kind"] not in ("class", "comparative")):
        raise QueryError(_join(path, "essence"), "measures how one class or one comparison separates: use qoi kind class or comparative")
    if isinstance(out["plots"], list):
        for i, kind in enumerate(out["plots"]):
            where = _join(_join(path, "plots"), i)
            needs = {"audit_bars": "audit", "curves": "curves", "essence": "essence"}.get(kind)
            if needs is not None and out[needs] is None:
                raise QueryError(where, f"{kind} draws the result of output.{needs}; add output.{needs}")
            if kind == "heatmaps" and not at_input:
                raise QueryError(where, "heatmaps are drawn over the inputs; use them in a query with slice: null")
            if kind == "neuron_grid" and at_input:
                raise QueryError(where, "neuron_grid explains the top units of a layer; use it in a query with a slice")
            if kind == "tokens" and at_input:
                raise QueryError(where, "tokens shows one value per token at the word embeddings; use it in a query whose slice is the embedding layer")
            if kind == "tokens" and not spec.pointwise:
                raise QueryError(where, f"tokens needs one attribution per sentence: a point, line or noise DoI (got {spec.doi['kind']})")


# --- loading: the session ------------------------------------------------------------------------


def _import(spec: str, path: str, folder: Path) -> Any:
    """``package.module:attr.attr``; a module that is not importable from ``sys.path`` is
    looked for in the query file's folder too."""
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
            hint = _did_you_mean(part, names)
            raise QueryError(path, f"{module_name!r} has no attribute {part!r}; {hint}".rstrip("; ").rstrip())
        value = getattr(value, part)
    if not callable(value):
        raise QueryError(path, f"{spec!r} is a {type(value).__name__}, not a callable")
    return value


def _call_factory(fn: Callable[..., Any], kwargs: dict[str, Any], kwargs_path: str) -> Any:
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
                hint = _did_you_mean(unknown[0], params)
                raise QueryError(_join(kwargs_path, unknown[0]), f"{fn.__name__}() has no argument {unknown[0]!r}; {hint}it takes: {', '.join(params) or '(nothing)'}") from None
            raise QueryError(kwargs_path, f"{getattr(fn, '__name__', 'the factory')}(): {e}") from None
    try:
        return fn(**kwargs)
    except (ValueError, TypeError) as e:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unexpected and unexpected.group(1) in kwargs:
            raise QueryError(_join(kwargs_path, unexpected.group(1)), f"not an argument of {getattr(fn, '__name__', 'the factory')}() ({e})") from None
        raise QueryError(kwargs_path, f"{getattr(fn, '__name__', 'the factory')}() refused its arguments: {e}") from None


def _load_state_dict(path: Path, where: str) -> dict[str, Tensor]:
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


def _fit_weights(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
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
    fn = _import(spec["factory"], "model.factory", folder)
    model = _call_factory(fn, spec["kwargs"], "model.kwargs")
    if not isinstance(model, nn.Module):
        raise QueryError("model.factory", f"{spec['factory']!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if spec["weights"] is not None:
        _fit_weights(model, _load_state_dict(spec["weights"], "model.weights"), "model.weights")
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
    arrays = _read_arrays(spec["file"], _join(where, "file"))
    key = spec["key"]
    if key is None:
        if len(arrays) != 1:
            raise QueryError(_join(where, "key"), f"{spec['file'].name} holds several arrays ({', '.join(sorted(arrays))}); name one with key:")
        key = next(iter(arrays))
    elif key not in arrays:
        hint = _did_you_mean(key, list(arrays))
        raise QueryError(_join(where, "key"), f"no array {key!r} in {spec['file'].name}; {hint}arrays: {', '.join(sorted(arrays))}")
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
            hint = _did_you_mean(name, list(self.arrays))
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
    return [(key, name, _join("data.inputs", key)) for key, name in layout.items()]


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
        vocab = _read_vocab(spec["vocab"], _join(where, "vocab"))
        top = int(ids.max()) if ids.numel() else -1
        if top >= len(vocab) or (ids.numel() and int(ids.min()) < 0):
            bad = top if top >= len(vocab) else int(ids.min())
            raise QueryError(_join(where, "vocab"), f"token id {bad} of the data is not a line of {spec['vocab'].name} ({len(vocab)} tokens, ids 0..{len(vocab) - 1})")
        return [[vocab[t] for t in row] for row in ids.tolist()]
    if spec not in raw:
        names = sorted(raw)
        hint = _did_you_mean(spec, names)
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
            raise QueryError(where, f"row {i} of {spec!r} must be a list of token strings (got {_show(row)})")
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
        fn = _import(spec["factory"], "data.factory", folder)
        raw = _call_factory(fn, spec["kwargs"], "data.kwargs")
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
            hint = _did_you_mean(name, names)
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


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


class Session:
    """A query file with its model and data loaded; :meth:`build` makes each query."""

    def __init__(self, file: QueryFile, device: str | None = None) -> None:
        self.file = file
        if device is not None:
            device = _parse_device(device, "--device", _Ctx(file.folder))
            _check_device(device, "--device")
        self.device = device
        self.model = load_model(file.model, file.folder)
        self.data = load_data(file.data, file.folder, self.model)
        if device is not None:
            self.model.to(device)
        self._probe_output: Any = None
        with torch.no_grad():
            try:
                self._probe_output = call_model(self.model, self.as_model_input(points_rows(self.data.x, slice(0, 1))))
            except Exception as e:
                raise QueryError(
                    "data.inputs", f"the model cannot run on one point of shape {points_describe(self.data.x)}: {type(e).__name__}: {str(e)[:200]}"
                ) from None
        self.is_script = isinstance(self.model, torch.jit.ScriptModule)

    def _model_device(self) -> torch.device:
        for t in [*self.model.parameters(), *self.model.buffers()]:
            return t.device
        return torch.device("cpu")

    def as_model_input(self, x: Points) -> Any:
        """``x`` on the model's device, floats in its floating dtype, integers (token ids,
        masks) as they are (as the engine would pass them)."""
        device = self._model_device()
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        return points_apply(x, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() and dtype is not None else None))

    def build(self, index: int) -> "BuiltQuery":
        """Query ``index`` as library objects, checked against the model and the data."""
        return _QueryBuilder(self, self.file.queries[index]).build()


def _check_device(device: str, where: str) -> None:
    try:
        torch.empty(0, device=device)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QueryError(where, f"device {device!r} is not available here ({first}); use 'cpu'") from None


@dataclass
class BuiltQuery:
    """One query, ready to run: the arguments of :func:`influence.internal_influence`."""

    spec: QuerySpec
    slice: Slice
    qoi: Any  # a QoI, or a list of them
    doi: Any
    inputs: Points | None  # a tensor, or a dict/tuple of tensors (token ids and masks)
    rows: Tensor  # the data rows the anchors come from, in order
    data: Data
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def qois(self) -> list[QuantityOfInterest]:
        return self.qoi if isinstance(self.qoi, list) else [self.qoi]

    def run(self, *, progress: bool = False) -> list[InfluenceResult]:
        """Run the query; one result per QoI. Library errors that name an argument are
        :class:`QueryError` at the matching field; anything else propagates."""
        try:
            result = internal_influence(self.slice, self.qoi, self.doi, self.inputs, progress=progress, **self.options)
        except (ValueError, TypeError) as e:
            arg = str(e).partition(":")[0]
            fields = {"qoi": "qoi", "inputs": "inputs", "device": "device", "dtype": "dtype", "batch_size": "batch_size", "seed": "seed", "doi": "doi", "checkpoint": "checkpoint"}
            if arg in fields:
                raise QueryError(_join(self.spec.path, fields[arg]), str(e).partition(":")[2].strip()) from None
            raise
        return result if isinstance(result, list) else [result]


class _QueryBuilder(_Builder):
    """Builds one query against a :class:`Session`."""

    def __init__(self, session: Session, spec: QuerySpec) -> None:
        self.session, self.spec, self.data = session, spec, session.data
        self.model = session.model
        self.rows = torch.arange(self.data.rows)
        self.slice: Slice | None = None

    # _Builder interface -------------------------------------------------------------------
    def imported(self, spec: str, path: str) -> Any:
        return _import(spec, path, self.session.file.folder)

    def labels(self, path: str) -> Tensor:
        """The data's labels, or a QueryError at ``path`` when it has none."""
        if self.data.y is None:
            name = self.session.file.data["labels"]
            raise QueryError(path, f"needs labels, but the data has no array {name!r}; name the labels array with data.labels")
        return self.data.y

    def population_data(self, path: str, label: int | None) -> Any:
        data = self.data
        if isinstance(data.x, tuple):
            raise QueryError(
                "data.inputs",
                f"a {self.spec.doi['kind']} DoI takes its points as one array or a mapping of the model's argument names to arrays; "
                "write inputs as a mapping, e.g. {input_ids: ids, attention_mask: mask}",
            )
        if label is not None:
            self.labels(_join(path, "label"))
            assert data.y is not None
            if not bool((data.y == label).any()):
                present = sorted(set(data.y.tolist()))
                raise QueryError(_join(path, "label"), f"class {label} is not in the data (labels present: {present[:20]})")
            return (data.x, data.y)
        return data.x if data.y is None else (data.x, data.y)

    def target(self, spec: Any, path: str) -> Any:
        if not isinstance(spec, str):
            return spec
        t = self.data.array(spec, path)
        if t.ndim == 2 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 1 or t.numel() == 0 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or bool((t < 0).any()):
            raise QueryError(path, f"array {spec!r} must hold the continuation's token ids, 1-D ints >= 0 (got {tuple(t.shape)} {t.dtype})")
        return t.tolist()

    def baseline(self, spec: Any, path: str, space: str) -> Any:
        assert self.slice is not None
        in_slice = space == "slice" and not self.slice.is_input
        if isinstance(spec, dict) and "token" in spec:
            return self._checked(self._token_baseline(spec, path, in_slice), path, in_slice)
        if isinstance(spec, dict) and "activation_of" in spec and self._token_inputs():
            return self._checked(self._ids_activation(spec["activation_of"], _join(path, "activation_of")), path, in_slice)
        value = self._baseline_value(spec, path, in_slice)
        if isinstance(value, Tensor) and value.ndim == self._anchor(in_slice).ndim and value.shape[0] == self.data.rows and value.shape[0] != 1:
            value = value[self.rows]  # one row per data point: keep the anchors' rows, in order
        return self._checked(value, path, in_slice)

    # ------------------------------------------------------------------------------------
    def _anchor(self, in_slice: bool) -> Tensor:
        assert self.slice is not None
        anchor_x = self.session.as_model_input(points_rows(self.data.x, self.rows[:1]))
        with torch.no_grad():
            return self.slice.h(anchor_x) if in_slice else anchor_x

    def _checked(self, value: Any, path: str, in_slice: bool) -> Any:
        """``value`` after trying it as the baseline of the last anchor."""
        anchor = self._anchor(in_slice)
        ids = torch.tensor([self.rows.shape[0] - 1])
        check = value
        if callable(value) and not isinstance(value, Tensor):
            check = _safe_callable(value, path)
        with _at(path):
            resolve_baseline(check, anchor, ids, "LineDoI", "slice" if in_slice else "input")
        return value

    def _token_inputs(self) -> bool:
        """Inputs that are not one tensor of floats (token ids, or a mapping/list)."""
        return self.data.integer or self.data.structured

    def _input_dtype(self) -> torch.dtype:
        x = self.data.x
        return x.dtype if isinstance(x, Tensor) and x.is_floating_point() else torch.get_default_dtype()

    def _ids_or_fail(self, where: str) -> Tensor:
        ids = self.data.ids
        if ids is None:
            raise QueryError(
                where,
                f"needs token ids: 2-D integer inputs (N, L), a mapping's input_ids or the first array of a list (the inputs are {points_describe(self.data.x)})",
            )
        return ids

    def _slice_baseline(self, points: Points, where: str) -> Tensor:
        """``Slice.baseline`` of baseline inputs, one row per anchor, a batch at a time."""
        assert self.slice is not None
        batch = self.spec.options.get("batch_size")
        batch = 64 if not isinstance(batch, int) else batch
        n = points_count(points)
        parts = []
        with _at(where, broad=True):
            for i in range(0, n, batch):
                parts.append(self.slice.baseline(self.session.as_model_input(points_rows(points, slice(i, i + batch)))))
            return torch.cat(parts)

    def _token_baseline(self, spec: dict[str, Any], path: str, in_slice: bool) -> Tensor:
        """Every anchor's slice-space baseline: its token ids with each replaced by
        ``token``, except padding and the ``keep`` ids (:func:`influence.text.baseline_ids`)."""
        from ..workflows.text import baseline_ids

        if not in_slice:
            raise QueryError(path, "{token: ...} is a baseline at the word embeddings; it needs space: slice and a slice at the embedding layer")
        self._ids_or_fail(_join(path, "token"))
        with _at(_join(path, "token")):
            points = baseline_ids(points_rows(self.data.x, self.rows), spec["token"], spec["keep"])
        return self._slice_baseline(points, _join(path, "token"))

    def _ids_activation(self, inner: Any, where: str) -> Tensor:
        """``{activation_of: {array: IDS}}`` for token inputs: the anchors with their token
        ids replaced by the array's ``(L,)``, ``(1, L)`` or one row per data point."""
        ids = self._ids_or_fail(where)
        if not isinstance(inner, dict) or ("array" not in inner and "file" not in inner):
            raise QueryError(
                where, "with token ids as inputs, activation_of takes baseline token ids, {array: NAME} or {file: PATH} of ints (L,) or (N, L); "
                "or write {token: ID, keep: [IDS]}",
            )
        kind = "array" if "array" in inner else "file"
        value = self.data.array(inner["array"], _join(where, "array")) if kind == "array" else _array_file(inner, where)
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise QueryError(_join(where, kind), f"baseline token ids must be integers (got {value.dtype})")
        length = ids.shape[1]
        if value.ndim == 1:
            value = value[None]
        if value.ndim != 2 or value.shape[1] != length or value.shape[0] not in (1, self.data.rows):
            raise QueryError(_join(where, kind), f"baseline token ids of shape {tuple(value.shape)} do not fit ids of length {length}: give ({length},) or ({self.data.rows}, {length})")
        n = self.rows.shape[0]
        value = value[self.rows] if value.shape[0] == self.data.rows and self.data.rows != 1 else value.expand(n, length)
        points = points_rows(self.data.x, self.rows)
        if isinstance(points, Mapping):
            points = {**points, "input_ids": value.to(ids.dtype)}
        elif isinstance(points, tuple):
            points = (value.to(ids.dtype), *points[1:])
        else:
            points = value.to(ids.dtype)
        return self._slice_baseline(points, _join(where, kind))

    def _baseline_value(self, spec: Any, path: str, in_slice: bool) -> Any:
        if isinstance(spec, float):
            return spec
        kind = next(iter(k for k in spec if k != "key"))
        where = _join(path, kind)
        dtype = self._input_dtype()
        if kind == "mean":
            if self.data.structured:
                raise QueryError(where, "the inputs are a mapping or list of arrays, which have no mean point; give a number, an array, or at an embedding slice {token: ID}")
            x = self.data.x if spec["mean"] == "data" else self.data.array(spec["mean"], where)
            assert isinstance(x, Tensor)
            return x.to(dtype).mean(0, keepdim=True)
        if kind == "array":
            return self.data.array(spec["array"], where).to(dtype)
        if kind == "file":
            return _array_file(spec, path).to(dtype)
        if kind == "callable":
            return self.imported(spec["callable"], where)
        inner = self._baseline_value(spec["activation_of"], where, False)
        assert self.slice is not None
        x = self.data.x
        assert isinstance(x, Tensor)
        point = tuple(x.shape[1:])
        if isinstance(inner, float):
            inner = torch.full((1, *point), inner, dtype=x.dtype)
        elif callable(inner) and not isinstance(inner, Tensor):
            raise QueryError(where, "a callable baseline cannot be wrapped in activation_of; return the activation from the callable itself")
        elif inner.ndim == len(point) and tuple(inner.shape) == point:
            inner = inner[None]
        if inner.ndim != len(point) + 1 or tuple(inner.shape[1:]) != point:
            raise QueryError(where, f"an input baseline of shape {tuple(inner.shape)} does not fit inputs of shape {point}")
        if inner.shape[0] == self.data.rows and inner.shape[0] != 1:
            inner = inner[self.rows]
        with torch.no_grad(), _at(where):
            return self.slice.h(self.session.as_model_input(inner))

    def _select_inputs(self) -> Tensor:
        spec, data, path = self.spec.inputs or {}, self.data, _join(self.spec.path, "inputs")
        rows = torch.arange(data.rows)
        if spec.get("label") is not None:
            rows = torch.nonzero(self.labels(_join(path, "label")) == spec["label"]).flatten()
            if rows.numel() == 0:
                present = sorted(set(data.y.tolist()))
                raise QueryError(_join(path, "label"), f"class {spec['label']} is not in the data (labels present: {present[:20]})")
        if spec.get("indices") is not None:
            for i, j in enumerate(spec["indices"]):
                if j >= data.rows:
                    raise QueryError(_join(_join(path, "indices"), i), f"index {j} is out of range: the data has {data.rows} points")
            rows = torch.tensor(spec["indices"], dtype=torch.long)
        if spec.get("limit") is not None:
            rows = rows[: spec["limit"]]
        return rows

    def _embedding_name(self) -> str:
        name = next((n for n, m in self.model.named_modules() if isinstance(m, nn.Embedding)), None)
        return name or "<the layer that embeds the tokens>"

    def _check_token_query(self) -> None:
        """Token ids and mappings of inputs have no input gradient and no path between
        two of them: refuse the input slice and input-space lines and noise, naming the
        field and the embedding slice to use."""
        spec, data = self.spec, self.data
        if not self._token_inputs():
            return
        path = spec.path
        what = "token ids (integer inputs)" if data.integer else "a mapping or list of inputs"
        if spec.slice["layer"] is None:
            raise QueryError(
                _join(path, "slice"),
                f"the inputs are {what}, which have no gradient at the input; explain them at their embedding: slice: {self._embedding_name()} "
                "(with doi point, or line/noise with space: slice)",
            )
        if data.structured and spec.slice["realisation"] not in ("auto", "hook"):
            raise QueryError(
                _join(path, "slice.realisation"), "a mapping or list of inputs is given to the model as model(**inputs) / model(*inputs), which only realisation: hook does (or auto)"
            )
        each, where = (spec.doi, _join(path, "doi")) if spec.pointwise else (spec.doi["each"], _join(path, "doi.each"))
        if each["kind"] in ("line", "noise") and each["space"] == "input":
            fix = " and baseline: {token: 0} (the pad id at every position but padding)" if each["kind"] == "line" else ""
            raise QueryError(
                _join(where, "space"),
                f"a {each['kind']} in input space would draw points between {what}, which have no path between them; "
                f"draw them at the embedding: space: slice with slice: {self._embedding_name()}{fix}",
            )
        out = _join(path, "output")
        if spec.output["essence"] is not None:
            raise QueryError(_join(out, "essence"), f"needs inputs as one tensor of floats; the inputs here are {what}")
        plots = spec.output["plots"]
        if isinstance(plots, list) and "neuron_grid" in plots:
            raise QueryError(_join(out, f"plots[{plots.index('neuron_grid')}]"), f"neuron_grid draws images; the inputs here are {what} (use tokens)")

    def build(self) -> BuiltQuery:
        spec, session = self.spec, self.session
        path = spec.path
        options = dict(spec.options)
        if session.device is not None:
            options["device"] = session.device
        if options["device"] is not None:
            _check_device(options["device"], _join(path, "device"))
        options["dtype"] = _dtype(options["dtype"])
        options["autocast"] = _dtype(options["autocast"])
        # the slice
        layer = spec.slice["layer"]
        if layer is not None and session.is_script:
            raise QueryError(
                _join(path, "slice"),
                "a TorchScript model can be explained at its input only (slice: null): hooks cannot reach inside it; "
                "load the model with factory: to cut at a layer",
            )
        self._check_token_query()
        realisation = spec.slice["realisation"]
        if realisation == "auto" and self.data.structured:
            realisation = "hook"  # model(**inputs) runs through hooks only
        with _at(_join(path, "slice.layer") if layer is not None else _join(path, "slice")):
            cut = Cut(layer, spec.slice["at"]) if layer is not None else None
            self.slice = Slice(self.model, cut, realisation=realisation)
        # which points
        kind = spec.doi["kind"]
        if spec.pointwise:
            self.rows = self._select_inputs()
        elif kind == "class":
            self.rows = torch.nonzero(self.labels(_join(path, "doi.label")) == spec.doi["label"]).flatten()
        doi_path = _join(path, "doi")
        with _at(doi_path):
            doi = DOI_KINDS[kind].build(spec.doi, doi_path, self)
        inputs = points_rows(self.data.x, self.rows) if spec.pointwise else None
        # the QoIs, tried on one point
        qoi_path = _join(path, "qoi")
        specs = spec.qoi if isinstance(spec.qoi, list) else [spec.qoi]
        qois: list[QuantityOfInterest] = []
        several = isinstance(spec.qoi, list)
        for i, q in enumerate(specs):
            where = _join(qoi_path, i) if isinstance(spec.qoi, list) else qoi_path
            with _at(where):
                built = _build_qoi(q, where, self)
            for one in built if isinstance(built, list) else [built]:
                self._try_qoi(one, q, where)
                qois.append(one)
            several = several or isinstance(built, list)
        qoi: Any = qois if several else qois[0]
        if spec.output["top"]["anchor"] != "mean" and inputs is not None and spec.output["top"]["anchor"] >= points_count(inputs):
            raise QueryError(_join(path, "output.top.anchor"), f"is {spec.output['top']['anchor']} but the query explains {points_count(inputs)} points")
        return BuiltQuery(spec, self.slice, qoi, doi, inputs, self.rows, self.data, options)

    def _try_qoi(self, qoi: QuantityOfInterest, spec: dict[str, Any], path: str) -> None:
        """Evaluate the QoI on one forward pass through the slice for one point, so that a
        class out of range, a wrong neuron index, an output selector that selects nothing
        or a neuron before the cut is reported now, against the field that says it."""
        layers = list(qoi.layers)
        if layers and self.session.is_script:
            raise QueryError(path, "a neuron QoI records a layer with hooks, which TorchScript models do not support; load the model with factory:")
        for name in layers:
            with _at(_neuron_path(spec, name, path)):
                find_module(self.model, name, what="neuron")
        assert self.slice is not None
        x = self.session.as_model_input(points_rows(self.data.x, self.rows[:1]))
        recorder = LayerRecorder(layers)
        with recorder.attached(self.model) as store, frozen(self.slice.modules()), torch.enable_grad(), _at(path):
            z, out = self.slice.forward_cut(x)
            recorder.check()
            cut = self.slice.cut
            if cut is not None and cut.at == "output" and cut.layer in layers:
                recorder.outputs[cut.layer] = z  # as the engine does: the cut's own units
            value = qoi(out, QoIContext(store, anchor_output=out))
        if not value.requires_grad:
            raise QueryError(
                path,
                f"{qoi!r} does not depend on the activations at the cut ({self.slice.layer or 'the input'}); "
                "a neuron QoI must name a layer after the cut",
            )


def _neuron_path(spec: dict[str, Any], layer: str, path: str) -> str:
    if spec["kind"] == "neuron":
        return _join(path, "layer")
    if spec["kind"] == "linear":
        for i, term in enumerate(spec["terms"]):
            where = _join(_join(_join(path, "terms"), i), "qoi")
            if any(s["kind"] == "neuron" and s["layer"] == layer for s in _walk_qois(term["qoi"])):
                return _neuron_path(term["qoi"], layer, where)
    return path


def _safe_callable(fn: Callable[[Tensor], Tensor], path: str) -> Callable[[Tensor], Tensor]:
    def call(anchors: Tensor) -> Tensor:
        try:
            return fn(anchors)
        except Exception as e:
            raise QueryError(path, f"the baseline callable failed on the inputs: {type(e).__name__}: {e}") from None

    return call


# --- summaries of results: top-k and regions ------------------------------------------------------


def mean_over_anchors(result: InfluenceResult) -> InfluenceResult:
    """A pointwise result's mean over its anchors, as a pooled result; the standard error
    of the mean is ``sqrt(Σ stderr²) / N`` (independent Monte Carlo errors)."""
    n = result.values.shape[0]
    channel = None if result.channel_stderr is None else result.channel_stderr.pow(2).sum(0).sqrt() / n
    return InfluenceResult(
        values=result.values.mean(0),
        stderr=result.stderr.pow(2).sum(0).sqrt() / n,
        samples=result.samples,
        anchors=result.anchors,
        pooled=True,
        query=result.query,
        channel_stderr=channel,
    )


def top_table(result: InfluenceResult, top: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranked rows of ``output.top`` as ``{rank, index, value, stderr}``."""
    anchor = top["anchor"]
    if not result.pooled and anchor == "mean" and result.values.shape[0] > 1:
        ranked = mean_over_anchors(result).top(top["k"], by=top["by"], agg=top["agg"], absolute=top["absolute"])
    else:
        which = None if result.pooled else (0 if anchor == "mean" else anchor)
        ranked = result.top(top["k"], by=top["by"], agg=top["agg"], absolute=top["absolute"], anchor=which)
    return [
        {"rank": i, "index": list(r.index) if isinstance(r.index, tuple) else r.index, "value": r.value, "stderr": r.stderr}
        for i, r in enumerate(ranked, 1)
    ]


def region_table(built: BuiltQuery, result: InfluenceResult, regions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per region: the sum of influence in it and its share of the total |influence|
    (per point, then averaged over the points for a pointwise result)."""
    values = result.values if not result.pooled else result.values[None]
    unit = tuple(values.shape[1:])
    path = _join(built.spec.path, "output.regions")
    rows = []
    total = values.abs().flatten(1).sum(1)
    for name, region in regions.items():
        where = _join(path, name)
        if len(unit) < 2:
            raise QueryError(where, f"regions need units with at least two dims (H, W); the unit shape is {unit}")
        if region["box"] is not None:
            top, bottom, left, right = region["box"]
            h, w = unit[-2:]
            if bottom > h or right > w:
                raise QueryError(_join(where, "box"), f"{region['box']} does not fit units of spatial shape ({h}, {w})")
            mask = torch.zeros(unit[-2:], dtype=torch.bool)
            mask[top:bottom, left:right] = True
            mask = mask.expand(values.shape)
        else:
            mask = built.data.array(region["mask"], _join(where, "mask"))
            if mask.dtype != torch.bool:
                raise QueryError(_join(where, "mask"), f"array {region['mask']!r} must be bool (got {mask.dtype})")
            if not result.pooled and mask.ndim >= 1 and mask.shape[0] == built.data.rows and mask.ndim in (3, len(unit) + 1):
                mask = mask[built.rows]
                mask = mask if mask.ndim == len(unit) + 1 else mask.view(mask.shape[0], *([1] * (len(unit) - 2)), *mask.shape[1:])
            try:
                mask = torch.broadcast_to(mask, values.shape)
            except RuntimeError:
                per_point = " one per point," if not result.pooled else ""
                raise QueryError(
                    _join(where, "mask"), f"array {region['mask']!r} of shape {tuple(mask.shape)} does not fit units of shape {unit}; give (H, W),{per_point} or the unit shape"
                ) from None
        if region["invert"]:
            mask = ~mask
        inside = torch.where(mask, values, torch.zeros((), dtype=values.dtype))
        sums = inside.flatten(1).sum(1)
        share = inside.abs().flatten(1).sum(1) / total.clamp_min(torch.finfo(values.dtype).tiny)
        rows.append({"region": name, "sum": float(sums.mean()), "share": float(share.mean()), "units": int(mask[0].sum())})
    return rows


def is_token_result(built: BuiltQuery, result: InfluenceResult) -> bool:
    """A pointwise result at a layer with one vector per token of the inputs' token ids
    (units ``(L, D)``, e.g. the word embeddings): shown token by token."""
    ids = built.data.ids
    unit = result.unit_shape
    return not result.pooled and not built.slice.is_input and ids is not None and len(unit) == 2 and unit[0] == ids.shape[1]


def token_table(built: BuiltQuery, result: InfluenceResult) -> list[dict[str, Any]] | None:
    """Per explained sentence of a token result (see :func:`is_token_result`): its data
    row, and the token strings and attributions (:meth:`InfluenceResult.token_attributions`)
    of its real tokens, padding (attention mask 0) dropped; ``None`` for other results."""
    if not is_token_result(built, result):
        return None
    values = result.token_attributions()
    mask = built.data.mask
    out = []
    for i, row in enumerate(built.rows.tolist()):
        words = built.data.token_strings(row)
        keep = [True] * len(words) if mask is None else [bool(k) for k in mask[row].tolist()]
        out.append(
            {
                "row": row,
                "positions": [j for j, k in enumerate(keep) if k],
                "tokens": [w for w, k in zip(words, keep) if k],
                "values": [float(v) for v, k in zip(values[i].tolist(), keep) if k],
            }
        )
    return out
