"""YAML queries on text models: a Hugging Face model from a factory, token ids and masks
as a mapping of inputs, token strings for display.

The YAML results equal the same queries written with the Python API (BERT with padding
and a pad-token baseline; GPT-2 with the language-model QoIs); selecting rows keeps every
sentence's mask with its ids; every mistake names its field; ``influence run`` prints each
sentence's top tokens without padding, writes them to the JSON and to the report; and
``influence validate`` imports no ``transformers``.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from doi import ClassDoI, LineDoI, NoiseDoI, PointDoI
from influence import InfluenceResult, internal_influence
from influence.queries.cli import main
from influence.queries import QueryError, parse_query
from influence.text import baseline_ids, token_audit
from influence.text_data import CUE, VOCAB, lm_sentences, sentences, tiny_bert, tiny_gpt2, write_vocab
from qoi import ClassQoI, ComparativeQoI, ContinuationQoI, NextTokenQoI
from slices import Slice

ROOT = Path(__file__).resolve().parent.parent
EMBEDDING = "bert.embeddings.word_embeddings"
MAPPING = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


def bert_doc(*queries: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {
        "model": {"factory": "influence.text_data:tiny_bert", "kwargs": {"seed": 0}},
        "data": {"factory": "influence.text_data:sentences", "kwargs": {"n": 12}, "inputs": MAPPING, "labels": "labels", "tokens": "tokens", **data},
        "queries": list(queries),
    }


def gpt2_doc(*queries: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {
        "model": {"factory": "influence.text_data:tiny_gpt2", "kwargs": {"seed": 0}},
        "data": {"factory": "influence.text_data:lm_sentences", "kwargs": {"n": 4}, "inputs": ["input_ids"], "labels": None, "tokens": "tokens", **data},
        "queries": list(queries),
    }


def run_yaml(doc: dict[str, Any], folder: Path, index: int = 0) -> list[InfluenceResult]:
    return parse_query(doc, folder).prepare().build(index).run()


def built(doc: dict[str, Any], folder: Path, index: int = 0) -> Any:
    return parse_query(doc, folder).prepare().build(index)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def encoding(data: dict[str, Any], index: Any = None) -> dict[str, torch.Tensor]:
    x = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
    return x if index is None else {k: v[index] for k, v in x.items()}


# --- the examples, written in Python (test_cli.py runs both versions) ---------------------------


def python_queries(name: str) -> dict[str, list[InfluenceResult]]:
    """``examples/<name>.yaml``'s queries with the Python API."""
    if name == "text_classifier":
        model, d = tiny_bert(seed=0), sentences(24, split="train")
        slc = Slice(model, EMBEDDING)
        positive = encoding(d, torch.nonzero(d["labels"] == 1).flatten()[:4])
        line = LineDoI(slc.baseline(baseline_ids(positive, 0, [1, 2])), tol=0.01, space="slice")
        negative = encoding(d, [0, 2, 4])
        return {
            "ig_positive": [internal_influence(slc, ClassQoI(1), line, positive, multiply_activation=True, seed=0)],
            "saliency_negative": [internal_influence(slc, ComparativeQoI(0, 1, output="logits"), PointDoI(), negative, multiply_activation=True, seed=0)],
        }
    if name == "text_lm":
        model, d = tiny_gpt2(seed=0), lm_sentences(8)
        slc = Slice(model, "transformer.wte")
        first = d["input_ids"][:3]
        line = LineDoI(slc.baseline(baseline_ids(first, 0, [1])), steps=16, space="slice")
        qois = ContinuationQoI(d["ending"]).per_token()
        return {
            "why_great": [internal_influence(slc, NextTokenQoI(15, -2, log_prob=True), line, first, multiply_activation=True, seed=0)],
            "continuation_per_token": internal_influence(slc, qois, PointDoI(), (d["input_ids"][[0, 1]],), multiply_activation=True, seed=0),
        }
    raise AssertionError(f"no Python version of examples/{name}.yaml")


