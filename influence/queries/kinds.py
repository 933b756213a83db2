"""The kinds a query may name: DoIs (point, line, noise, class, dataset) and QoIs (class,
comparative, neuron, max_class, linear, callable, next_token, continuation), with their
baselines, selectors and slices. Each kind is a schema and a builder of library objects.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI, PointwiseDoI
from qoi import (
    ClassQoI, ComparativeQoI, ContinuationQoI, FunctionQoI, LinearQoI, MaxClassQoI, NeuronQoI, NextTokenQoI, QuantityOfInterest,
)  # fmt: skip
from slices import Cut

from .checks import (
    INT_LIMIT, REQUIRED, Bool, Choice, Context, Custom, FilePath, Float, ImportPath, Int, Key, Maybe, QueryError, Schema, Str, did_you_mean, join_path, json_given, json_list, json_one_or_list, json_ref, show_value,
)  # fmt: skip

# --- baselines, selectors and slices ------------------------------------------------------


_BASELINE_FORMS = (
    "a number, {mean: data}, {array: NAME}, {file: PATH, key: NAME}, {callable: 'module:function'} "
    "or, in space: slice, {activation_of: <one of the others>} or {token: ID, keep: [IDS]}"
)
_BASELINE_EXTRAS = {"key": "file", "keep": "token"}  # the optional second key of a form
_BASELINE_CHECKS = {
    "mean": Str("'data' or the name of an array of the data section"),
    "array": Str("the name of an array of the data section"),
    "file": FilePath((".pt", ".pth", ".npz", ".npy")),
    "callable": ImportPath(),
}
_FILE_KEY = Maybe(Str("an array name"))


def _baseline_json(inner: bool = False) -> dict[str, Any]:
    """The forms of :func:`_parse_baseline` as JSON Schema."""

    def form(name: str, fragment: dict[str, Any], **extra: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {name: fragment, **extra}, "required": [name], "additionalProperties": False}

    forms = [Float().json_schema(), *(form(k, c.json_schema()) for k, c in _BASELINE_CHECKS.items() if k != "file")]
    forms.append(form("file", _BASELINE_CHECKS["file"].json_schema(), key=_FILE_KEY.json_schema()))
    if not inner:
        forms.append(form("activation_of", _baseline_json(inner=True)))
        forms.append(form("token", Int(0).json_schema(), keep={"type": "array", "items": Int(0).json_schema()}))
    return {"anyOf": forms}


_BASELINE_SPACE_RULE = {
    "if": {"required": ["space"], "properties": {"space": {"const": "slice"}}},
    "then": {"properties": {"baseline": {"not": {"type": "object", "required": ["mean"]}}}},
    "else": {"properties": {"baseline": {"not": {"type": "object", "anyOf": [{"required": ["token"]}, {"required": ["activation_of"]}]}}}},
}
""":func:`_check_baseline_space` as JSON Schema: ``{token}`` and ``{activation_of}`` only in
slice space, ``{mean}`` only in input space."""


def _parse_baseline(value: Any, path: str, ctx: Context, *, inner: bool = False) -> Any:
    """A number, or a one-key mapping naming where the baseline tensor comes from;
    ``{token: ID, keep: [IDS]}`` is the slice-space baseline of token ids (every id
    replaced by ``ID`` except padding and the ``keep`` ids)."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return Float()(value, path, ctx)
        except QueryError:
            pass
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise QueryError(path, f"must be {_BASELINE_FORMS} (got {show_value(value)})")
    forms = ("mean", "array", "file", "callable") if inner else ("mean", "array", "file", "callable", "activation_of", "token")
    if inner and "token" in value:
        raise QueryError(join_path(path, "token"), "{token: ID} is itself a slice-space baseline; write it without activation_of")
    kinds = [k for k in value if k in forms]
    extra = [k for k in value if k not in forms and k not in _BASELINE_EXTRAS]
    if extra:
        key = extra[0]
        hint = did_you_mean(key, forms)
        raise QueryError(join_path(path, str(key)), f"unknown key; {hint}a baseline is {_BASELINE_FORMS}")
    if len(kinds) != 1:
        raise QueryError(path, f"must be {_BASELINE_FORMS} (got {show_value(value)})")
    kind = kinds[0]
    for extra_key, owner in _BASELINE_EXTRAS.items():
        if extra_key in value and kind != owner:
            form = "{file: PATH, key: NAME}" if owner == "file" else "{token: ID, keep: [IDS]}"
            raise QueryError(join_path(path, extra_key), f"applies to {form} only")
    where = join_path(path, kind)
    if kind in ("mean", "array", "callable"):
        return {kind: _BASELINE_CHECKS[kind](value[kind], where, ctx)}
    if kind == "file":
        key = _FILE_KEY(value.get("key"), join_path(path, "key"), ctx)
        return {"file": _BASELINE_CHECKS["file"](value["file"], where, ctx), "key": key}
    if kind == "token":
        token = _TOKEN_ID(value["token"], where, ctx)
        keep = value.get("keep", [])
        if keep != []:
            if not isinstance(keep, list):
                raise QueryError(join_path(path, "keep"), f"must be a list of token ids (ints >= 0) kept as they are, e.g. [CLS] and [SEP] (got {show_value(keep)})")
            keep = [_token_id(v, join_path(join_path(path, "keep"), i)) for i, v in enumerate(keep)]
        return {"token": token, "keep": keep}
    return {"activation_of": _parse_baseline(value["activation_of"], where, ctx, inner=True)}


