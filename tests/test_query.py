"""YAML queries (``influence.queries``): every DoI, QoI, baseline and slice option written in
YAML builds the same library objects, and gives bit for bit the same result, as the
query written in Python; every mistake in a file is a ``QueryError`` naming its field.

The registry tables ``DOI_KINDS`` and ``QOI_KINDS`` drive the parametrisation: a kind added
to a table without a case here fails ``test_every_kind_is_covered``.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from influence.queries import (
    DOI_KINDS,
    OPTION_KEYS,
    QOI_KINDS,
    SECTIONS,
    QueryError,
    load_query_file,
    parse_query,
)
from models import res_cnn
from qoi import ClassQoI, ComparativeQoI, FunctionQoI, MaxClassQoI, NeuronQoI
from slices import Cut, Slice

HELPERS = '''
import torch
from torch import nn

def second_score(out):
    """A callable QoI: the score of class 1."""
    return out[:, 1]

def half(x):
    """A callable baseline: half of each point."""
    return 0.5 * x

def nan_like(x):
    """A baseline of NaNs (every gradient on the line is NaN)."""
    return x * float("nan")

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Softplus())
        self.a = nn.Linear(16, 5)
        self.b = nn.Linear(16, 5)

    def forward(self, x):
        z = self.body(x)
        return {"a": self.a(z), "b": self.b(z)}

def two_heads():
    return TwoHeads()

def pick_b(out):
    return out["b"]
'''


def make_data(n: int = 20) -> dict[str, np.ndarray]:
    """20 points of shape (3, 8, 8); labels 0..3 (class 4 of the 5 classes is absent)."""
    g = np.random.default_rng(0)
    x = g.standard_normal((n, 3, 8, 8)).astype(np.float32)
    return {
        "x": x,
        "y": np.arange(n) % 4,
        "rows": (0.1 * g.standard_normal((n, 3, 8, 8))).astype(np.float32),
        "small": np.zeros((2, 2), dtype=np.float32),
        "mask": g.random((n, 8, 8)) > 0.5,
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with data.npz, helpers.py (imported as a module next to the query file)
    and a baseline file."""
    root = tmp_path_factory.mktemp("queries")
    arrays = make_data()
    np.savez(root / "data.npz", **arrays)
    (root / "helpers.py").write_text(HELPERS)
    torch.save({"b": torch.full((3, 8, 8), 0.25)}, root / "baseline.pt")
    return root


@pytest.fixture(scope="module")
def helpers(folder: Path) -> Any:
    """The helpers module that the queries import from the query file's folder."""
    import importlib
    import sys

    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("helpers")
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return res_cnn(seed=0).eval()


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in make_data().items()}


def document(query: dict[str, Any], **sections: Any) -> dict[str, Any]:
    doc = {
        "model": {"factory": "models:res_cnn", "kwargs": {"seed": 0}},
        "data": {"path": "data.npz", "inputs": "x", "labels": "y"},
        "queries": [query],
    }
    doc.update(sections)
    return doc


def run_yaml(doc: dict[str, Any], folder: Path) -> list[Any]:
    qfile = parse_query(doc, folder)
    session = qfile.prepare()
    return session.build(0).run()


# --- every kind, in YAML and in Python ------------------------------------------------