def test_the_text_examples_validate_and_explain_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both examples validate; the classifier's audit flags the planted token ``zq`` for
    the positive class only (the run itself is compared with Python in test_cli.py)."""
    for name in ("text_classifier", "text_lm"):
        code, out, err = cli(capsys, "validate", str(ROOT / "examples" / f"{name}.yaml"))
        assert code == 0 and out.startswith("ok: "), err
    code, out, err = cli(capsys, "run", str(ROOT / "examples" / "text_classifier.yaml"), "--out", str(tmp_path))
    assert code == 0, err
    audit = json.loads((tmp_path / "ig_positive.json").read_text())["audit"]
    flagged = {row["label"]: row["flagged"] for row in audit["rows"]}
    assert flagged == {0: False, 1: True}
    assert re.search(r"sentence 1 \(row 3\): 'zq' \+", out)


# --- YAML equals Python ----------------------------------------------------------------------------


def test_bert_with_padding_equals_python(tmp_path: Path) -> None:
    """A mapping of padded ids and masks at the word embeddings: integrated gradients from
    the pad-token baseline (``{token: 0, keep: [1, 2]}``: one baseline per sentence),
    SmoothGrad in the embedding space, and class-wide integrated gradients (a per-member
    baseline inside a class DoI) equal the Python API to 1e-10, in float64."""
    d = sentences(12)
    model = tiny_bert(seed=0)
    slc = Slice(model, EMBEDDING)
    line = {"kind": "line", "space": "slice", "baseline": {"token": 0, "keep": [1, 2]}, "steps": 8}
    common = {"slice": EMBEDDING, "multiply_activation": True, "dtype": "float64"}
    doc = bert_doc(
        {"doi": line, "qoi": {"kind": "class", "label": 1}, "inputs": {"indices": [5, 0, 3, 8]}, **common},
        {"doi": {"kind": "noise", "space": "slice", "sigma": 0.05, "samples": 4}, "qoi": {"kind": "comparative", "a": 0, "b": 1}, "inputs": {"limit": 3}, "seed": 3, **common},
        {"doi": {"kind": "class", "label": 1, "each": line}, "qoi": {"kind": "class", "label": 1}, **common},
    )
    qfile = parse_query(doc, tmp_path)
    session = qfile.prepare()
    assert bool((d["attention_mask"] == 0).any())  # padded sentences
    x = encoding(d, [5, 0, 3, 8])
    want = internal_influence(slc, ClassQoI(1), LineDoI(slc.baseline(baseline_ids(x, 0, [1, 2])), 8, space="slice"), x, multiply_activation=True, dtype=torch.float64)
    (got,) = session.build(0).run()
    close(got.values, want.values)
    close(got.completeness, want.completeness)
    pad = x["attention_mask"] == 0
    assert bool((got.values[pad] == 0).all())  # padding equals the baseline: no attribution
    assert float(got.completeness.max()) < 1e-3  # 8 Gauss-Legendre nodes
    noisy = internal_influence(slc, ComparativeQoI(0, 1), NoiseDoI(0.05, 4, space="slice"), encoding(d, slice(0, 3)), multiply_activation=True, dtype=torch.float64, seed=3)
    (got,) = session.build(1).run()
    close(got.values, noisy.values)
    close(got.stderr, noisy.stderr)
    members = torch.nonzero(d["labels"] == 1).flatten()
    each = LineDoI(slc.baseline(baseline_ids(encoding(d, members), 0, [1, 2])), 8, space="slice")
    pooled = internal_influence(slc, ClassQoI(1), ClassDoI((encoding(d), d["labels"]), 1, each=each), multiply_activation=True, dtype=torch.float64)
    (got,) = session.build(2).run()
    close(got.values, pooled.values)
    assert got.pooled and got.anchors == members.numel()


def test_gpt2_language_qois_equal_python(tmp_path: Path) -> None:
    """next_token (logit and log-probability, any position) and continuation (target as
    ids or as a data array, summed or per token) equal their Python QoIs; ids given as
    one array (``inputs: input_ids``) stay integers for a model with an embedding."""
    d = lm_sentences(4)
    model = tiny_gpt2(seed=0)
    slc = Slice(model, "transformer.wte")
    ids = d["input_ids"]
    ending = d["ending"].tolist()
    line = {"kind": "line", "space": "slice", "baseline": {"token": 0, "keep": [1]}, "steps": 6}
    common = {"slice": "transformer.wte", "multiply_activation": True, "dtype": "float64"}
    cases = [
        ({"kind": "next_token", "token": 15}, NextTokenQoI(15), "point"),
        ({"kind": "next_token", "token": 15, "position": -2, "log_prob": True}, NextTokenQoI(15, -2, log_prob=True), line),
        ({"kind": "continuation", "target": ending}, ContinuationQoI(ending), line),
        ({"kind": "continuation", "target": "ending", "per_token": True}, ContinuationQoI(ending).per_token(), "point"),
    ]
    for layout in (["input_ids"], "input_ids", {"input_ids": "input_ids"}):
        doc = gpt2_doc(*({"doi": doi, "qoi": q, **common} for q, _, doi in cases), inputs=layout)
        session = parse_query(doc, tmp_path).prepare()
        x = (ids,) if isinstance(layout, list) else ids if isinstance(layout, str) else {"input_ids": ids}
        assert session.data.x.__class__ is x.__class__ and session.data.ids.dtype == torch.long
        base = slc.baseline(baseline_ids(x, 0, [1]))
        for i, (_, qoi, doi) in enumerate(cases):
            want = internal_influence(slc, qoi, PointDoI() if doi == "point" else LineDoI(base, 6, space="slice"), x, multiply_activation=True, dtype=torch.float64)
            want = want if isinstance(want, list) else [want]
            got = session.build(i).run()
            assert len(got) == len(want) == (2 if i == 3 else 1)
            for g, w in zip(got, want):
                close(g.values, w.values)
                assert g.query["qoi"] == w.query["qoi"]


# --- rows travel with their masks ------------------------------------------------------------------


def test_selection_and_classes_keep_masks_with_their_ids(tmp_path: Path) -> None:
    """``inputs: {indices}``, ``{label, limit}`` and ``data.classes`` take every tensor of
    the mapping (and the token strings) row by row; the result is each sentence's own."""
    d = sentences(12)
    query = {"slice": EMBEDDING, "doi": "point", "qoi": {"kind": "class", "label": 0}, "multiply_activation": True}
    picked = built(bert_doc({**query, "inputs": {"indices": [7, 1, 4]}}), tmp_path)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(picked.inputs[key], d[key][[7, 1, 4]])
    (got,) = picked.run()
    want = internal_influence(Slice(tiny_bert(seed=0), EMBEDDING), ClassQoI(0), PointDoI(), encoding(d, [7, 1, 4]), multiply_activation=True)
    assert torch.equal(got.values, want.values)
    label = built(bert_doc({**query, "inputs": {"label": 1, "limit": 2}}), tmp_path)
    assert torch.equal(label.inputs["attention_mask"], d["attention_mask"][d["labels"] == 1][:2])
    filtered = built(bert_doc({**query, "inputs": {"indices": [0, 2]}}, classes=[1]), tmp_path)
    members = torch.nonzero(d["labels"] == 1).flatten()
    assert torch.equal(filtered.data.x["input_ids"], d["input_ids"][members])
    assert torch.equal(filtered.data.x["attention_mask"], d["attention_mask"][members])
    assert filtered.data.tokens == [d["tokens"][i] for i in members.tolist()]
    assert torch.equal(filtered.inputs["attention_mask"], d["attention_mask"][members[[0, 2]]])


