"""The query file's sections (model, data, defaults, queries and their outputs), the
validated file (:class:`QueryFile`, :class:`QuerySpec`) and :func:`parse_query` /
:func:`load_query_file`, which check a whole file without importing or loading anything.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import yaml

from ..workflows import RANKINGS
from .checks import (
    IDENTIFIER_KEYS, INT_LIMIT, REQUIRED, AnyMapping, Bool, Choice, Context, Custom, FilePath, Float, ImportPath, Int, Key, Maybe, QueryError, Schema, Str, did_you_mean, join_path, json_given, json_list, json_one_or_list, json_ref, mapping_check, show_value,
)  # fmt: skip
from .kinds import DOI_KINDS, SLICE_SCHEMA, _parse_qois, _parse_slice, _token_id, parse_doi, slice_json_schema

# --- sections ---------------------------------------------------------------------------------

if TYPE_CHECKING:
    from .running import Session


DTYPES = ("float16", "bfloat16", "float32", "float64")


def _parse_device(value: Any, path: str, ctx: Context) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError(path, f"must be a device name such as 'cpu' or 'cuda' (got {show_value(value)})")
    try:
        torch.device(value)
    except Exception:
        raise QueryError(path, f"must be a device name such as 'cpu', 'cuda' or 'cuda:1' (got {value!r})") from None
    return value


OPTION_KEYS = (
    Key(
        "batch_size", Custom("an int >= 1 or 'auto'", lambda v, p, c: _parse_batch_size(v, p, c), schema=lambda: {"anyOf": [Int(1).json_schema(), {"const": "auto"}]}), 64,
        "sample rows per forward/backward pass; 'auto': 64 on CPU, the largest that fits on CUDA",
    ),
    Key("seed", Maybe(Int(0)), 0, "seed of the random draws (null: a fresh one, recorded in the result)"),
    Key("multiply_activation", Bool(), False, "multiply by h(x) − h(baseline): integrated gradients, gradient × input"),
    Key("dtype", Maybe(Choice(DTYPES)), None, "compute precision (null: the model's)"),
    Key("device", Maybe(Custom("a device name", _parse_device, schema=Str().json_schema())), None, "where to compute (null: the model's); --device overrides"),
    Key("channels_last", Maybe(Bool()), None, "4-D batches in channels-last layout (null: on CPU for conv models, with fallback)"),
    Key("affine_prefix", Bool(), True, "lines: run the affine layers after the line's space once per point, not per sample (exact)"),
    Key("nonfinite", Choice(("raise", "skip")), "raise", "NaN/inf QoI values or gradients: raise naming the point, or skip the point"),
    Key("tf32", Maybe(Bool()), None, "CUDA: let float32 convolutions and matmuls use TF32 (null: PyTorch's settings)"),
    Key("autocast", Maybe(Choice(("bfloat16",))), None, "fast mode: per-sample passes under bfloat16 autocast, the cut and sums in full precision"),
    Key("compile", Bool(), False, "run g through torch.compile (split slices only)"),
)


def _parse_checkpoint(value: Any, path: str, ctx: Context) -> Path:
    """A checkpoint file (it need not exist yet; its folder must); relative to the query
    file's folder."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise QueryError(path, f"must be a file path (got {show_value(value)})")
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
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value < INT_LIMIT:
        return value
    raise QueryError(path, f"must be {expected} (got {show_value(value)})")


def _parse_batch_size(value: Any, path: str, ctx: Context) -> Any:
    return _word_or_int(value, path, "auto", 1, "an int >= 1 or 'auto'")

MODEL_SCHEMA = Schema(
    (
        Key("factory", Maybe(ImportPath()), None, "'package.module:callable' returning an nn.Module"),
        Key("kwargs", AnyMapping(), {}, "keyword arguments of the factory"),
        Key("weights", Maybe(FilePath()), None, "a state_dict file, loaded with weights_only=True"),
        Key("torchscript", Maybe(FilePath()), None, "a TorchScript file (instead of factory)"),
    ),
    rules=(
        {"oneOf": [json_given("factory"), json_given("torchscript")]},
        {"if": json_given("torchscript"), "then": {"properties": {"weights": {"type": "null"}, "kwargs": {"maxProperties": 0}}}},
    ),
)