def _token_id(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < INT_LIMIT:
        raise QueryError(path, f"must be a token id, an int >= 0 (got {show_value(value)})")
    return value


_TOKEN_ID = Custom("a token id, an int >= 0", lambda v, p, c: _token_id(v, p), schema=Int(0).json_schema)


def _parse_selector(value: Any, path: str, ctx: Context) -> Any:
    """Which tensor of a tuple/dict output a QoI reads: an int, a key, or a callable."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Int(0)(value, path, ctx)
    if isinstance(value, dict) and list(value) == ["callable"]:
        return {"callable": ImportPath()(value["callable"], join_path(path, "callable"), ctx)}
    raise QueryError(path, f"must be null, an int index, a str key or {{callable: 'module:function'}} (got {show_value(value)})")


_SELECTOR = Custom(
    "null, an int index, a key, or {callable: 'module:function'}", _parse_selector,
    schema=lambda: {"anyOf": [
        {"type": ["null", "string"]}, Int(0).json_schema(),
        {"type": "object", "properties": {"callable": ImportPath().json_schema()}, "required": ["callable"], "additionalProperties": False},
    ]},
)  # fmt: skip

SLICE_SCHEMA = Schema(
    (
        Key("layer", Maybe(Str("a dotted module name")), REQUIRED, "the module to cut at, a name from `influence layers` (null: the input)"),
        Key("at", Choice(("output", "input")), "output", "cut at the layer's output, or just before it"),
        Key("realisation", Choice(("auto", "sequential", "graph", "hook")), "auto", "how h and g are built"),
    ),
    rules=({"if": {"required": ["layer"], "properties": {"layer": {"type": "null"}}}, "then": {"properties": {"at": {"const": "output"}}}},),
)


def slice_json_schema() -> dict[str, Any]:
    """What :func:`_parse_slice` accepts, as JSON Schema: null, a layer name, a mapping."""
    return {"anyOf": [{"type": "null"}, Str().json_schema(), SLICE_SCHEMA.json_schema()]}


def _parse_slice(value: Any, path: str, ctx: Context) -> dict[str, Any]:
    if value is None:
        return {"layer": None, "at": "output", "realisation": "auto"}
    if isinstance(value, str):
        value = {"layer": value}
    out = SLICE_SCHEMA.parse(value, path, ctx, what="a layer name or a mapping")
    if out["layer"] is None and out["at"] != "output":
        raise QueryError(join_path(path, "at"), "applies to a layer; the input slice (layer: null) has no 'at'")
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
            return self.imported(spec["callable"], join_path(path, "callable"))
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

    def json_schema(self) -> dict[str, Any]:
        """The kind's mapping as JSON Schema: ``kind`` and the kind's keys, with the rule of
        ``tol``; the library's checks of the arguments together are left to validation."""
        out = self.schema.json_schema()
        out["properties"] = {"kind": {"const": self.name, "description": self.doc}, **out["properties"]}
        out["required"] = ["kind", *out.get("required", [])]
        if self.adaptive is not None:
            out["allOf"] = [*out.get("allOf", []), self.adaptive.json_schema()]
        return out


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

    def json_schema(self) -> dict[str, Any]:
        """The rule of :meth:`settle` as JSON Schema: with ``tol``, none of the keys it
        replaces; without it, no cap."""
        rule: dict[str, Any] = {"if": json_given("tol"), "else": {"properties": {self.cap.name: {"type": "null"}}}}
        if self.replaces:
            rule["then"] = {"not": {"anyOf": [{"required": [k]} for k in self.replaces]}}
        return rule

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
                raise QueryError(join_path(path, cap), f"caps the work that tol chooses per point; give tol too, or remove {cap}")
            return {k: v for k, v in spec.items() if k not in ("tol", cap)}
        given = [k for k in self.replaces if k in raw]
        if given:
            raise QueryError(
                join_path(path, "tol"),
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
    baseline = b.baseline(p["baseline"], join_path(path, "baseline"), p["space"])
    return LineDoI(baseline, steps=p.get("steps"), rule=p.get("rule", "gauss-legendre"), space=p["space"], **_LINE_ADAPTIVE.args(p))


def _parse_each(value: Any, path: str, ctx: Context) -> dict[str, Any]:
    return parse_doi(value, path, ctx, pointwise_only=True)


_SPACE = Key("space", Choice(("input", "slice")), "input", "where the path/noise lives: the inputs, or the activations at the cut")
_EACH = Key("each", Custom("a pointwise DoI", _parse_each, schema=json_ref("pointwise_doi")), {"kind": "point"}, "the pointwise DoI around every member")

DOI_KINDS: dict[str, Kind] = {
    "point": Kind("point", Schema(()), "the point itself (saliency; gradient × input with multiply_activation)", lambda p, path, b: PointDoI()),
    "line": Kind(
        "line",
        Schema(
            (
                Key("baseline", Custom(_BASELINE_FORMS, _parse_baseline, schema=_baseline_json), 0.0, "the start of the path"),
                Key("steps", Int(1), 32, "quadrature nodes"),
                Key("rule", Choice(("gauss-legendre", "riemann-left", "riemann-right", "midpoint", "trapezoid")), "gauss-legendre", "quadrature rule"),
                *_LINE_ADAPTIVE.keys,
                _SPACE,
            ),
            rules=(_BASELINE_SPACE_RULE,),
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
        lambda p, path, b: ClassDoI(b.population_data(path, p["label"]), p["label"], each=b.pointwise(p["each"], join_path(path, "each"))),
        pointwise=False,
    ),
    "dataset": Kind(
        "dataset",
        Schema((_EACH,)),
        "uniform over all points of the data section",
        lambda p, path, b: DatasetDoI(b.population_data(path, None), each=b.pointwise(p["each"], join_path(path, "each"))),
        pointwise=False,
    ),
}


def _neuron(p: dict[str, Any], path: str, b: _Builder) -> NeuronQoI:
    index = p["index"]
    return NeuronQoI(p["layer"], tuple(index) if isinstance(index, list) else index)


def _parse_index(value: Any, path: str, ctx: Context) -> Any:
    if isinstance(value, list) and value:
        return [Int(0)(v, join_path(path, i), ctx) for i, v in enumerate(value)]
    try:
        return Int(0)(value, path, ctx)
    except QueryError:
        raise QueryError(path, f"must be an int >= 0 (a channel) or a list of ints (one unit) (got {show_value(value)})") from None


def _linear(p: dict[str, Any], path: str, b: _Builder) -> LinearQoI:
    terms = []
    for i, term in enumerate(p["terms"]):
        where = join_path(join_path(path, "terms"), i)
        built = _build_qoi(term["qoi"], join_path(where, "qoi"), b)
        if isinstance(built, list):
            raise QueryError(join_path(join_path(where, "qoi"), "per_token"), "gives one QoI per token; a term of linear must be one QoI (set per_token: false)")
        terms.append((term["weight"], built))
    return LinearQoI(tuple(terms))


_OUTPUT = Key("output", _SELECTOR, None, "which tensor of a tuple/dict model output: an int, a key, or {callable: ...}")
_TERM_SCHEMA = Schema(
    (
        Key("weight", Float(), 1.0, "the coefficient"),
        Key("qoi", Custom("a QoI", lambda v, path, ctx: parse_qoi(v, path, ctx), schema=json_ref("qoi")), REQUIRED, "a QoI (any kind)"),
    )
)


def _parse_terms(value: Any, path: str, ctx: Context) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise QueryError(path, f"must be a non-empty list of {{weight: NUMBER, qoi: QOI}} (got {show_value(value)})")
    return [_TERM_SCHEMA.parse(t, join_path(path, i), ctx, what="a term") for i, t in enumerate(value)]


QOI_KINDS: dict[str, Kind] = {
    "class": Kind(
        "class",
        Schema((Key("label", Int(0), REQUIRED, "the class index c"), _OUTPUT)),
        "f_c, the score of one class",
        lambda p, path, b: ClassQoI(p["label"], output=b.selector(p["output"], join_path(path, "output"))),
    ),
    "comparative": Kind(
        "comparative",
        Schema((Key("a", Int(0), REQUIRED, "the class preferred"), Key("b", Int(0), REQUIRED, "the class compared with"), _OUTPUT)),
        "f_a − f_b: what makes the model prefer class a over b",
        lambda p, path, b: ComparativeQoI(p["a"], p["b"], output=b.selector(p["output"], join_path(path, "output"))),
    ),
    "neuron": Kind(
        "neuron",
        Schema(
            (
                Key("layer", Str("a dotted module name"), REQUIRED, "the module whose output holds the neuron"),
                Key(
                    "index", Custom("an int (channel) or a list of ints (unit)", _parse_index, schema=lambda: json_one_or_list(Int(0).json_schema())),
                    REQUIRED, "a channel (int) or one unit (list)",
                ),
            )
        ),
        "one internal neuron or channel (after the cut)",
        _neuron,
    ),
    "max_class": Kind(
        "max_class",
        Schema((_OUTPUT,)),
        "the score of the class predicted at each anchor",
        lambda p, path, b: MaxClassQoI(output=b.selector(p["output"], join_path(path, "output"))),
    ),
    "linear": Kind(
        "linear",
        Schema((Key("terms", Custom("a list of {weight, qoi}", _parse_terms, schema=lambda: json_list(_TERM_SCHEMA.json_schema())), REQUIRED, "Σ weight · qoi"),)),
        "a linear combination Σ weight·qoi of other QoIs",
        _linear,
    ),
    "callable": Kind(
        "callable",
        Schema((Key("function", ImportPath(), REQUIRED, "'module:function', output -> (batch,)"), _OUTPUT)),
        "your own function of the output",
        lambda p, path, b: FunctionQoI(b.imported(p["function"], join_path(path, "function")), output=b.selector(p["output"], join_path(path, "output"))),
    ),
    "next_token": Kind(
        "next_token",
        Schema(
            (
                Key("token", _TOKEN_ID, REQUIRED, "the token id whose prediction is explained"),
                Key("position", Int(), -1, "the position whose logits predict it (-1: the next token after the input)"),
                Key("log_prob", Bool(), False, "its log-probability instead of its logit"),
                _OUTPUT,
            )
        ),
        "a causal language model's logit (or log-probability) of one token at one position",
        lambda p, path, b: NextTokenQoI(p["token"], p["position"], log_prob=p["log_prob"], output=b.selector(p["output"], join_path(path, "output"))),
    ),
    "continuation": Kind(
        "continuation",
        Schema(
            (
                Key(
                    "target",
                    Custom(
                        "a list of token ids or an array name", lambda v, p, c: _parse_target(v, p, c),
                        schema=lambda: {"anyOf": [Str().json_schema(), json_list(Int(0).json_schema())]},
                    ),
                    REQUIRED, "the continuation every input ends with: token ids, or the name of a 1-D array of the data",
                ),
                Key("per_token", Bool(), False, "one QoI per token of the continuation (a list of results), instead of their sum"),
                _OUTPUT,
            )
        ),
        "log p(continuation | prompt) of a causal language model (teacher forcing)",
        lambda p, path, b: _continuation(p, path, b),
    ),
}


def _parse_target(value: Any, path: str, ctx: Context) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        return [_token_id(v, join_path(path, i)) for i, v in enumerate(value)]
    raise QueryError(path, f"must be a non-empty list of token ids or the name of an array of the data section (got {show_value(value)})")


def _continuation(p: dict[str, Any], path: str, b: _Builder) -> Any:
    qoi = ContinuationQoI(b.target(p["target"], join_path(path, "target")), output=b.selector(p["output"], join_path(path, "output")))
    return qoi.per_token() if p["per_token"] else qoi


def _parse_kind(value: Any, path: str, ctx: Context, kinds: dict[str, Kind], what: str) -> dict[str, Any]:
    names = ", ".join(kinds)
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise QueryError(path, f"must be a {what}: a kind name ({names}) or a mapping with 'kind' (got {show_value(value)})")
    if "kind" not in value:
        raise QueryError(join_path(path, "kind"), f"missing; say which {what}: one of {names}")
    kind = Choice(tuple(kinds))(value["kind"], join_path(path, "kind"), ctx)
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


def parse_doi(value: Any, path: str, ctx: Context, *, pointwise_only: bool = False) -> dict[str, Any]:
    """A DoI spec (a kind name or a mapping with ``kind``), checked; the library's own
    argument checks run on a placeholder object."""
    spec = _parse_kind(value, path, ctx, DOI_KINDS, "DoI")
    kind = DOI_KINDS[spec["kind"]]
    if pointwise_only and not kind.pointwise:
        pointwise = ", ".join(k for k, v in DOI_KINDS.items() if v.pointwise)
        raise QueryError(join_path(path, "kind"), f"each must be a pointwise DoI ({pointwise}) (got {spec['kind']!r})")
    if spec["kind"] == "line":
        _check_baseline_space(spec["baseline"], spec["space"], join_path(path, "baseline"))
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
            raise QueryError(join_path(path, cap if cap in str(e) else "tol"), text) from None
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


def parse_qoi(value: Any, path: str, ctx: Context) -> dict[str, Any]:
    """A QoI spec, checked like :func:`parse_doi`."""
    spec = _parse_kind(value, path, ctx, QOI_KINDS, "QoI")
    with _at(path, broad=True):
        _build_qoi(spec, path, _Builder())
    return spec


def _build_qoi(spec: dict[str, Any], path: str, b: _Builder) -> QuantityOfInterest:
    return QOI_KINDS[spec["kind"]].build(spec, path, b)


def _parse_qois(value: Any, path: str, ctx: Context) -> list[dict[str, Any]] | dict[str, Any]:
    if isinstance(value, list):
        if not value:
            raise QueryError(path, "the list of QoIs is empty; give one QoI or a non-empty list")
        return [parse_qoi(v, join_path(path, i), ctx) for i, v in enumerate(value)]
    return parse_qoi(value, path, ctx)