def test_data_from_a_file_with_a_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ids and masks from an ``.npz`` (integers stay integers), token strings from a
    vocabulary file: the printed tokens are its lines; without ``tokens`` they are ids."""
    d = sentences(6)
    np.savez(
        tmp_path / "text.npz", ids=d["input_ids"].numpy().astype(np.int32), mask=d["attention_mask"].numpy(), y=d["labels"].numpy(),
        short=d["attention_mask"][:5].numpy(),
    )  # fmt: skip
    write_vocab(tmp_path / "vocab.txt")
    query = {"name": "q", "slice": EMBEDDING, "doi": "point", "qoi": {"kind": "class", "label": 1}, "inputs": {"indices": [1]}, "output": {"save": False}}
    doc = bert_doc(query)
    doc["data"] = {"path": "text.npz", "inputs": {"input_ids": "ids", "attention_mask": "mask"}, "tokens": {"vocab": "vocab.txt"}}
    path = tmp_path / "q.yaml"
    session = parse_query(doc, tmp_path).prepare()
    assert session.data.x["input_ids"].dtype == torch.int32 and session.data.x["attention_mask"].dtype == torch.int64
    with pytest.raises(QueryError, match=r"^data\.inputs\.attention_mask: array 'short' has 5 rows but 'ids' has 6"):
        parse_query(_edit(doc, "data.inputs.attention_mask", "short"), tmp_path).prepare()
    path.write_text(yaml.safe_dump(doc))
    code, out, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    words = [VOCAB[t] for t, m in zip(d["input_ids"][1].tolist(), d["attention_mask"][1].tolist()) if m]
    line = next(l for l in out.splitlines() if l.startswith("  sentence 0 (row 1): "))
    shown = re.findall(r"'([^']*)' [+-]", line)
    assert shown and set(shown) <= set(words) and "[PAD]" not in shown
    torch.save({"ids": d["input_ids"], "mask": d["attention_mask"], "words": d["tokens"]}, tmp_path / "text.pt")  # a .pt file too
    from_pt = parse_query(_edit(_edit(doc, "data.path", "text.pt"), "data.tokens", "words"), tmp_path).prepare().data
    assert torch.equal(from_pt.x["input_ids"], d["input_ids"]) and from_pt.tokens == d["tokens"]
    del doc["data"]["tokens"]
    path.write_text(yaml.safe_dump(doc))
    code, out, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    line = next(l for l in out.splitlines() if l.startswith("  sentence 0 (row 1): "))
    assert re.match(r"  sentence 0 \(row 1\): #\d+ [+-]", line) and "#0 " not in line


# --- what influence run prints and writes ---------------------------------------------------------


def test_run_prints_top_tokens_without_padding_and_writes_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Per explained sentence: its top tokens by |attribution| as strings, padding
    dropped; the JSON's ``tokens`` hold every real token's attribution (the sum over its
    features); ``plots: [tokens]`` and ``report`` show the heatmaps."""
    d = sentences(12)
    rows = [0, 3, 6]
    query = {
        "name": "ig", "slice": EMBEDDING, "doi": {"kind": "line", "space": "slice", "baseline": {"token": 0}, "steps": 4},
        "qoi": {"kind": "class", "label": 1}, "inputs": {"indices": rows}, "multiply_activation": True,
        "output": {"top": {"k": 3}, "plots": ["tokens"], "report": True},
    }  # fmt: skip
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(bert_doc(query)))
    code, out, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "ig.json").read_text())["results"][0]
    result = InfluenceResult.load(tmp_path / "out" / "ig.pt")
    per_token = result.token_attributions()
    for i, row in enumerate(rows):
        real = d["attention_mask"][row].bool()
        entry = report["tokens"][i]
        assert entry["row"] == row and entry["tokens"] == [t for t, r in zip(d["tokens"][row], real.tolist()) if r]
        assert entry["values"] == per_token[i][real].tolist() and "[PAD]" not in entry["tokens"]
        line = next(l for l in out.splitlines() if l.startswith(f"  sentence {i} (row {row}): "))
        shown = re.findall(r"'([^']*)' ([+-][\d.e+-]+)", line)
        order = sorted(range(len(entry["values"])), key=lambda j: -abs(entry["values"][j]))[:3]
        assert [t for t, _ in shown] == [entry["tokens"][j] for j in order]
    page = (tmp_path / "out" / "ig.tokens.html").read_text()
    assert page.count("<span title=") == int(d["attention_mask"][rows].sum())
    assert (tmp_path / "out" / "ig.tokens.png").read_bytes().startswith(b"\x89PNG")
    assert "ig.tokens.png" in out.strip().splitlines()[-1] or "..." in out.strip().splitlines()[-1]
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<span title=") == int(d["attention_mask"][rows].sum()) and "influence-html-block" not in html
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"^row 3: `\[CLS\]` [+-][\d.e+-]+, `", markdown, re.M) and "influence-html-block" not in markdown