def _doi_cases(x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[dict[str, Any], Any, dict[str, Any]]]:
    """kind -> (YAML query fields, the Python DoI, extra Python arguments)."""
    return {
        "point": ({"doi": "point", "inputs": {"indices": [0, 3]}}, PointDoI(), {"inputs": x[[0, 3]]}),
        "line": (
            {"doi": {"kind": "line", "steps": 8, "rule": "midpoint", "baseline": 0.5}, "inputs": {"label": 1, "limit": 3}},
            LineDoI(0.5, 8, "midpoint"),
            {"inputs": x[y == 1][:3]},
        ),
        "noise": (
            {"doi": {"kind": "noise", "sigma": "2e-1", "samples": 8, "sampler": "random"}, "inputs": {"limit": 2}, "seed": 5},
            NoiseDoI(0.2, 8, "random"),
            {"inputs": x[:2], "seed": 5},
        ),
        "class": (
            {"doi": {"kind": "class", "label": 2, "each": {"kind": "noise", "sigma": 0.05, "samples": 4, "replicates": 2}}, "seed": 9},
            ClassDoI((x, y), 2, each=NoiseDoI(0.05, 4, replicates=2)),
            {"seed": 9},
        ),
        "dataset": (
            {"doi": {"kind": "dataset", "each": {"kind": "line", "steps": 4, "baseline": {"mean": "data"}}}},
            DatasetDoI((x, y), each=LineDoI(x.mean(0, keepdim=True), 4)),
            {},
        ),
    }


def _qoi_cases() -> dict[str, tuple[Any, Any]]:
    """kind -> (YAML qoi, the Python QoI); the callable one is filled in by the test."""
    return {
        "class": ({"kind": "class", "label": 3}, ClassQoI(3)),
        "comparative": ({"kind": "comparative", "a": 1, "b": 2}, ComparativeQoI(1, 2)),
        "neuron": ({"kind": "neuron", "layer": "layer2.conv1", "index": [1, 0, 2]}, NeuronQoI("layer2.conv1", (1, 0, 2))),
        "max_class": ("max_class", MaxClassQoI()),
        "linear": (
            {"kind": "linear", "terms": [{"weight": 2, "qoi": {"kind": "class", "label": 0}}, {"weight": -0.5, "qoi": {"kind": "neuron", "layer": "layer2", "index": 3}}]},
            2 * ClassQoI(0) - 0.5 * NeuronQoI("layer2", 3),
        ),
        "callable": ({"kind": "callable", "function": "helpers:second_score"}, None),
    }


LANGUAGE_QOI_KINDS = {"next_token", "continuation"}  # language models: covered in test_query_text.py


def test_every_kind_is_covered(data: dict[str, torch.Tensor]) -> None:
    """The cases below cover every registered DoI and QoI kind."""
    assert set(_doi_cases(data["x"], data["y"])) == set(DOI_KINDS)
    assert set(_qoi_cases()) | LANGUAGE_QOI_KINDS == set(QOI_KINDS)


