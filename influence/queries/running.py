"""Running a query file: a :class:`Session` holds the loaded model and data and builds each
query into library objects (:class:`BuiltQuery`), checked with one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from doi._line import resolve_baseline
from doi._points import Points
from doi._points import apply as points_apply
from doi._points import count as points_count
from doi._points import describe as points_describe
from doi._points import rows as points_rows
from qoi import QoIContext, QuantityOfInterest
from slices import Cut, Slice
from slices._cut import find_module
from slices._realisations import call as call_model

from ..engine import InfluenceResult, LayerRecorder, frozen, internal_influence
from .checks import Context, QueryError, join_path
from .kinds import DOI_KINDS, _at, _build_qoi, _Builder
from .loading import Data, _array_file, import_callable, load_data, load_model
from .schema import QueryFile, QuerySpec, _parse_device, _walk_qois


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


class Session:
    """A query file with its model and data loaded; :meth:`build` makes each query."""

    def __init__(self, file: QueryFile, device: str | None = None) -> None:
        self.file = file
        if device is not None:
            device = _parse_device(device, "--device", Context(file.folder))
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
                raise QueryError(join_path(self.spec.path, fields[arg]), str(e).partition(":")[2].strip()) from None
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
        return import_callable(spec, path, self.session.file.folder)

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
            self.labels(join_path(path, "label"))
            assert data.y is not None
            if not bool((data.y == label).any()):
                present = sorted(set(data.y.tolist()))
                raise QueryError(join_path(path, "label"), f"class {label} is not in the data (labels present: {present[:20]})")
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
            return self._checked(self._ids_activation(spec["activation_of"], join_path(path, "activation_of")), path, in_slice)
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
        self._ids_or_fail(join_path(path, "token"))
        with _at(join_path(path, "token")):
            points = baseline_ids(points_rows(self.data.x, self.rows), spec["token"], spec["keep"])
        return self._slice_baseline(points, join_path(path, "token"))

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
        value = self.data.array(inner["array"], join_path(where, "array")) if kind == "array" else _array_file(inner, where)
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise QueryError(join_path(where, kind), f"baseline token ids must be integers (got {value.dtype})")
        length = ids.shape[1]
        if value.ndim == 1:
            value = value[None]
        if value.ndim != 2 or value.shape[1] != length or value.shape[0] not in (1, self.data.rows):
            raise QueryError(join_path(where, kind), f"baseline token ids of shape {tuple(value.shape)} do not fit ids of length {length}: give ({length},) or ({self.data.rows}, {length})")
        n = self.rows.shape[0]
        value = value[self.rows] if value.shape[0] == self.data.rows and self.data.rows != 1 else value.expand(n, length)
        points = points_rows(self.data.x, self.rows)
        if isinstance(points, Mapping):
            points = {**points, "input_ids": value.to(ids.dtype)}
        elif isinstance(points, tuple):
            points = (value.to(ids.dtype), *points[1:])
        else:
            points = value.to(ids.dtype)
        return self._slice_baseline(points, join_path(where, kind))

    def _baseline_value(self, spec: Any, path: str, in_slice: bool) -> Any:
        if isinstance(spec, float):
            return spec
        kind = next(iter(k for k in spec if k != "key"))
        where = join_path(path, kind)
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
        spec, data, path = self.spec.inputs or {}, self.data, join_path(self.spec.path, "inputs")
        rows = torch.arange(data.rows)
        if spec.get("label") is not None:
            rows = torch.nonzero(self.labels(join_path(path, "label")) == spec["label"]).flatten()
            if rows.numel() == 0:
                present = sorted(set(data.y.tolist()))
                raise QueryError(join_path(path, "label"), f"class {spec['label']} is not in the data (labels present: {present[:20]})")
        if spec.get("indices") is not None:
            for i, j in enumerate(spec["indices"]):
                if j >= data.rows:
                    raise QueryError(join_path(join_path(path, "indices"), i), f"index {j} is out of range: the data has {data.rows} points")
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
                join_path(path, "slice"),
                f"the inputs are {what}, which have no gradient at the input; explain them at their embedding: slice: {self._embedding_name()} "
                "(with doi point, or line/noise with space: slice)",
            )
        if data.structured and spec.slice["realisation"] not in ("auto", "hook"):
            raise QueryError(
                join_path(path, "slice.realisation"), "a mapping or list of inputs is given to the model as model(**inputs) / model(*inputs), which only realisation: hook does (or auto)"
            )
        each, where = (spec.doi, join_path(path, "doi")) if spec.pointwise else (spec.doi["each"], join_path(path, "doi.each"))
        if each["kind"] in ("line", "noise") and each["space"] == "input":
            fix = " and baseline: {token: 0} (the pad id at every position but padding)" if each["kind"] == "line" else ""
            raise QueryError(
                join_path(where, "space"),
                f"a {each['kind']} in input space would draw points between {what}, which have no path between them; "
                f"draw them at the embedding: space: slice with slice: {self._embedding_name()}{fix}",
            )
        out = join_path(path, "output")
        if spec.output["essence"] is not None:
            raise QueryError(join_path(out, "essence"), f"needs inputs as one tensor of floats; the inputs here are {what}")
        plots = spec.output["plots"]
        if isinstance(plots, list) and "neuron_grid" in plots:
            raise QueryError(join_path(out, f"plots[{plots.index('neuron_grid')}]"), f"neuron_grid draws images; the inputs here are {what} (use tokens)")

    def build(self) -> BuiltQuery:
        spec, session = self.spec, self.session
        path = spec.path
        options = dict(spec.options)
        if session.device is not None:
            options["device"] = session.device
        if options["device"] is not None:
            _check_device(options["device"], join_path(path, "device"))
        options["dtype"] = _dtype(options["dtype"])
        options["autocast"] = _dtype(options["autocast"])
        # the slice
        layer = spec.slice["layer"]
        if layer is not None and session.is_script:
            raise QueryError(
                join_path(path, "slice"),
                "a TorchScript model can be explained at its input only (slice: null): hooks cannot reach inside it; "
                "load the model with factory: to cut at a layer",
            )
        self._check_token_query()
        realisation = spec.slice["realisation"]
        if realisation == "auto" and self.data.structured:
            realisation = "hook"  # model(**inputs) runs through hooks only
        with _at(join_path(path, "slice.layer") if layer is not None else join_path(path, "slice")):
            cut = Cut(layer, spec.slice["at"]) if layer is not None else None
            self.slice = Slice(self.model, cut, realisation=realisation)
        # which points
        kind = spec.doi["kind"]
        if spec.pointwise:
            self.rows = self._select_inputs()
        elif kind == "class":
            self.rows = torch.nonzero(self.labels(join_path(path, "doi.label")) == spec.doi["label"]).flatten()
        doi_path = join_path(path, "doi")
        with _at(doi_path):
            doi = DOI_KINDS[kind].build(spec.doi, doi_path, self)
        inputs = points_rows(self.data.x, self.rows) if spec.pointwise else None
        # the QoIs, tried on one point
        qoi_path = join_path(path, "qoi")
        specs = spec.qoi if isinstance(spec.qoi, list) else [spec.qoi]
        qois: list[QuantityOfInterest] = []
        several = isinstance(spec.qoi, list)
        for i, q in enumerate(specs):
            where = join_path(qoi_path, i) if isinstance(spec.qoi, list) else qoi_path
            with _at(where):
                built = _build_qoi(q, where, self)
            for one in built if isinstance(built, list) else [built]:
                self._try_qoi(one, q, where)
                qois.append(one)
            several = several or isinstance(built, list)
        qoi: Any = qois if several else qois[0]
        if spec.output["top"]["anchor"] != "mean" and inputs is not None and spec.output["top"]["anchor"] >= points_count(inputs):
            raise QueryError(join_path(path, "output.top.anchor"), f"is {spec.output['top']['anchor']} but the query explains {points_count(inputs)} points")
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
        return join_path(path, "layer")
    if spec["kind"] == "linear":
        for i, term in enumerate(spec["terms"]):
            where = join_path(join_path(join_path(path, "terms"), i), "qoi")
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