DATA_SCHEMA = Schema(
    (
        Key("path", Maybe(FilePath((".npz", ".pt", ".pth"))), None, "an .npz or .pt file of named arrays"),
        Key("factory", Maybe(ImportPath()), None, "'package.module:callable' returning a dict of named arrays (instead of path)"),
        Key("kwargs", AnyMapping(), {}, "keyword arguments of the factory"),
        Key(
            "inputs",
            Custom(
                "an array name, a list of them, or a mapping of argument names to them", lambda v, p, c: _parse_input_names(v, p, c),
                schema=lambda: {"anyOf": [
                    Str().json_schema(), json_list(Str().json_schema()),
                    {"type": "object", "minProperties": 1, "propertyNames": IDENTIFIER_KEYS, "additionalProperties": Str().json_schema()},
                ]},
            ),
            "x",
            "the array of inputs (N, ...); a list [A, B] calls model(A, B), a mapping {input_ids: A, attention_mask: B} calls model(input_ids=A, attention_mask=B) (integer arrays stay integers: token ids, masks)",
        ),
        Key("labels", Maybe(Str("an array name")), "y", "the array of int labels (N,); null: none"),
        Key("classes", Maybe(Custom("a list of ints", lambda v, p, c: _int_list(v, p, c, minimum=0), schema=lambda: _int_list_json(0))), None, "keep only points with these labels"),
        Key(
            "tokens",
            Maybe(
                Custom(
                    "an array name or {vocab: FILE}", lambda v, p, c: _parse_tokens(v, p, c),
                    schema=lambda: {"anyOf": [
                        Str().json_schema(),
                        {"type": "object", "properties": {"vocab": FilePath().json_schema()}, "required": ["vocab"], "additionalProperties": False},
                    ]},
                )
            ),
            None,
            "token strings to show: an array of the data (a list of N rows of L strings), or {vocab: FILE} (one token per line, id = line number; or a .json mapping of tokens to ids); null: the ids",
        ),
    ),
    rules=(
        {"oneOf": [json_given("path"), json_given("factory")]},
        {"if": json_given("path"), "then": {"properties": {"kwargs": {"maxProperties": 0}}}},
        {"if": json_given("classes"), "then": {"properties": {"labels": {"type": "string"}}}},
    ),
)