def test_token_audit_equals_python(tmp_path: Path) -> None:
    """``output.audit: {tokens: [ids]}`` is :func:`influence.text.token_audit` with the
    query's line (its token baseline, keep ids and steps)."""
    d = sentences(12, split="train")
    query = {
        "slice": EMBEDDING, "doi": {"kind": "line", "space": "slice", "baseline": {"token": 0, "keep": [1, 2]}, "steps": 4},
        "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 1}, "multiply_activation": True,
        "output": {"audit": {"tokens": [CUE], "factor": 2}},
    }  # fmt: skip
    doc = bert_doc(query)
    doc["data"]["kwargs"] = {"n": 12, "split": "train"}
    query_built = built(doc, tmp_path)
    from influence.queries._outputs import Extras

    analyses, _, text = Extras(tmp_path, "q").run(query_built, query_built.run())
    want = token_audit(tiny_bert(seed=0), (encoding(d), d["labels"]), [CUE], embedding=EMBEDDING, keep=[1, 2], factor=2, steps=4)
    assert analyses["audit"] == want.to_dict()
    assert "audit of region tokens" in text


def test_layers_of_a_text_query(capsys: pytest.CaptureFixture[str]) -> None:
    """``influence layers`` runs a text query file's model on one sentence (a mapping)."""
    code, out, err = cli(capsys, "layers", str(ROOT / "examples" / "text_classifier.yaml"))
    assert code == 0, err
    assert "input_ids: (12,)" in out and re.search(r"bert\.embeddings\.word_embeddings\s+Embedding\s+\(12, 32\)", out)