@pytest.mark.parametrize("kind", sorted(DOI_KINDS))
def test_doi_kind_equals_python(kind: str, folder: Path, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``YAML(kind) == Python(kind)`` bit for bit: same values and standard errors at the
    input slice and at a layer, for a ClassQoI."""
    fields, doi, extra = _doi_cases(data["x"], data["y"])[kind]
    for layer in (None, "layer1"):
        query = {"qoi": {"kind": "class", "label": 1}, "slice": layer, **fields}
        (got,) = run_yaml(document(query), folder)
        options = {"seed": 0, **extra}
        inputs = options.pop("inputs", None)
        want = internal_influence(Slice(model, layer), ClassQoI(1), doi, inputs, **options)
        assert torch.equal(got.values, want.values)
        assert torch.equal(got.stderr, want.stderr)
        assert got.query["doi"] == want.query["doi"]


@pytest.mark.parametrize("kind", sorted(set(QOI_KINDS) - LANGUAGE_QOI_KINDS))
def test_qoi_kind_equals_python(kind: str, folder: Path, helpers: Any, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``YAML(kind) == Python(kind)`` for a point DoI at the slice ``layer1``."""
    spec, qoi = _qoi_cases()[kind]
    if kind == "callable":
        qoi = FunctionQoI(helpers.second_score)
    query = {"doi": "point", "slice": "layer1", "qoi": spec, "inputs": {"indices": [4, 5, 6]}}
    (got,) = run_yaml(document(query), folder)
    want = internal_influence(Slice(model, "layer1"), qoi, PointDoI(), data["x"][[4, 5, 6]], seed=0)
    assert torch.equal(got.values, want.values)


def test_list_of_qois_is_one_query(folder: Path, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``qoi: [q1, q2]`` returns one result per QoI, in order, as the Python list form."""
    query = {"doi": "point", "qoi": [{"kind": "class", "label": 0}, {"kind": "class", "label": 2}], "inputs": {"limit": 2}}
    got = run_yaml(document(query), folder)
    want = input_influence(model, [ClassQoI(0), ClassQoI(2)], PointDoI(), data["x"][:2], seed=0)
    assert [torch.equal(g.values, w.values) for g, w in zip(got, want)] == [True, True]


BASELINES = ["number", "mean", "rows", "file", "callable", "activation_of", "activation_of_mean"]


@pytest.mark.parametrize("form", BASELINES)
def test_baseline_forms(form: str, folder: Path, helpers: Any, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """Each baseline form equals the tensor it stands for: ``{mean: data}`` is
    ``x.mean(0)``; ``{array: rows}`` with one row per data point follows the selected
    points; ``{activation_of: b}`` is ``h(b)`` at the cut (slice space)."""
    x, picked = data["x"], [2, 7, 11]
    layer, space = None, "input"
    if form == "number":
        spec, baseline = -0.25, -0.25
    elif form == "mean":
        spec, baseline = {"mean": "data"}, x.mean(0, keepdim=True)
    elif form == "rows":
        spec, baseline = {"array": "rows"}, data["rows"][picked]
    elif form == "file":
        spec, baseline = {"file": "baseline.pt", "key": "b"}, torch.full((3, 8, 8), 0.25)
    elif form == "callable":
        spec, baseline = {"callable": "helpers:half"}, helpers.half
    else:
        layer, space = "layer1", "slice"
        inner = 0.0 if form == "activation_of" else {"mean": "data"}
        point = torch.zeros(1, 3, 8, 8) if form == "activation_of" else x.mean(0, keepdim=True)
        spec, baseline = {"activation_of": inner}, Slice(model, "layer1").h(point)
    query = {
        "slice": layer,
        "doi": {"kind": "line", "steps": 6, "baseline": spec, "space": space},
        "qoi": {"kind": "class", "label": 0},
        "inputs": {"indices": picked},
        "multiply_activation": True,
    }
    (got,) = run_yaml(document(query), folder)
    doi = LineDoI(baseline, steps=6, space=space)
    want = internal_influence(Slice(model, layer), ClassQoI(0), doi, x[picked], seed=0, multiply_activation=True)
    assert torch.equal(got.values, want.values)


def test_slice_and_engine_options(folder: Path, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``slice: {layer, at: input, realisation: hook}``, ``dtype``, ``batch_size``,
    ``channels_last`` and ``defaults`` reach the engine: equal to the Python call with the same arguments."""
    query = {
        "slice": {"layer": "layer2", "at": "input", "realisation": "hook"},
        "doi": {"kind": "noise", "samples": 6, "sigma": 0.1},
        "qoi": {"kind": "comparative", "a": 0, "b": 1},
        "inputs": {"indices": [1, 2]},
        "batch_size": 5,
        "channels_last": False,
    }
    doc = document(query, defaults={"dtype": "float64", "seed": 4, "batch_size": 100})
    (got,) = run_yaml(doc, folder)
    slc = Slice(model, Cut("layer2", at="input"), realisation="hook")
    want = internal_influence(
        slc, ComparativeQoI(0, 1), NoiseDoI(0.1, 6), data["x"][[1, 2]], dtype=torch.float64, seed=4, batch_size=5, channels_last=False
    )
    assert got.query["dtype"] == "float64" and got.query["batch_size"] == 5 and got.query["seed"] == 4
    assert torch.equal(got.values, want.values)


def test_affine_prefix_and_nonfinite_options(folder: Path, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``affine_prefix: false`` and ``nonfinite: skip`` reach the engine."""
    query = {"slice": "layer2", "doi": {"kind": "line", "steps": 4}, "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 3}, "affine_prefix": False}
    (got,) = run_yaml(document(query, defaults={"dtype": "float64"}), folder)
    want = internal_influence(Slice(model, "layer2"), ClassQoI(1), LineDoI(steps=4), data["x"][:3], dtype=torch.float64, seed=0, affine_prefix=False)
    assert torch.equal(got.values, want.values)
    query = {"doi": {"kind": "line", "steps": 4, "baseline": {"callable": "helpers:nan_like"}}, "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 2}, "nonfinite": "skip"}
    with pytest.warns(RuntimeWarning, match="skipped 2 anchors"):
        (got,) = run_yaml(document(query), folder)
    assert got.query["skipped"] == 2 and torch.isnan(got.values).all()
    query["nonfinite"] = "ignore"
    with pytest.raises(QueryError, match=r"queries\[0\]\.nonfinite: must be one of 'raise', 'skip'"):
        run_yaml(document(query), folder)


def test_precision_options(folder: Path, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``tf32``, ``autocast`` and ``compile`` reach the engine and its record."""
    query = {"doi": {"kind": "line", "steps": 4}, "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 2}, "tf32": False, "autocast": "bfloat16"}
    (got,) = run_yaml(document(query), folder)
    want = input_influence(model, ClassQoI(1), LineDoI(steps=4), data["x"][:2], seed=0, tf32=False, autocast=torch.bfloat16)
    assert got.query["autocast"] == "bfloat16" and torch.equal(got.values, want.values)
    query["autocast"] = "float16"
    with pytest.raises(QueryError, match=r"queries\[0\]\.autocast: must be null or one of 'bfloat16'"):
        run_yaml(document(query), folder)
    query.update(autocast=None, tf32="no")
    with pytest.raises(QueryError, match=r"queries\[0\]\.tf32"):
        run_yaml(document(query), folder)


def test_output_selector_on_a_dict_model(folder: Path, helpers: Any, data: dict[str, torch.Tensor]) -> None:
    """``output: b`` (a key) and ``output: {callable: ...}`` pick a head of a model that
    returns a dict, like ``ClassQoI(c, output="b")``."""
    model = helpers.two_heads()
    for selector, python in (("b", "b"), ({"callable": "helpers:pick_b"}, helpers.pick_b)):
        query = {"doi": "point", "qoi": {"kind": "class", "label": 2, "output": selector}, "inputs": {"limit": 2}}
        doc = document(query, model={"factory": "helpers:two_heads"})
        (got,) = run_yaml(doc, folder)
        want = input_influence(model, ClassQoI(2, output=python), PointDoI(), data["x"][:2], seed=0)
        assert torch.equal(got.values, want.values)


def test_weights_and_pt_data(tmp_path: Path, data: dict[str, torch.Tensor]) -> None:
    """``model.weights`` loads a state_dict (weights_only) into the factory's model, and a
    ``.pt`` data file with ``classes:`` keeps only those labels."""
    trained = res_cnn(seed=7)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    torch.save({"inputs": data["x"], "labels": data["y"]}, tmp_path / "d.pt")
    doc = {
        "model": {"factory": "models:res_cnn", "kwargs": {"seed": 0}, "weights": "w.pt"},
        "data": {"path": "d.pt", "inputs": "inputs", "labels": "labels", "classes": [1, 3]},
        "queries": [{"doi": {"kind": "dataset"}, "qoi": {"kind": "class", "label": 0}}],
    }
    (got,) = run_yaml(doc, tmp_path)
    keep = (data["y"] == 1) | (data["y"] == 3)
    want = input_influence(trained, ClassQoI(0), DatasetDoI((data["x"][keep], data["y"][keep])), seed=0)
    assert got.anchors == int(keep.sum())
    assert torch.equal(got.values, want.values)


def test_torchscript_model_at_the_input(tmp_path: Path, folder: Path, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``model.torchscript`` (input slice) equals the eager model's input influence."""
    with warnings.catch_warnings():  # torch.jit.script is deprecated in recent torch; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    doc = document({"doi": "point", "qoi": {"kind": "class", "label": 2}, "inputs": {"limit": 3}}, model={"torchscript": str(tmp_path / "m.pt")})
    (got,) = run_yaml(doc, folder)
    want = input_influence(model, ClassQoI(2), PointDoI(), data["x"][:3], seed=0)
    torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-6)


def test_data_factory_and_defaults(tmp_path: Path) -> None:
    """A data factory's dict of arrays; defaults fill every option a query leaves out."""
    doc = {
        "model": {"factory": "influence.synthetic:small_cnn", "kwargs": {"classes": 4, "width": 2}},
        "data": {"factory": "influence.synthetic:glyph_images", "kwargs": {"n_per_class": 3, "classes": 4, "split": "test"}},
        "defaults": {"multiply_activation": True, "seed": 11, "batch_size": "auto"},
        "queries": [{"doi": "point", "qoi": {"kind": "class", "label": 1}, "inputs": {"label": 1}}],
    }
    qfile = parse_query(doc, tmp_path)
    assert qfile.queries[0].options == {
        "batch_size": "auto", "seed": 11, "multiply_activation": True, "dtype": None, "device": None, "channels_last": None,
        "affine_prefix": True, "nonfinite": "raise", "tf32": None, "autocast": None, "compile": False,
    }
    (got,) = qfile.prepare().build(0).run()
    assert got.anchors == 3 and got.query["multiply_activation"] is True


# --- validation without loading ----------------------------------------------------------


def test_validate_imports_and_loads_nothing(tmp_path: Path) -> None:
    """``load_query_file`` neither imports the factory module (its import would write a
    marker file) nor reads the weights (a corrupt file passes validation; running it is
    an error at ``model.weights``)."""
    marker = tmp_path / "imported"
    (tmp_path / "spy.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build():\n    raise AssertionError\n")
    (tmp_path / "w.pt").write_bytes(b"not a torch file")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3), dtype=np.float32))
    text = """
        model: {factory: "spy:build", weights: w.pt}
        data: {path: d.npz, labels: null}
        queries: [{doi: point, qoi: {kind: class, label: 0}}]
    """
    (tmp_path / "q.yaml").write_text(textwrap.dedent(text))
    qfile = load_query_file(tmp_path / "q.yaml")
    assert qfile.queries[0].name == "query0"
    assert not marker.exists()
    (tmp_path / "q2.yaml").write_text(textwrap.dedent(text).replace("spy:build", "models:res_cnn"))
    with pytest.raises(QueryError) as info:
        load_query_file(tmp_path / "q2.yaml").prepare()
    assert info.value.path == "model.weights"


def test_query_error_names_the_field(folder: Path) -> None:
    """The message is ``<field path>: <what is wrong> (got <value>)``, on one line."""
    doc = document({"doi": {"kind": "line", "steps": -3}, "qoi": "max_class"})
    doc["queries"].insert(0, {"doi": "point", "qoi": "max_class"})
    with pytest.raises(QueryError) as info:
        parse_query(doc, folder)
    assert info.value.path == "queries[1].doi.steps"
    assert str(info.value) == "queries[1].doi.steps: must be an int >= 1 (got -3)"


# --- random documents: only QueryError ------------------------------------------------------

_VOCABULARY = sorted(
    {k.name for schema in SECTIONS.values() for k in schema.keys}
    | {k.name for kind in (*DOI_KINDS.values(), *QOI_KINDS.values()) for k in kind.schema.keys}
    | set(DOI_KINDS)
    | set(QOI_KINDS)
    | {"model", "data", "defaults", "queries", "kind", "mean", "array", "file", "callable", "activation_of", "key", "data.npz", "models:res_cnn"}
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_VOCABULARY),
    st.text(max_size=12),
)
_keys = st.one_of(st.sampled_from(_VOCABULARY), st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans())
_trees = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)