def _parse_input_names(value: Any, path: str, ctx: Context) -> Any:
    """One array name, a list of them (``model(*inputs)``) or a mapping of the model's
    argument names to them (``model(**inputs)``)."""
    name = Str("an array name")
    if isinstance(value, str):
        return name(value, path, ctx)
    if isinstance(value, list):
        if not value:
            raise QueryError(path, "the list is empty; name the arrays passed to the model, e.g. [input_ids, attention_mask]")
        return [name(v, join_path(path, i), ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not value:
            raise QueryError(path, "the mapping is empty; map the model's arguments to arrays, e.g. {input_ids: ids, attention_mask: mask}")
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise QueryError(path, f"keys must be the model's argument names, identifiers such as input_ids (got {show_value(key)})")
            out[key] = name(v, join_path(path, key), ctx)
        return out
    raise QueryError(
        path, f"must be an array name, a list of array names (model(*inputs)) or a mapping of argument names to array names "
        f"(model(**inputs)), e.g. {{input_ids: ids, attention_mask: mask}} (got {show_value(value)})",
    )


def _parse_tokens(value: Any, path: str, ctx: Context) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and list(value) == ["vocab"]:
        return {"vocab": FilePath()(value["vocab"], join_path(path, "vocab"), ctx)}
    if isinstance(value, dict) and value:
        key = next((k for k in value if k != "vocab"), None)
        if key is not None:
            hint = did_you_mean(key, ["vocab"])
            raise QueryError(join_path(path, str(key)), f"unknown key; {hint}tokens is an array name or {{vocab: FILE}}")
    raise QueryError(path, f"must be the name of an array of token strings (N rows of L strings) or {{vocab: FILE}} (one token per line) (got {show_value(value)})")


def _int_list(value: Any, path: str, ctx: Context, minimum: int = 0) -> list[int]:
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a non-empty list of ints >= {minimum} (got {show_value(value)})")
    return [Int(minimum)(v, join_path(path, i), ctx) for i, v in enumerate(value)]


def _int_list_json(minimum: int) -> dict[str, Any]:
    return json_list(Int(minimum).json_schema())


INPUTS_SCHEMA = Schema(
    (
        Key("label", Maybe(Int(0)), None, "explain the points of this class"),
        Key("indices", Maybe(Custom("a list of ints", _int_list, schema=lambda: _int_list_json(0))), None, "explain these rows of the data (instead of label)"),
        Key("limit", Maybe(Int(1)), None, "at most this many points (the first ones)"),
    ),
    rules=({"not": json_given("label", "indices")},),
)

def _parse_anchor(value: Any, path: str, ctx: Context) -> Any:
    return _word_or_int(value, path, "mean", 0, "'mean' or an int >= 0 (a point's position among the inputs)")


TOP_SCHEMA = Schema(
    (
        Key("k", Int(1), 10, "how many entries"),
        Key("by", Choice(("unit", "channel")), "unit", "rank single units, or channels"),
        Key("agg", Choice(("sum", "max")), "sum", "how a channel aggregates its units"),
        Key("absolute", Bool(), False, "rank by |influence|"),
        Key(
            "anchor", Custom("'mean' or an int >= 0", _parse_anchor, schema=lambda: {"anyOf": [{"const": "mean"}, Int(0).json_schema()]}), "mean",
            "pointwise DoIs: which point's explanation ranks ('mean': their mean)",
        ),
    )
)

REGION_SCHEMA = Schema(
    (
        Key(
            "box", Maybe(Custom("{top, left, height, width}", lambda v, p, c: _box(v, p, c), schema=lambda: _box_json())), None,
            "a rectangle of pixels on the last two unit dims: {top, left, height, width}",
        ),
        Key("mask", Maybe(Str("an array name")), None, "a bool array of the data section: (H, W), unit-shaped, or one per point"),
        Key("invert", Bool(), False, "use the complement"),
    )
)


BOX_SCHEMA = Schema(
    (
        Key("top", Int(0), REQUIRED, "the first row"),
        Key("left", Int(0), REQUIRED, "the first column"),
        Key("height", Int(1), REQUIRED, "rows: top ≤ i < top + height"),
        Key("width", Int(1), REQUIRED, "columns: left ≤ j < left + width"),
    )
)


def _box(value: Any, path: str, ctx: Context) -> dict[str, int]:
    """``{top, left, height, width}``, the library's one rectangle convention (the
    mapping, so that the query as run reads back the same). The former list ``[top, bottom, left, right]`` is read
    with a warning that gives the new spelling."""
    if isinstance(value, list) and len(value) == 4:
        top, bottom, left, right = (Int(0)(v, join_path(path, i), ctx) for i, v in enumerate(value))
        if bottom <= top or right <= left:
            raise QueryError(path, f"must have top < bottom and left < right (half-open pixel ranges) (got {value})")
        new = f"{{top: {top}, left: {left}, height: {bottom - top}, width: {right - left}}}"
        warnings.warn(f"{path}: the list [top, bottom, left, right] is deprecated; write {new} (the library's one rectangle convention)", FutureWarning, stacklevel=2)
        return {"top": top, "left": left, "height": bottom - top, "width": right - left}
    if not isinstance(value, dict):
        raise QueryError(path, f"must be {{top, left, height, width}} in pixels, e.g. {{top: 0, left: 0, height: 3, width: 3}} (got {show_value(value)})")
    box = BOX_SCHEMA.parse(value, path, ctx, what="a rectangle")
    return {key: box[key] for key in ("top", "left", "height", "width")}


def _parse_regions(value: Any, path: str, ctx: Context) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise QueryError(path, f"must be a mapping of region names to {{box: ...}} or {{mask: ...}} (got {show_value(value)})")
    out = {}
    for name, spec in value.items():
        where = join_path(path, str(name))
        if not isinstance(name, str) or not name:
            raise QueryError(path, f"region names must be strings (got {show_value(name)})")
        region = REGION_SCHEMA.parse(spec, where, ctx, what="a region")
        if (region["box"] is None) == (region["mask"] is None):
            raise QueryError(where, "give exactly one of box: {top, left, height, width} or mask: ARRAY")
        out[name] = region
    return out


PLOT_KINDS = ("heatmaps", "neuron_grid", "contrast", "audit_bars", "curves", "essence", "tokens")
"""The pictures ``output.plots`` can ask for (see :mod:`influence.queries._outputs`)."""
_PLOT_NEEDS = {"audit_bars": "audit", "curves": "curves", "essence": "essence"}  # the output key a picture draws


def _parse_plots(value: Any, path: str, ctx: Context) -> bool | list[str]:
    if isinstance(value, bool):
        return value
    if not isinstance(value, list):
        raise QueryError(path, f"must be true (every picture that applies), false, or a list of {', '.join(PLOT_KINDS)} (got {show_value(value)})")
    return list(dict.fromkeys(Choice(PLOT_KINDS)(v, join_path(path, i), ctx) for i, v in enumerate(value)))


def _parse_audit_region(value: Any, path: str, ctx: Context) -> dict[str, Any]:
    region = REGION_SCHEMA.parse(value, path, ctx, what="a region")
    if (region["box"] is None) == (region["mask"] is None):
        raise QueryError(path, "give exactly one of box: {top, left, height, width} or mask: ARRAY")
    return region


def _parse_token_ids(value: Any, path: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a token id or a non-empty list of token ids (ints >= 0) (got {show_value(value)})")
    return [_token_id(v, join_path(path, i)) for i, v in enumerate(value)]


def _parse_rankings(value: Any, path: str, ctx: Context) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a non-empty list of {', '.join(RANKINGS)} (got {show_value(value)})")
    return list(dict.fromkeys(Choice(RANKINGS)(v, join_path(path, i), ctx) for i, v in enumerate(value)))


def _parse_curve_baseline(value: Any, path: str, ctx: Context) -> Any:
    if isinstance(value, str) and value in ("mean", "blur"):
        return value
    try:
        return Float()(value, path, ctx)
    except QueryError:
        raise QueryError(path, f"must be a number, 'mean' or 'blur' (got {show_value(value)})") from None


def _box_json() -> dict[str, Any]:
    """What :func:`_box` accepts, as JSON Schema (the former list, deprecated, too)."""
    former = {"type": "array", "minItems": 4, "maxItems": 4, "items": Int(0).json_schema(), "deprecated": True, "description": "the former [top, bottom, left, right]"}
    return {"anyOf": [BOX_SCHEMA.json_schema(), former]}


def _region_json() -> dict[str, Any]:
    """A region of ``output.regions`` or of an audit, as JSON Schema: box or mask, not both."""
    return {**REGION_SCHEMA.json_schema(), "allOf": [{"oneOf": [json_given("box"), json_given("mask")]}]}


AUDIT_SCHEMA = Schema(
    (
        Key(
            "region", Maybe(Custom("a region", _parse_audit_region, schema=lambda: _region_json())), None,
            "the region: {box: {top, left, height, width}} or {mask: ARRAY, invert: false} (input queries)",
        ),
        Key(
            "tokens", Maybe(Custom("a list of token ids", lambda v, p, c: _parse_token_ids(v, p), schema=lambda: json_one_or_list(Int(0).json_schema()))), None,
            "instead of region, for text: the audited token ids (e.g. a suspected cue word), with the query's line at the word embeddings",
        ),
        Key("factor", Float(positive=True), 3.0, "flag a class whose share exceeds factor x its area share"),
        Key("flag_on", Choice(("positive", "absolute")), "positive", "which share the flag compares"),
        Key("classes", Maybe(Custom("a list of ints", _int_list, schema=lambda: _int_list_json(0))), None, "the classes audited (default: every label)"),
    ),
    rules=({"oneOf": [json_given("region"), json_given("tokens")]},),
)

def _parse_audit(value: Any, path: str, ctx: Context) -> dict[str, Any]:
    """The audit's keys; ``tokens`` appears only when given (a region audit reads as before)."""
    out = AUDIT_SCHEMA.parse(value, path, ctx)
    if out["tokens"] is None:
        del out["tokens"]
    return out


ESSENCE_SCHEMA = Schema(
    (
        Key("k", Custom("a list of ints >= 1", lambda v, p, c: _int_list(v, p, c, minimum=1), schema=lambda: _int_list_json(1)), [1, 2, 4, 8], "how many units are kept"),
        Key(
            "rankings", Custom("a list of rankings", _parse_rankings, schema=lambda: json_one_or_list(Choice(RANKINGS).json_schema())), ["contrast"],
            "contrast, influence, gradient_x_activation",
        ),
        Key("ablation", Choice(("mean", "zero")), "mean", "what the other units become"),
        Key("draws", Int(1), 100, "random sets of k units to compare with"),
        Key("by", Maybe(Choice(("unit", "channel"))), None, "keep units or whole channels (default: output.top.by)"),
    )
)

CURVES_SCHEMA = Schema(
    (
        Key("steps", Int(1), 16, "points 0, 1/steps, ..., 1 on each curve"),
        Key(
            "baseline", Custom("a number, 'mean' or 'blur'", _parse_curve_baseline, schema=lambda: {"anyOf": [{"enum": ["mean", "blur"]}, Float().json_schema()]}), 0.0,
            "what removed pixels become",
        ),
        Key("random_orders", Int(1), 4, "random pixel orders averaged for the comparison"),
    )
)

OUTPUT_SCHEMA = Schema(
    (
        Key("top", mapping_check(TOP_SCHEMA, "a top-k table"), TOP_SCHEMA.parse({}, "", Context(Path("."))), "the table printed"),
        Key("save", Bool(), True, "write <out>/<name>.json and <name>.pt"),
        Key(
            "plots", Custom("true, false or a list of pictures", _parse_plots, schema=lambda: {"anyOf": [{"type": "boolean"}, {"type": "array", "items": Choice(PLOT_KINDS).json_schema()}]}),
            False, "PNG pictures (matplotlib: the viz extra)",
        ),
        Key(
            "regions", Custom("a mapping of regions", _parse_regions, schema=lambda: {"type": "object", "propertyNames": {"minLength": 1}, "additionalProperties": _region_json()}),
            {}, "report the sum and |share| of influence per region",
        ),
        Key("audit", Maybe(Custom("an audit", lambda v, p, c: _parse_audit(v, p, c), schema=lambda: AUDIT_SCHEMA.json_schema())), None, "per class, the share of attribution in a region (or on given tokens)"),
        Key("essence", Maybe(mapping_check(ESSENCE_SCHEMA, "an essence check")), None, "keep the top-k units, AUC against random units"),
        Key("curves", Maybe(mapping_check(CURVES_SCHEMA, "curves")), None, "deletion and insertion curves of the attributions"),
        Key("report", Bool(), False, "add the query to <out>/report.html and report.md"),
    ),
    rules=tuple(
        {"if": {"required": ["plots"], "properties": {"plots": {"type": "array", "contains": {"const": plot}}}}, "then": json_given(needs)}
        for plot, needs in _PLOT_NEEDS.items()
    ),
)

_POPULATION = [name for name, kind in DOI_KINDS.items() if not kind.pointwise]
_IS_POPULATION = {"required": ["doi"], "properties": {"doi": {"anyOf": [{"enum": _POPULATION}, {"type": "object", "properties": {"kind": {"enum": _POPULATION}}, "required": ["kind"]}]}}}
_POPULATION_RULE = {
    "if": _IS_POPULATION,
    "then": {"properties": {
        "inputs": {"type": "null"},
        "output": {"properties": {"top": {"properties": {"anchor": {"const": "mean"}}}, "curves": {"type": "null"}, "plots": {"not": {"type": "array", "contains": {"const": "tokens"}}}}},
    }},
    "else": {"properties": {"checkpoint": {"type": "null"}}},
}  # fmt: skip
"""What :func:`_cross_check` asks of class and dataset DoIs (no inputs, anchor, curves or
token pictures) and of pointwise ones (no checkpoint), as JSON Schema."""

QUERY_SCHEMA = Schema(
    (
        Key("name", Maybe(Str("a name of letters, digits, '_', '-' or '.'", r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")), None, "names the output files (default query<i>)"),
        Key(
            "slice", Custom("a layer name or a mapping", _parse_slice, schema=slice_json_schema), {"layer": None, "at": "output", "realisation": "auto"},
            "where to cut; null: the input (input influence)",
        ),
        Key("doi", Custom("a DoI", lambda v, p, c: parse_doi(v, p, c), schema=json_ref("doi")), REQUIRED, "the distribution of interest, e.g. {kind: line, steps: 32}"),
        Key(
            "qoi", Custom("a QoI or a list of QoIs", _parse_qois, schema=lambda: json_one_or_list(json_ref("qoi"))), REQUIRED,
            "the quantity of interest, e.g. {kind: class, label: 3}",
        ),
        Key("inputs", Maybe(mapping_check(INPUTS_SCHEMA, "a selection")), None, "pointwise DoIs: which data points to explain (default: all)"),
        Key("output", mapping_check(OUTPUT_SCHEMA, "an output mapping"), OUTPUT_SCHEMA.parse({}, "", Context(Path("."))), "what to print and save"),
        *(Key(k.name, k.check, None, k.doc) for k in OPTION_KEYS),
        Key(
            "checkpoint", Maybe(Custom("a file path", _parse_checkpoint, schema=Str().json_schema())), None,
            "class and dataset DoIs: a file keeping the query's progress; a rerun resumes from it",
        ),
    ),
    rules=(_POPULATION_RULE,),
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
    imports: tuple[tuple[str, str], ...] = ()
    """``(field, 'module:name')`` for every callable the file names, in file order: what
    :meth:`prepare` and the queries will import and call (``influence validate`` lists them)."""

    def prepare(self, device: str | None = None) -> "Session":
        """Import the factories and load the model and data (see :class:`Session`)."""
        from .running import Session  # the running module builds on this one

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
                raise yaml.constructor.ConstructorError(None, None, f"found an unhashable key {show_value(key)}", key_node.start_mark) from None
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
    ctx = Context(Path(folder))
    if document is None:
        raise QueryError(source, "the query file is empty; it needs sections model, data and queries")
    if not isinstance(document, dict):
        raise QueryError(source, f"a query file must be a mapping with sections model, data and queries (got {show_value(document)})")
    for key in document:
        if not isinstance(key, str) or key not in _TOP_KEYS:
            hint = did_you_mean(key, _TOP_KEYS)
            raise QueryError(join_path("", key if isinstance(key, str) else repr(key)), f"unknown section; {hint}valid sections: {', '.join(_TOP_KEYS)}")
    for section in ("model", "data", "queries"):
        if section not in document:
            raise QueryError(section, "missing section; a query file needs model, data and queries (see README, 'YAML queries')")
    model = MODEL_SCHEMA.parse(document["model"], "model", ctx, what="a model section")
    if (model["factory"] is None) == (model["torchscript"] is None):
        raise QueryError("model", "give exactly one of factory: 'package.module:callable' or torchscript: FILE")
    if model["torchscript"] is not None:
        for key in ("weights", "kwargs"):
            if document["model"].get(key):
                raise QueryError(join_path("model", key), "applies to factory models only; a TorchScript file holds its own weights")
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
        raise QueryError("queries", f"must be a list of queries (got {show_value(raw)})")
    if not raw:
        raise QueryError("queries", "the list is empty; add at least one query with doi and qoi")
    queries = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"queries[{i}]"
        q = QUERY_SCHEMA.parse(item, path, ctx, what="a query")
        name = q["name"] or f"query{i}"
        if name in names:
            raise QueryError(join_path(path, "name"), f"{name!r} is already the name of queries[{names[name]}]; names must be unique")
        names[name] = i
        options = {k.name: defaults[k.name] if q[k.name] is None else q[k.name] for k in OPTION_KEYS}
        if q["checkpoint"] is not None:
            if DOI_KINDS[q["doi"]["kind"]].pointwise:
                raise QueryError(join_path(path, "checkpoint"), f"applies to class and dataset DoIs (pooled queries); a {q['doi']['kind']} DoI is not checkpointed")
            options["checkpoint"] = q["checkpoint"]
        spec = QuerySpec(i, name, q["slice"], q["doi"], q["qoi"], q["inputs"], q["output"], options)
        _cross_check(spec, q, data)
        queries.append(spec)
    return QueryFile(source, ctx.folder, model, data, tuple(queries), tuple(ctx.imports))


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
            join_path(path, "inputs"), f"a {spec.doi['kind']} DoI takes its points from the data section; remove inputs (it applies to point, line and noise)"
        )
    if not spec.pointwise and spec.output["top"]["anchor"] != "mean":
        raise QueryError(join_path(path, "output.top.anchor"), f"applies to pointwise DoIs; a {spec.doi['kind']} DoI gives one pooled explanation")
    inputs = spec.inputs or {}
    if inputs.get("label") is not None and inputs.get("indices") is not None:
        raise QueryError(join_path(path, "inputs"), "give label or indices, not both")
    _cross_check_output(spec, data)
    if not isinstance(data["inputs"], str):  # a mapping or list of inputs: model(**inputs) / model(*inputs)
        what = "a mapping" if isinstance(data["inputs"], dict) else "a list"
        if spec.slice["layer"] is None:
            raise QueryError(
                join_path(path, "slice"),
                f"data.inputs is {what} of arrays (token ids, masks), which has no gradient at the input; explain it at a layer "
                "after the inputs, e.g. the word embeddings (slice: bert.embeddings.word_embeddings, or transformer.wte for GPT-2)",
            )
        if spec.slice["realisation"] not in ("auto", "hook"):
            raise QueryError(join_path(path, "slice.realisation"), f"data.inputs is {what} of arrays, given to the model as model(**inputs) / model(*inputs), which only realisation: hook does (or auto)")
        each, where = (spec.doi, join_path(path, "doi")) if spec.pointwise else (spec.doi["each"], join_path(path, "doi.each"))
        if each["kind"] in ("line", "noise") and each["space"] == "input":
            fix = " and baseline: {token: 0} (the pad id at every position but padding)" if each["kind"] == "line" else ""
            raise QueryError(
                join_path(where, "space"),
                f"data.inputs is {what} of arrays (token ids, masks); a {each['kind']} in input space cannot draw points between them: "
                f"use space: slice at the embedding layer{fix}",
            )
    if data["labels"] is None:
        if spec.doi["kind"] == "class":
            raise QueryError(join_path(path, "doi.label"), "a class DoI needs labels, but data.labels is null")
        if inputs.get("label") is not None:
            raise QueryError(join_path(path, "inputs.label"), "needs labels, but data.labels is null")


def _cross_check_output(spec: QuerySpec, data: dict[str, Any]) -> None:
    """What the pictures and analyses of ``output`` need from the rest of the query."""
    out, path = spec.output, join_path(spec.path, "output")
    at_input = spec.slice["layer"] is None
    audit = out["audit"]
    if audit is not None:
        where = join_path(path, "audit")
        if audit["region"] is None and audit.get("tokens") is None:
            raise QueryError(
                join_path(where, "region"), "missing; give region: {box: {top, left, height, width}} or {mask: ARRAY} (images, slice: null), or tokens: [IDS] (text, at the word embeddings)"
            )
        if audit["region"] is not None and audit.get("tokens") is not None:
            raise QueryError(join_path(where, "tokens"), "give region (images) or tokens (text), not both")
        if audit.get("tokens") is not None:
            if at_input:
                raise QueryError(join_path(where, "tokens"), "audits token attributions at the word embeddings; use it in a query whose slice is the embedding layer")
            each = spec.doi if spec.pointwise else spec.doi["each"]
            base = each.get("baseline")
            if each["kind"] != "line" or each["space"] != "slice" or not isinstance(base, dict) or "token" not in base:
                raise QueryError(
                    join_path(where, "tokens"),
                    "attributes with the query's line at the word embeddings: give the query (or its each) doi "
                    "{kind: line, space: slice, baseline: {token: ID, keep: [IDS]}}",
                )
            if each.get("rule", "gauss-legendre") != "gauss-legendre":
                raise QueryError(join_path(where, "tokens"), f"the token audit integrates with rule gauss-legendre; the query's line uses {each['rule']!r}")
    for key, needs_input in (("audit", True), ("curves", True), ("essence", False)):
        if out[key] is None:
            continue
        where = join_path(path, key)
        if key == "audit" and out[key].get("tokens") is not None:
            needs_input = False
        if needs_input != at_input:
            raise QueryError(where, "attributes to the input; use it in a query with slice: null" if needs_input else "keeps units of a layer; use it in a query with a slice (a layer name)")
        if key != "curves" and data["labels"] is None:
            raise QueryError(where, "needs labels, but data.labels is null")
    if out["curves"] is not None and not spec.pointwise:
        raise QueryError(join_path(path, "curves"), f"needs one attribution per image: a point, line or noise DoI (got {spec.doi['kind']})")
    if out["essence"] is not None and (isinstance(spec.qoi, list) or spec.qoi["kind"] not in ("class", "comparative")):
        raise QueryError(join_path(path, "essence"), "measures how one class or one comparison separates: use qoi kind class or comparative")
    if isinstance(out["plots"], list):
        for i, kind in enumerate(out["plots"]):
            where = join_path(join_path(path, "plots"), i)
            needs = _PLOT_NEEDS.get(kind)
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