# --- errors name their field -------------------------------------------------------------------


def _edit(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    target = doc
    for p in parts[:-1]:
        target = target[p]
    target[parts[-1]] = value
    return doc


LINE = {"kind": "line", "space": "slice", "baseline": {"token": 0, "keep": [1, 2]}, "steps": 2}
BASE = bert_doc({"slice": EMBEDDING, "doi": LINE, "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 2}})
LM = gpt2_doc({"slice": "transformer.wte", "doi": "point", "qoi": {"kind": "next_token", "token": 3}, "inputs": {"limit": 2}})

# (name, document, field, part of the message, found without loading anything)
ERRORS = [
    ("negative token", _edit(BASE, "queries.0.doi.baseline.token", -1), "queries[0].doi.baseline.token", "token id", True),
    ("token not an int", _edit(BASE, "queries.0.doi.baseline.token", "pad"), "queries[0].doi.baseline.token", "token id", True),
    ("bad keep id", _edit(BASE, "queries.0.doi.baseline.keep", [1, 2.5]), "queries[0].doi.baseline.keep[1]", "token id", True),
    ("keep alone", _edit(BASE, "queries.0.doi.baseline", {"mean": "data", "keep": [1]}), "queries[0].doi.baseline.keep", "{token: ID, keep: [IDS]} only", True),
    ("token in input space", _edit(BASE, "queries.0.doi.space", "input"), "queries[0].doi.baseline", "space: slice", True),
    ("token in activation_of", _edit(BASE, "queries.0.doi.baseline", {"activation_of": {"token": 0}}), "queries[0].doi.baseline.activation_of.token", "without activation_of", True),
    ("input-space line on a mapping", _edit(BASE, "queries.0.doi", {"kind": "line", "steps": 2}), "queries[0].doi.space", "space: slice", True),
    (
        "input-space noise in a class DoI",
        _edit(_edit(BASE, "queries.0.doi", {"kind": "class", "label": 1, "each": {"kind": "noise"}}), "queries.0.inputs", None),
        "queries[0].doi.each.space", "space: slice", True,
    ),
    ("input slice for a mapping", _edit(BASE, "queries.0.slice", None), "queries[0].slice", "word embeddings", True),
    ("graph realisation for a mapping", _edit(BASE, "queries.0.slice", {"layer": EMBEDDING, "realisation": "graph"}), "queries[0].slice.realisation", "hook", True),
    ("inputs not names", _edit(BASE, "data.inputs", {"input_ids": 3}), "data.inputs.input_ids", "an array name", True),
    ("inputs empty list", _edit(BASE, "data.inputs", []), "data.inputs", "empty", True),
    ("inputs odd key", _edit(BASE, "data.inputs", {"input-ids": "input_ids"}), "data.inputs", "argument names", True),
    ("tokens not a name", _edit(BASE, "data.tokens", 3), "data.tokens", "array of token strings", True),
    ("tokens vocab missing", _edit(BASE, "data.tokens", {"vocab": "nope.txt"}), "data.tokens.vocab", "file not found", True),
    ("tokens odd key", _edit(BASE, "data.tokens", {"vocabulary": "v.txt"}), "data.tokens.vocabulary", "did you mean 'vocab'", True),
    ("next_token id", _edit(LM, "queries.0.qoi.token", -2), "queries[0].qoi.token", "token id", True),
    ("next_token position", _edit(LM, "queries.0.qoi.position", "last"), "queries[0].qoi.position", "an int", True),
    ("continuation target", _edit(LM, "queries.0.qoi", {"kind": "continuation", "target": []}), "queries[0].qoi.target", "non-empty list of token ids", True),
    (
        "per_token in linear",
        _edit(LM, "queries.0.qoi", {"kind": "linear", "terms": [{"qoi": {"kind": "continuation", "target": [3], "per_token": True}}]}),
        "queries[0].qoi.terms[0].qoi.per_token", "one QoI", True,
    ),
    ("token audit without a token line", _edit(_edit(BASE, "queries.0.doi", "point"), "queries.0.output", {"audit": {"tokens": [CUE]}}), "queries[0].output.audit.tokens", "baseline: {token", True),
    ("token audit at the input", _edit(_edit(BASE, "queries.0.slice", None), "queries.0.output", {"audit": {"tokens": [CUE]}}), "queries[0].output.audit.tokens", "embedding", True),
    ("audit region and tokens", _edit(BASE, "queries.0.output", {"audit": {"tokens": [CUE], "region": {"box": {"top": 0, "left": 0, "height": 1, "width": 1}}}}), "queries[0].output.audit.tokens", "not both", True),
    ("tokens plot at the input", _edit(_edit(BASE, "queries.0.slice", None), "queries.0.output", {"plots": ["tokens"]}), "queries[0].output.plots[0]", "embedding", True),
    (
        "tokens plot pooled",
        _edit(_edit(_edit(BASE, "queries.0.doi", {"kind": "dataset", "each": LINE}), "queries.0.inputs", None), "queries.0.output", {"plots": ["tokens"]}),
        "queries[0].output.plots[0]", "one attribution per sentence", True,
    ),
    # found when the model and data are loaded
    ("mask array missing", _edit(BASE, "data.inputs", {"input_ids": "input_ids", "attention_mask": "mask"}), "data.inputs.attention_mask", "no array 'mask'", False),
    ("mask not numbers", _edit(BASE, "data.inputs", {"input_ids": "input_ids", "attention_mask": "vocab"}), "data.inputs.attention_mask", "not an array of numbers", False),
    ("token outside the vocabulary", _edit(BASE, "queries.0.doi.baseline.token", 999), "queries[0].doi.baseline.token", "IndexError", False),
    ("tokens rows", _edit(BASE, "data.tokens", "vocab"), "data.tokens", "token strings of each of the 12 points", False),
    ("tokens are numbers", _edit(BASE, "data.tokens", "labels"), "data.tokens", "holds numbers", False),
    ("next_token outside the vocabulary", _edit(LM, "queries.0.qoi.token", 99), "queries[0].qoi", "outside a vocabulary", False),
    ("continuation too long", _edit(LM, "queries.0.qoi", {"kind": "continuation", "target": [3] * 9}), "queries[0].qoi", "longer input", False),
    ("continuation array missing", _edit(LM, "queries.0.qoi", {"kind": "continuation", "target": "end"}), "queries[0].qoi.target", "no array 'end'", False),
    ("continuation array not ids", _edit(LM, "queries.0.qoi", {"kind": "continuation", "target": "attention_mask"}), "queries[0].qoi.target", "1-D ints", False),
    ("input-space line on token ids", _edit(_edit(LM, "data.inputs", "input_ids"), "queries.0.doi", {"kind": "line", "steps": 2}), "queries[0].doi.space", "space: slice", False),
    ("input slice on token ids", _edit(_edit(LM, "data.inputs", "input_ids"), "queries.0.slice", None), "queries[0].slice", "transformer.wte", False),
    ("vocab of a mapping without ids", _edit(_edit(BASE, "data.inputs", {"attention_mask": "attention_mask", "token_type_ids": "input_ids"}), "data.tokens", {"vocab": "vocab.txt"}), "data.tokens", "holds none", False),
]


@pytest.mark.parametrize("name, doc, field, message, static", ERRORS, ids=[case[0] for case in ERRORS])
def test_errors_name_their_field(name: str, doc: dict[str, Any], field: str, message: str, static: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each mistake is a QueryError at its field (at validation when nothing needs
    loading), and ``influence run`` exits 2 with one line naming it."""
    write_vocab(tmp_path / "vocab.txt")
    if static:
        with pytest.raises(QueryError) as info:
            parse_query(doc, tmp_path)
    else:
        qfile = parse_query(doc, tmp_path)
        with pytest.raises(QueryError) as info:
            qfile.prepare().build(0)
    assert info.value.path == field and message in info.value.message, str(info.value)
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith(f"error: {field}: ") and err.count("\n") == 1, err


def test_input_space_line_on_token_ids_names_the_embedding(tmp_path: Path) -> None:
    """The refusal of an input-space line on integer ids names the embedding slice and
    the token baseline to use instead."""
    doc = _edit(_edit(LM, "data.inputs", "input_ids"), "queries.0.doi", {"kind": "line", "steps": 2})
    with pytest.raises(QueryError, match=r"space: slice with slice: transformer\.wte and baseline: \{token: 0\}"):
        parse_query(doc, tmp_path).prepare().build(0)


# --- validation loads nothing heavy -----------------------------------------------------------------


def test_validate_does_not_import_transformers(tmp_path: Path) -> None:
    """``influence validate`` on the text examples imports neither transformers nor the
    model factories' modules' heavy parts; importing the core does not either."""
    code = (
        "import sys\n"
        "from influence.queries.cli import main\n"
        "import influence, influence.queries, influence.text, influence.text_data\n"
        f"assert main(['validate', {str(ROOT / 'examples' / 'text_classifier.yaml')!r}]) == 0\n"
        f"assert main(['validate', {str(ROOT / 'examples' / 'text_lm.yaml')!r}]) == 0\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