def _valid_document() -> dict[str, Any]:
    return {
        "model": {"factory": "models:res_cnn", "kwargs": {"seed": 0}},
        "data": {"path": "data.npz", "inputs": "x", "labels": "y"},
        "defaults": {"seed": 1},
        "queries": [
            {"name": "a", "slice": "layer1", "doi": {"kind": "class", "label": 1, "each": {"kind": "line", "steps": 4}}, "qoi": {"kind": "comparative", "a": 1, "b": 0}},
            {"doi": {"kind": "noise", "samples": 8}, "qoi": [{"kind": "neuron", "layer": "layer2", "index": [0, 1, 1]}], "inputs": {"label": 2, "limit": 2}, "output": {"top": {"k": 3}}},
        ],
    }


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += _paths(v, (*prefix, i))
    return found


def _validate_only_query_errors(doc: Any, folder: Path) -> None:
    try:
        parse_query(doc, folder)
    except QueryError as e:
        assert "\n" not in str(e)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees)
def test_random_documents_only_give_query_errors(tree: Any, folder: Path) -> None:
    """Any document — random nesting of schema words and garbage — either validates or
    raises ``QueryError`` (one line); never another exception."""
    _validate_only_query_errors(tree, folder)
    _validate_only_query_errors({"model": tree, "data": tree, "queries": [tree]}, folder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_documents_only_give_query_errors(data: st.DataObject, folder: Path) -> None:
    """A valid document with one value replaced by a random one (or one key dropped):
    validation reaches deep into it and still raises nothing but ``QueryError``."""
    doc = _valid_document()
    parse_query(doc, folder)  # the unmutated document is valid
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    target = doc
    for part in path[:-1]:
        target = target[part]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = data.draw(_trees)
    _validate_only_query_errors(doc, folder)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=80), st.builds(lambda t: yaml.safe_dump(t), _trees)))
