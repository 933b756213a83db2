"""The JSON Schema of query files (``influence schema``, ``docs/query.schema.json``).

It is generated from the declarations that ``influence validate`` checks a file with, so
the two agree: every example and every valid document of the query tests validates under
the schema too (the schema is never stricter: a random edit of a valid document that
``parse_query`` still accepts, the schema accepts), and the bad documents below are
refused by both. The file in ``docs/`` is the command's output, byte for byte.

What only ``influence validate`` refuses (the schema cannot state it, or leaves it out):

* what needs the file system: files that do not exist or cannot be read (``data.path``,
  ``model.weights``, ``model.torchscript``, ``tokens: {vocab: FILE}``, a baseline
  ``{file: ...}``), a checkpoint whose folder does not exist;
* device names that torch does not know (``device: gpu``);
* the library's checks of a DoI's or QoI's arguments together: a trapezoid rule with
  ``steps: 1``, ``replicates`` that do not divide ``samples``, a noise ``tol`` with one
  group per round, ``max_samples`` below ``samples``, a ``per_token`` continuation inside
  a ``linear`` QoI;
* checks across sections: ``data.labels: null`` with a class DoI, ``inputs.label``, an
  audit or an essence check; ``data.inputs`` as a list or mapping (token ids) with the
  input slice, a realisation other than ``hook``/``auto`` or an input-space line;
* what a slice allows in ``output``: ``heatmaps``, region audits and ``curves`` at the
  input only; ``neuron_grid``, ``essence``, token audits and the ``tokens`` picture at a
  layer; a token audit needs the query's line ``{token: ...}`` with ``gauss-legendre``;
  an essence check needs a class or comparative QoI;
* unique query names; a region box given as the former list ``[top, bottom, left,
  right]`` with ``bottom <= top``;
* numbers written as text out of range (``sigma: "0"``) or not finite (``1e999``), and
  ints written as floats (``steps: 3.0``), which JSON Schema counts as integers.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from test_query import _paths  # every path into a document, for the one-edit changes

from influence.queries import DOI_KINDS, QOI_KINDS, QueryError, parse_query
from influence.queries.cli import main
from influence.queries.json_schema import query_json_schema, schema_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "query.schema.json"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../docs/query.schema.json"
REGENERATE = "regenerate it: influence schema --out docs/query.schema.json"

SCHEMA = query_json_schema()
VALIDATOR = Draft202012Validator(SCHEMA)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the documents name: data.npz, baseline.pt, helpers.py, vocab.txt, m.pt, w.pt."""
    import test_query

    root = tmp_path_factory.mktemp("schema")
    arrays = test_query.make_data()
    np.savez(root / "data.npz", **arrays, foreground=arrays["mask"])
    (root / "helpers.py").write_text(test_query.HELPERS)
    torch.save({"b": torch.full((3, 8, 8), 0.25)}, root / "baseline.pt")
    for name in ("m.pt", "w.pt"):  # validation checks that they exist; it loads nothing
        (root / name).write_bytes(b"not read")
    (root / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\nzq\n", encoding="utf-8")
    return root


def schema_errors(doc: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message[:300]}" for e in VALIDATOR.iter_errors(doc)]


def validate(doc: Any, folder: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a deprecated spelling still validates
        return parse_query(copy.deepcopy(doc), folder)


# --- the schema and its file ---------------------------------------------------------------------


def test_the_schema_is_a_draft_2020_12_schema() -> None:
    """The schema is itself valid (the meta-schema), and every ``$ref`` names a ``$defs`` entry."""
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["title"] and SCHEMA["description"]
    assert set(SCHEMA["required"]) == {"model", "data", "queries"}
    refs = set(re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(SCHEMA)))
    assert refs and refs <= set(SCHEMA["$defs"]), refs - set(SCHEMA["$defs"])


def _defaults(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "default" in node:
            yield path, node
        for key, value in node.items():
            yield from _defaults(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _defaults(value, f"{path}/{i}")


def test_every_default_is_valid_under_its_key() -> None:
    """Each ``default`` the schema states is a value its own key accepts: a query's engine
    options default to null ("from defaults"), stated only where the key accepts null."""
    found = list(_defaults(SCHEMA["properties"])) + list(_defaults(SCHEMA["$defs"]))
    assert len(found) > 50
    for where, node in found:
        sub = Draft202012Validator({**node, "$defs": SCHEMA["$defs"]})
        assert sub.is_valid(node["default"]), (where, node["default"])
    options = SCHEMA["properties"]["queries"]["items"]["properties"]
    assert "default" not in options["multiply_activation"] and options["seed"]["default"] is None
    assert SCHEMA["properties"]["defaults"]["anyOf"][0]["properties"]["seed"]["default"] == 0
    assert options["doi"]["description"] and options["doi"]["$ref"] == "#/$defs/doi"


def test_docs_file_is_the_generated_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """``docs/query.schema.json`` is exactly what ``influence schema`` prints (JSON, indent
    2, sorted keys)."""
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert out == schema_text() and err == ""
    assert json.loads(out) == SCHEMA
    assert DOCS.is_file(), f"{DOCS} is missing; {REGENERATE}"
    assert DOCS.read_text(encoding="utf-8") == out, f"{DOCS} is out of date; {REGENERATE}"


def test_schema_out_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``influence schema --out FILE`` writes the same text; a missing folder is exit 2."""
    target = tmp_path / "query.schema.json"
    assert main(["schema", "--out", str(target)]) == 0
    out, _ = capsys.readouterr()
    assert target.read_text(encoding="utf-8") == schema_text() and str(target) in out
    assert main(["schema", "--out", str(tmp_path / "nope" / "s.json")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("error: --out: folder not found")
    assert main(["--help"]) == 0 and "influence schema --out query.schema.json" in capsys.readouterr().out


# --- valid documents: accepted by both --------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_point_at_and_validate_under_the_schema(example: Path) -> None:
    """Each example starts with the modeline of yaml-language-server, whose relative path
    (from the example's folder) is the schema file, and validates under the schema."""
    text = example.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MODELINE
    assert (example.parent / MODELINE.split("$schema=")[1]).resolve() == DOCS
    assert schema_errors(yaml.safe_load(text)) == []


IMAGE = {
    "model": {"factory": "models:res_cnn", "kwargs": {"seed": 0}},
    "data": {"path": "data.npz", "inputs": "x", "labels": "y"},
    "defaults": {"seed": 1, "batch_size": 16},
    "queries": [
        {
            "name": "ig",
            "doi": {"kind": "line", "steps": 8, "baseline": 0.0},
            "qoi": {"kind": "class", "label": 1},
            "inputs": {"indices": [0, 1]},
            "multiply_activation": True,
            "output": {"top": {"k": 3, "by": "unit"}, "plots": ["heatmaps"]},
        },
        {"name": "layer", "slice": "layer1", "doi": {"kind": "class", "label": 2}, "qoi": {"kind": "comparative", "a": 2, "b": 0}},
        {"name": "smooth", "doi": {"kind": "noise", "sigma": 0.1, "samples": 8}, "qoi": "max_class", "inputs": {"label": 1, "limit": 2}},
    ],
}

TEXT = {
    "model": {"factory": "influence.text_data:tiny_bert", "kwargs": {"seed": 0}},
    "data": {
        "factory": "influence.text_data:sentences", "kwargs": {"n": 12},
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}, "labels": "labels", "tokens": "tokens",
    },
    "queries": [
        {
            "name": "tokens", "slice": "bert.embeddings.word_embeddings",
            "doi": {"kind": "line", "space": "slice", "baseline": {"token": 0, "keep": [1, 2]}, "steps": 4},
            "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 2}, "multiply_activation": True,
            "output": {"audit": {"tokens": [24], "factor": 2}, "plots": ["tokens"], "report": True},
        },
        {
            "name": "lm", "slice": {"layer": "bert.embeddings.word_embeddings", "realisation": "hook"}, "doi": "point",
            "qoi": [{"kind": "next_token", "token": 3, "position": -2, "log_prob": True}, {"kind": "continuation", "target": [3, 4], "per_token": True}],
        },
    ],
}  # fmt: skip


def _query(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(IMAGE), "queries": [{"doi": "point", "qoi": "max_class", **fields}]}


def _queries(*queries: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**copy.deepcopy(IMAGE), "queries": list(queries), **sections}


VALID: dict[str, dict[str, Any]] = {
    "image": IMAGE,
    "text": TEXT,
    "every engine option": _queries(
        {"doi": "point", "qoi": "max_class", "batch_size": 4, "seed": None, "dtype": None, "device": "cuda:1", "tf32": True, "compile": True},
        defaults={
            "batch_size": "auto", "seed": None, "multiply_activation": True, "dtype": "float64", "device": "cpu", "channels_last": False,
            "affine_prefix": False, "nonfinite": "skip", "tf32": False, "autocast": "bfloat16", "compile": False,
        },
    ),
    "empty defaults": _queries({"doi": "line", "qoi": {"kind": "class", "label": 0}}, defaults=None),
    "baselines": _queries(
        *({"name": f"b{i}", "doi": {"kind": "line", "baseline": b}, "qoi": "max_class"} for i, b in enumerate(
            [-0.25, "1e-3", {"mean": "data"}, {"array": "rows"}, {"file": "baseline.pt", "key": "b"}, {"file": "baseline.pt"}, {"callable": "helpers:half"}]
        )),
        {"name": "act0", "slice": "layer1", "doi": {"kind": "line", "space": "slice", "baseline": {"activation_of": 0.0}, "rule": "midpoint"}, "qoi": "max_class"},
        {"name": "actmean", "slice": "layer1", "doi": {"kind": "line", "space": "slice", "baseline": {"activation_of": {"mean": "data"}}}, "qoi": "max_class"},
        {"name": "ids", "slice": "layer1", "doi": {"kind": "line", "space": "slice", "baseline": {"activation_of": {"array": "rows"}}, "rule": "trapezoid", "steps": 2}, "qoi": "max_class"},
    ),
    "adaptive": _queries(
        {"name": "a", "doi": {"kind": "line", "tol": "1e-3", "max_steps": 256}, "qoi": "max_class"},
        {"name": "b", "slice": "layer1", "doi": {"kind": "class", "label": 0, "each": {"kind": "line", "tol": 0.01, "space": "slice"}}, "qoi": "max_class"},
        {"name": "c", "doi": {"kind": "noise", "samples": 16, "tol": 0.05, "max_samples": 128}, "qoi": "max_class"},
        {"name": "d", "doi": {"kind": "line", "tol": None, "steps": 4}, "qoi": "max_class"},
    ),
    "populations": _queries(
        {"name": "a", "doi": "dataset", "qoi": "max_class", "checkpoint": "a.ckpt"},
        {"name": "b", "doi": {"kind": "dataset", "each": "line"}, "qoi": "max_class", "output": {"top": {"anchor": "mean"}}},
        {"name": "c", "doi": {"kind": "class", "label": 3, "each": {"kind": "noise", "sigma": "5e-2", "samples": 4, "replicates": 2}}, "qoi": "max_class"},
    ),
    "qois": _queries(
        {"name": "a", "slice": "layer1", "doi": "point", "qoi": [
            {"kind": "neuron", "layer": "layer2", "index": 3}, {"kind": "neuron", "layer": "layer2", "index": [0, 1, 1]},
            {"kind": "class", "label": 0, "output": 1}, {"kind": "comparative", "a": 0, "b": 1, "output": "logits"},
            {"kind": "max_class", "output": {"callable": "helpers:pick_b"}}, {"kind": "callable", "function": "helpers:second_score", "output": None},
            {"kind": "linear", "terms": [{"weight": "2", "qoi": {"kind": "class", "label": 0}}, {"qoi": {"kind": "linear", "terms": [{"weight": -1, "qoi": "max_class"}]}}]},
        ]},
    ),
    "outputs at the input": _query(
        name="in.put-1", inputs={"limit": 3},
        output={
            "top": {"k": 2, "by": "channel", "agg": "max", "absolute": True, "anchor": 0}, "save": False, "plots": True, "report": True,
            "audit": {"region": {"mask": "mask", "invert": True}, "factor": "2.5", "flag_on": "absolute", "classes": [0, 1]},
            "curves": {"steps": 4, "baseline": "blur", "random_orders": 2},
            "regions": {"all": {"mask": "mask"}, "corner": {"box": {"top": 0, "left": 0, "height": 3, "width": 3}}, "former": {"box": [0, 3, 0, 3], "invert": True}},
        },
    ),
    "outputs at a layer": _query(
        slice={"layer": "layer2", "at": "input"}, qoi={"kind": "comparative", "a": 1, "b": 0},
        output={
            "plots": ["neuron_grid", "contrast", "essence"],
            "essence": {"k": [1, 2], "rankings": "influence", "ablation": "zero", "draws": 10, "by": "channel"},
        },
    ),
    "data variants": {
        "model": {"torchscript": "m.pt"},
        "data": {"path": "data.npz", "inputs": ["x"], "labels": "y", "classes": [1, 3], "tokens": None},
        "defaults": {},
        "queries": [{"slice": "layer1", "doi": "point", "qoi": "max_class", "inputs": None}, {"slice": "layer1", "doi": {"kind": "noise", "sampler": "random", "space": "slice"}, "qoi": "max_class"}],
    },
    "factory data": {
        "model": {"factory": "models:res_cnn", "weights": "w.pt", "kwargs": {}},
        "data": {"factory": "helpers:two_heads", "kwargs": {"n": 3, "_x": None}, "labels": None, "tokens": {"vocab": "vocab.txt"}},
        "queries": [{"doi": {"kind": "noise", "space": "slice"}, "slice": {"layer": "a"}, "qoi": {"kind": "continuation", "target": "ending"}}],
    },
}


def _imported_documents() -> dict[str, Any]:
    """The valid documents of the other query tests."""
    import test_cli
    import test_query
    import test_query_text

    found: dict[str, Any] = {"test_query valid": test_query._valid_document(), "test_cli BASE": yaml.safe_load(test_cli.BASE)}
    found["test_query_text BASE"], found["test_query_text LM"] = test_query_text.BASE, test_query_text.LM
    x, y = torch.zeros(20, 3, 8, 8), torch.arange(20) % 4
    for kind, (fields, _, _) in test_query._doi_cases(x, y).items():
        for layer in (None, "layer1"):
            found[f"test_query doi {kind} {layer}"] = test_query.document({"qoi": {"kind": "class", "label": 1}, "slice": layer, **fields})
    for kind, (spec, _) in test_query._qoi_cases().items():
        found[f"test_query qoi {kind}"] = test_query.document({"doi": "point", "slice": "layer1", "qoi": spec, "inputs": {"indices": [4, 5, 6]}})
    return found


VALID.update(_imported_documents())


def _kinds(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The DoI and QoI kinds a document names."""
    dois, qois = set(), set()

    def doi(spec: Any) -> None:
        kind = spec if isinstance(spec, str) else spec["kind"]
        dois.add(kind)
        if isinstance(spec, dict) and "each" in spec:
            doi(spec["each"])

    def qoi(spec: Any) -> None:
        if isinstance(spec, list):
            for s in spec:
                qoi(s)
            return
        kind = spec if isinstance(spec, str) else spec["kind"]
        qois.add(kind)
        for term in spec.get("terms", []) if isinstance(spec, dict) else []:
            qoi(term["qoi"])

    for query in doc["queries"]:
        doi(query["doi"])
        qoi(query["qoi"])
    return dois, qois


def test_the_valid_documents_cover_every_kind() -> None:
    """At least ten documents, naming every DoI and QoI kind between them."""
    assert len(VALID) >= 10
    dois, qois = set(), set()
    for doc in VALID.values():
        d, q = _kinds(doc)
        dois, qois = dois | d, qois | q
    assert dois == set(DOI_KINDS) and qois == set(QOI_KINDS)


@pytest.mark.parametrize("name", list(VALID))
def test_valid_documents_validate_under_both(name: str, folder: Path) -> None:
    """``parse_query`` accepts the document, and so does the schema; so does the schema the
    queries as run (``QuerySpec.echo``: every default filled in) where they validate again."""
    doc = VALID[name]
    qfile = validate(doc, folder)
    assert schema_errors(doc) == []
    echo = {**copy.deepcopy(doc), "queries": [spec.echo() for spec in qfile.queries]}
    try:
        validate(echo, folder)
    except QueryError:
        return
    assert schema_errors(echo) == []


# --- bad documents: refused by both ---------------------------------------------------------------

DELETE = object()


def _edit(doc: dict[str, Any], path: str, value: Any = DELETE) -> dict[str, Any]:
    """``doc`` with the value at ``path`` (``queries[0].doi.steps``) replaced or deleted."""
    doc = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    target = doc
    for part in parts[:-1]:
        target = target[part]
    if value is DELETE:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return doc


def _rename(doc: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc[new] = doc.pop(old)
    return doc


# (id, document, the field that parse_query names)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key, a typo", _edit(IMAGE, "queries[0].doi.stpes", 4), "queries[0].doi.stpes"),
    ("wrong DoI kind", _edit(IMAGE, "queries[0].doi.kind", "lien"), "queries[0].doi.kind"),
    ("wrong QoI kind", _edit(IMAGE, "queries[1].qoi.kind", "comparison"), "queries[1].qoi.kind"),
    ("class DoI by name, without label", _edit(IMAGE, "queries[1].doi", "class"), "queries[1].doi.label"),
    ("steps 0", _edit(IMAGE, "queries[0].doi.steps", 0), "queries[0].doi.steps"),
    ("steps many", _edit(IMAGE, "queries[0].doi.steps", "many"), "queries[0].doi.steps"),
    ("bad rule", _edit(IMAGE, "queries[0].doi.rule", "simpson"), "queries[0].doi.rule"),
    ("sigma negative", _edit(IMAGE, "queries[2].doi.sigma", -1), "queries[2].doi.sigma"),
    ("sigma negative, as text", _edit(IMAGE, "queries[2].doi.sigma", "-1e-1"), "queries[2].doi.sigma"),
    ("replicates 0", _edit(IMAGE, "queries[2].doi.replicates", 0), "queries[2].doi.replicates"),
    ("missing qoi", _edit(IMAGE, "queries[1].qoi"), "queries[1].qoi"),
    ("empty list of QoIs", _edit(IMAGE, "queries[1].qoi", []), "queries[1].qoi"),
    ("k 0", _edit(IMAGE, "queries[0].output.top.k", 0), "queries[0].output.top.k"),
    ("by pixels", _edit(IMAGE, "queries[0].output.top.by", "pixels"), "queries[0].output.top.by"),
    ("batch_size -1", _edit(IMAGE, "defaults.batch_size", -1), "defaults.batch_size"),
    ("batch_size a word", _edit(IMAGE, "queries[0].batch_size", "max"), "queries[0].batch_size"),
    ("dtype float8", _edit(IMAGE, "queries[1].dtype", "float8"), "queries[1].dtype"),
    ("seed a bool", _edit(IMAGE, "defaults.seed", True), "defaults.seed"),
    ("unknown option in defaults", _edit(IMAGE, "defaults.multiply", True), "defaults.multiply"),
    ("top-level typo querys", _rename(IMAGE, "queries", "querys"), "querys"),
    ("queries not a list", _edit(IMAGE, "queries", IMAGE["queries"][0]), "queries"),
    ("empty query list", _edit(IMAGE, "queries", []), "queries"),
    ("missing data section", _edit(IMAGE, "data"), "data"),
    ("model without factory or file", _edit(IMAGE, "model.factory"), "model"),
    ("model with factory and torchscript", _edit(IMAGE, "model.torchscript", "data.npz"), "model"),
    ("torchscript with weights", {**IMAGE, "model": {"torchscript": "m.pt", "weights": "w.pt"}}, "model.weights"),
    ("factory not an import path", _edit(IMAGE, "model.factory", "models.res_cnn"), "model.factory"),
    ("factory of a refused module", _edit(IMAGE, "model.factory", "os:system"), "model.factory"),
    ("kwargs not identifiers", _edit(IMAGE, "model.kwargs", {"my-seed": 1}), "model.kwargs.my-seed"),
    ("data path and factory", _edit(IMAGE, "data.factory", "helpers:two_heads"), "data"),
    ("data file type", _edit(IMAGE, "data.path", "data.csv"), "data.path"),
    ("data kwargs with a path", _edit(IMAGE, "data.kwargs", {"n": 1}), "data.kwargs"),
    ("classes without labels", _edit(_edit(IMAGE, "data.classes", [1]), "data.labels", None), "data.classes"),
    ("inputs an empty list", _edit(IMAGE, "data.inputs", []), "data.inputs"),
    ("inputs with odd argument names", _edit(IMAGE, "data.inputs", {"input-ids": "x"}), "data.inputs"),
    ("tokens with an odd key", _edit(IMAGE, "data.tokens", {"vocabulary": "vocab.txt"}), "data.tokens.vocabulary"),
    ("baseline of a bad form", _edit(IMAGE, "queries[0].doi.baseline", {"median": "data"}), "queries[0].doi.baseline.median"),
    ("baseline of two forms", _edit(IMAGE, "queries[0].doi.baseline", {"mean": "data", "array": "rows"}), "queries[0].doi.baseline"),
    ("keep without token", _edit(IMAGE, "queries[0].doi.baseline", {"mean": "data", "keep": [1]}), "queries[0].doi.baseline.keep"),
    ("activation_of in input space", _edit(IMAGE, "queries[0].doi.baseline", {"activation_of": 0.0}), "queries[0].doi.baseline"),
    ("mean in slice space", _edit(_edit(IMAGE, "queries[0].doi.space", "slice"), "queries[0].doi.baseline", {"mean": "data"}), "queries[0].doi.baseline"),
    ("token baseline negative", _edit(TEXT, "queries[0].doi.baseline.token", -1), "queries[0].doi.baseline.token"),
    ("token inside activation_of", _edit(TEXT, "queries[0].doi.baseline", {"activation_of": {"token": 0}}), "queries[0].doi.baseline.activation_of.token"),
    ("tol with steps", _edit(IMAGE, "queries[0].doi.tol", 0.01), "queries[0].doi.tol"),
    ("tol out of range", _edit(IMAGE, "queries[2].doi.tol", 1.0), "queries[2].doi.tol"),
    ("max_steps without tol", _edit(IMAGE, "queries[0].doi.max_steps", 64), "queries[0].doi.max_steps"),
    ("max_samples without tol", _edit(IMAGE, "queries[2].doi.max_samples", 64), "queries[2].doi.max_samples"),
    ("each not pointwise", _edit(IMAGE, "queries[1].doi.each", {"kind": "dataset"}), "queries[1].doi.each.kind"),
    ("inputs with a class DoI", _edit(IMAGE, "queries[1].inputs", {"limit": 3}), "queries[1].inputs"),
    ("anchor with a class DoI", _edit(IMAGE, "queries[1].output", {"top": {"anchor": 0}}), "queries[1].output.top.anchor"),
    ("checkpoint with a point DoI", _edit(IMAGE, "queries[0].checkpoint", "ig.ckpt"), "queries[0].checkpoint"),
    ("label and indices", _edit(IMAGE, "queries[0].inputs", {"label": 1, "indices": [0]}), "queries[0].inputs"),
    ("indices empty", _edit(IMAGE, "queries[0].inputs.indices", []), "queries[0].inputs.indices"),
    ("input slice cut at its input", _edit(IMAGE, "queries[0].slice", {"layer": None, "at": "input"}), "queries[0].slice.at"),
    ("slice an empty name", _edit(IMAGE, "queries[1].slice", ""), "queries[1].slice.layer"),
    ("name with a space", _edit(IMAGE, "queries[0].name", "my query"), "queries[0].name"),
    ("neuron index an empty list", _edit(IMAGE, "queries[0].qoi", {"kind": "neuron", "layer": "layer2", "index": []}), "queries[0].qoi.index"),
    ("linear without terms", _edit(IMAGE, "queries[0].qoi", {"kind": "linear", "terms": []}), "queries[0].qoi.terms"),
    ("selector negative", _edit(IMAGE, "queries[0].qoi.output", -1), "queries[0].qoi.output"),
    ("next_token negative", _edit(TEXT, "queries[1].qoi[0].token", -2), "queries[1].qoi[0].token"),
    ("continuation empty target", _edit(TEXT, "queries[1].qoi[1].target", []), "queries[1].qoi[1].target"),
    ("plots of an unknown kind", _edit(IMAGE, "queries[0].output.plots", ["heatmap"]), "queries[0].output.plots[0]"),
    ("audit_bars without audit", _edit(IMAGE, "queries[0].output.plots", ["audit_bars"]), "queries[0].output.plots[0]"),
    ("region with box and mask", _edit(IMAGE, "queries[0].output.regions", {"r": {"box": {"top": 0, "left": 0, "height": 3, "width": 3}, "mask": "mask"}}), "queries[0].output.regions.r"),
    ("box without width", _edit(IMAGE, "queries[0].output.regions", {"r": {"box": {"top": 0, "left": 0, "height": 3}}}), "queries[0].output.regions.r.box.width"),
    ("audit region of neither", _edit(IMAGE, "queries[0].output.audit", {"region": {"invert": True}}), "queries[0].output.audit.region"),
    ("audit of nothing", _edit(IMAGE, "queries[0].output.audit", {"factor": 2}), "queries[0].output.audit.region"),
    ("audit tokens not ids", _edit(TEXT, "queries[0].output.audit.tokens", ["zq"]), "queries[0].output.audit.tokens[0]"),
    ("essence k empty", _edit(IMAGE, "queries[1].output", {"essence": {"k": []}}), "queries[1].output.essence.k"),
    ("rankings unknown", _edit(IMAGE, "queries[1].output", {"essence": {"rankings": ["random"]}}), "queries[1].output.essence.rankings[0]"),
    ("curves with a class DoI", _edit(IMAGE, "queries[1].output", {"curves": {"steps": 4}}), "queries[1].output.curves"),
    ("tokens picture with a dataset DoI", _edit(_edit(TEXT, "queries[0].doi", {"kind": "dataset", "each": TEXT["queries"][0]["doi"]}), "queries[0].inputs"), "queries[0].output.plots[0]"),
]


def test_bad_suite_is_large() -> None:
    assert len(BAD) >= 20 and len({case[0] for case in BAD}) == len(BAD)


def test_the_bases_are_valid(folder: Path) -> None:
    """Each bad document is one edit away from a document both accept."""
    for doc in (IMAGE, TEXT):
        validate(doc, folder)
        assert schema_errors(doc) == []


@pytest.mark.parametrize("case", BAD, ids=[case[0] for case in BAD])
def test_bad_documents_are_refused_by_both(case: tuple[str, dict[str, Any], str], folder: Path) -> None:
    """``parse_query`` raises a ``QueryError`` at the field, and the schema refuses the
    document too."""
    _, doc, field = case
    with pytest.raises(QueryError) as info:
        validate(doc, folder)
    assert info.value.path == field, str(info.value)
    assert schema_errors(doc) != [], f"the schema accepts a document that validate refuses: {info.value}"


# --- never stricter than validate ------------------------------------------------------------------------


def _values(tree: Any) -> list[Any]:
    """Every value (and sub-value) of the valid documents, to move elsewhere."""
    out: list[Any] = []
    for path in _paths(tree)[1:]:
        node = tree
        for part in path:
            node = node[part]
        out.append(node)
    return out


_POOL = [json.loads(v) for v in sorted({json.dumps(v, sort_keys=True) for doc in VALID.values() for v in _values(doc)})]
_POOL += [None, True, False, 0, 1, 2, -1, 0.5, "1e-3", "0", "", "auto", "mean", "slice", "input", [], {}, [0], {"kind": "point"}]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_the_schema_never_refuses_what_validate_accepts(data: st.DataObject, folder: Path) -> None:
    """A valid document with one value replaced by a value from elsewhere (or a key
    dropped): if ``parse_query`` accepts it, so does the schema."""
    name = data.draw(st.sampled_from(sorted(VALID)))
    doc = copy.deepcopy(VALID[name])
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    target = doc
    for part in path[:-1]:
        target = target[part]
    if isinstance(target, dict) and data.draw(st.booleans()):
        del target[path[-1]]
    else:
        target[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(_POOL)))
    try:
        validate(doc, folder)
    except QueryError:
        return
    assert schema_errors(doc) == [], (name, path)