def test_random_yaml_files_only_give_query_errors(text: str, folder: Path) -> None:
    """Random text and random YAML files through ``load_query_file``."""
    path = folder / "random.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_query_file(path)
    except QueryError as e:
        assert "\n" not in str(e)


# --- the README documents the schema ------------------------------------------------------------


def test_readme_documents_every_key() -> None:
    """Every section, key, kind name and default of the registry appears in the README's
    section "YAML queries and the command line"."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## YAML queries and the command line$(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert match, "README has no section 'YAML queries and the command line'"
    section = match.group(1)
    missing = []
    for where, schema in SECTIONS.items():
        for key in schema.keys:
            if f"`{key.name}`" not in section:
                missing.append(f"{where}.{key.name}")
    for table, kinds in (("doi", DOI_KINDS), ("qoi", QOI_KINDS)):
        for name, kind in kinds.items():
            if f"`{name}`" not in section:
                missing.append(f"{table} kind {name}")
            for key in kind.schema.keys:
                if f"`{key.name}`" not in section:
                    missing.append(f"{table}.{name}.{key.name}")
    for key in OPTION_KEYS:
        if f"`{key.name}`" not in section:
            missing.append(key.name)
    every_key = [k for schema in SECTIONS.values() for k in schema.keys] + [k for kind in (*DOI_KINDS.values(), *QOI_KINDS.values()) for k in kind.schema.keys]
    for key in every_key:
        default = key.default
        if default is None or isinstance(default, (bool, int, float, str)):
            shown = "null" if default is None else "true" if default is True else "false" if default is False else str(default)
            if f"`{shown}`" not in section:
                missing.append(f"default of {key.name}: `{shown}`")
    assert not missing, f"README lacks: {missing}"
