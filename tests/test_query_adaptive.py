"""``tol`` in YAML queries: a line (or noise) DoI whose steps each point chooses.

``doi: {kind: line, baseline: 0.0, tol: 0.01}`` is ``LineDoI(0.0, tol=0.01)``, bit for bit
(values, steps per anchor, completeness, ``tol_missed``), alone and as a class DoI's
``each``; ``tol`` with ``steps`` or ``rule``, a cap without ``tol``, and values out of
range are ``QueryError``s naming their field (``influence validate`` finds them); and
``influence run`` prints the steps per anchor next to the completeness gap and writes
them, with ``tol_missed``, into the query's JSON.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI
from influence import InfluenceResult, input_influence, internal_influence
from influence.queries.cli import main
from influence.queries import DOI_KINDS, QueryError, parse_query
from models import res_cnn
from qoi import ClassQoI
from slices import Slice


NETS = """
from torch import nn
from models import res_cnn

def relu_cnn(seed=0):
    return res_cnn(seed=seed, act=nn.ReLU)
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.npz: 12 points (3, 8, 8), labels 0..2; adaptive_nets.py: the ReLU residual CNN (on its
    lines the anchors need from 8 to a few hundred steps for tol 0.01)."""
    root = tmp_path_factory.mktemp("queries")
    g = np.random.default_rng(0)
    np.savez(root / "data.npz", x=g.standard_normal((12, 3, 8, 8)).astype(np.float32), y=np.arange(12) % 3)
    (root / "adaptive_nets.py").write_text(NETS)
    return root


@pytest.fixture(scope="module")
def data(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = np.load(folder / "data.npz")
    return torch.as_tensor(arrays["x"]), torch.as_tensor(arrays["y"])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return res_cnn(seed=0, act=nn.ReLU).eval()


def document(*queries: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"factory": "adaptive_nets:relu_cnn", "kwargs": {"seed": 0}}, "data": {"path": "data.npz"}, "queries": list(queries)}


def run_yaml(doc: dict[str, Any], folder: Path, index: int = 0) -> list[InfluenceResult]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # anchors that miss tol (compared below)
        return parse_query(doc, folder).prepare().build(index).run()


def quietly(fn: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn()


def assert_same(got: InfluenceResult, want: InfluenceResult) -> None:
    """Bit for bit: values, stderr, steps, completeness, samples, the query record."""
    assert torch.equal(got.values, want.values)
    assert torch.equal(got.stderr, want.stderr)
    assert got.steps is not None and want.steps is not None and torch.equal(got.steps, want.steps)
    assert (got.completeness is None) == (want.completeness is None)
    if got.completeness is not None:
        assert torch.equal(got.completeness, want.completeness)
    assert got.samples == want.samples == int(got.steps.sum())
    assert got.query["doi"] == want.query["doi"]
    assert got.query["tol_missed"] == want.query["tol_missed"]


# --- YAML equals Python ---------------------------------------------------------------------


@pytest.mark.parametrize("tol", [0.01, "1e-2"])
def test_line_tol_equals_python(tol: Any, folder: Path, model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``{kind: line, baseline: 0.0, tol: 0.01}`` (also ``tol: 1e-2``, which YAML reads as
    text) with ``multiply_activation`` is ``LineDoI(0.0, tol=0.01)``: the same values,
    steps per anchor and completeness gaps."""
    query = {"doi": {"kind": "line", "baseline": 0.0, "tol": tol}, "qoi": {"kind": "class", "label": 1}, "inputs": {"limit": 6}, "multiply_activation": True}
    (got,) = run_yaml(document(query), folder)
    want = input_influence(model, ClassQoI(1), LineDoI(0.0, tol=0.01), data[0][:6], multiply_activation=True, seed=0)
    assert_same(got, want)
    assert got.query["doi"] == "LineDoI(baseline=0.0, tol=0.01, max_steps=1024, space='input')"
    assert got.steps.shape == (6,) and int(got.steps.min()) == 8 and int(got.steps.max()) > 8  # easy and hard anchors


def test_line_tol_max_steps_at_a_layer_without_multiply(folder: Path, model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``max_steps`` reaches the line; without ``multiply_activation`` (successive
    estimates agree), in the slice space of a layer; anchors that miss are counted alike."""
    query = {"slice": "layer1", "doi": {"kind": "line", "tol": "1e-4", "max_steps": 40, "space": "slice"}, "qoi": {"kind": "class", "label": 2}, "inputs": {"indices": [1, 4, 7]}}
    (got,) = run_yaml(document(query), folder)
    doi = LineDoI(0.0, tol=1e-4, max_steps=40, space="slice")
    want = quietly(lambda: internal_influence(Slice(model, "layer1"), ClassQoI(2), doi, data[0][[1, 4, 7]], seed=0))
    assert_same(got, want)
    assert got.completeness is None and int(got.steps.max()) <= 40


def test_tol_inside_a_class_dois_each(folder: Path, model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``{kind: class, label: 1, each: {kind: line, tol: 0.01}}`` is ``ClassDoI(..., each=
    LineDoI(0.0, tol=0.01))``: pooled values, the members' steps (sorted), completeness."""
    query = {"doi": {"kind": "class", "label": 1, "each": {"kind": "line", "tol": 0.01}}, "qoi": {"kind": "class", "label": 1}, "multiply_activation": True}
    (got,) = run_yaml(document(query), folder)
    want = internal_influence(Slice(model, None), ClassQoI(1), ClassDoI(data, 1, each=LineDoI(0.0, tol=0.01)), multiply_activation=True, seed=0)
    assert_same(got, want)
    assert got.pooled and got.steps.shape == (4,) and torch.equal(got.steps, got.steps.sort().values)


def test_noise_tol_equals_python(folder: Path, model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``{kind: noise, samples: 8, tol: 0.2, max_samples: 64}`` (rounds of 8 samples until
    the standard error is within tol) is ``NoiseDoI(0.1, 8, tol=0.2, max_samples=64)``,
    also as a dataset DoI's ``each``."""
    noise = {"kind": "noise", "samples": 8, "tol": 0.2, "max_samples": 64}
    query = {"doi": noise, "qoi": {"kind": "class", "label": 0}, "inputs": {"limit": 3}, "seed": 3}
    (got,) = run_yaml(document(query), folder)
    want = quietly(lambda: input_influence(model, ClassQoI(0), NoiseDoI(0.1, 8, tol=0.2, max_samples=64), data[0][:3], seed=3))
    assert_same(got, want)
    assert set(got.steps.tolist()) <= set(range(8, 65, 8))
    (pooled,) = run_yaml(document({**query, "doi": {"kind": "dataset", "each": noise}, "inputs": None}), folder)
    want = quietly(lambda: input_influence(model, ClassQoI(0), DatasetDoI(data, each=NoiseDoI(0.1, 8, tol=0.2, max_samples=64)), seed=3))
    assert_same(pooled, want)


def test_the_spec_holds_the_keys_that_apply(folder: Path) -> None:
    """The validated spec (the JSON's "query as run") holds ``tol`` and ``max_steps`` and
    not ``steps``/``rule`` for an adaptive line, the reverse for a fixed one; it
    validates again to itself."""
    adaptive = parse_query(document({"doi": {"kind": "line", "tol": 0.01}, "qoi": "max_class"}), folder).queries[0]
    assert adaptive.doi == {"kind": "line", "baseline": 0.0, "tol": 0.01, "max_steps": 1024, "space": "input"}
    fixed = parse_query(document({"doi": "line", "qoi": "max_class"}), folder).queries[0]
    assert fixed.doi == {"kind": "line", "baseline": 0.0, "steps": 32, "rule": "gauss-legendre", "space": "input"}
    noise = parse_query(document({"doi": {"kind": "class", "label": 0, "each": {"kind": "noise", "tol": 0.1}}, "qoi": "max_class"}), folder).queries[0]
    assert noise.doi["each"] == {"kind": "noise", "sigma": 0.1, "samples": 32, "sampler": "sobol", "replicates": None, "tol": 0.1, "max_samples": None, "space": "input"}
    for spec in (adaptive, fixed, noise):
        echo = spec.echo()
        again = parse_query(document({"doi": echo["doi"], "qoi": echo["qoi"]}), folder).queries[0]
        assert again.doi == spec.doi


# --- mistakes name their field ------------------------------------------------------------------

ERRORS = [
    ({"kind": "line", "tol": 0.01, "steps": 16}, "queries[0].doi.tol", "chooses each point's steps and rule; give tol or steps, not both (cap the work with max_steps)"),
    ({"kind": "line", "tol": 0.01, "rule": "midpoint"}, "queries[0].doi.tol", "give tol or rule, not both"),
    ({"kind": "line", "tol": 0.01, "steps": 16, "rule": "midpoint"}, "queries[0].doi.tol", "give tol or steps and rule, not both"),
    ({"kind": "line", "max_steps": 64}, "queries[0].doi.max_steps", "caps the work that tol chooses per point; give tol too, or remove max_steps"),
    ({"kind": "line", "tol": 1.0}, "queries[0].doi.tol", "must be null or a number in (0, 1) (got 1.0)"),
    ({"kind": "line", "tol": 0}, "queries[0].doi.tol", "must be null or a number in (0, 1) (got 0)"),
    ({"kind": "line", "tol": "tight"}, "queries[0].doi.tol", "must be null or a number in (0, 1) (got 'tight')"),
    ({"kind": "line", "tol": True}, "queries[0].doi.tol", "must be null or a number in (0, 1) (got True)"),
    ({"kind": "line", "tol": 0.01, "max_steps": 4}, "queries[0].doi.max_steps", "must be an int >= 8 (got 4)"),
    ({"kind": "class", "label": 1, "each": {"kind": "line", "tol": 0.01, "steps": 4}}, "queries[0].doi.each.tol", "give tol or steps, not both"),
    ({"kind": "dataset", "each": {"kind": "line", "max_steps": 16}}, "queries[0].doi.each.max_steps", "give tol too"),
    ({"kind": "noise", "tol": 0.1, "samples": 1}, "queries[0].doi.tol", "tol needs a standard error: at least 2 groups per round"),
    ({"kind": "noise", "tol": 0.1, "samples": 64, "max_samples": 32}, "queries[0].doi.max_samples", "max_samples must be >= 64 (got 32)"),
    ({"kind": "noise", "max_samples": 64}, "queries[0].doi.max_samples", "give tol too"),
]


@pytest.mark.parametrize("doi, path, words", ERRORS, ids=[f"{e[1].split('doi.')[-1]}-{i}" for i, e in enumerate(ERRORS)])
def test_errors_name_their_field(doi: dict[str, Any], path: str, words: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``parse_query`` raises a ``QueryError`` at the field, and ``influence validate``
    exits 2 with that one line."""
    doc = document({"doi": doi, "qoi": "max_class"})
    with pytest.raises(QueryError) as info:
        parse_query(doc, folder)
    assert info.value.path == path and words in info.value.message
    (folder / "bad.yaml").write_text(yaml.safe_dump(doc))
    code = main(["validate", str(folder / "bad.yaml")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith(f"error: {path}: ") and err.count("\n") == 1


def test_validate_accepts_adaptive_queries(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = document(
        {"doi": {"kind": "line", "tol": "1e-3", "max_steps": 256}, "qoi": "max_class"},
        {"doi": {"kind": "class", "label": 0, "each": {"kind": "line", "tol": 0.01, "space": "slice"}}, "slice": "layer1", "qoi": "max_class"},
        {"doi": {"kind": "noise", "samples": 16, "tol": 0.05, "max_samples": 128}, "qoi": "max_class"},
    )
    (folder / "good.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(folder / "good.yaml")]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_every_adaptive_kind_documents_its_keys() -> None:
    """The kinds that take ``tol`` list it (and their cap) in their schema, so the README
    schema test and the did-you-mean hints see them."""
    adaptive = {name: kind.adaptive for name, kind in DOI_KINDS.items() if kind.adaptive is not None}
    assert {name: a.cap.name for name, a in adaptive.items()} == {"line": "max_steps", "noise": "max_samples"}
    for name, a in adaptive.items():
        assert {"tol", a.cap.name} <= set(DOI_KINDS[name].schema.names)


# --- influence run: the printed line and the JSON -------------------------------------------------


RUN = """
model: {factory: "adaptive_nets:relu_cnn", kwargs: {seed: 0}}
data: {path: data.npz}
queries:
  - name: ig
    doi: {kind: line, baseline: 0.0, tol: 0.01}
    qoi: {kind: class, label: 1}
    inputs: {limit: 5}
    multiply_activation: true
  - name: pooled
    doi: {kind: class, label: 1, each: {kind: line, tol: 1e-2}}
    qoi: {kind: class, label: 1}
    multiply_activation: true
  - name: capped
    doi: {kind: line, tol: 1e-9, max_steps: 8}
    qoi: {kind: class, label: 1}
    inputs: {limit: 3}
    multiply_activation: true
  - name: fixed
    doi: {kind: line, steps: 4}
    qoi: {kind: class, label: 1}
    inputs: {limit: 2}
    multiply_activation: true
"""

STEPS_LINE = re.compile(r"^  adaptive steps per anchor: mean (\d+\.\d), max (\d+) \(tol (1e-2|1e-9)\); (\d+) anchors? missed tol$")


def test_run_prints_the_steps_and_writes_them(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Next to the completeness line, ``adaptive steps per anchor: mean M, max X (tol
    1e-2); K anchors missed tol``; the JSON has ``steps: {mean, max, per_point}`` (pooled:
    ``histogram`` of steps to anchors) and ``tol_missed``, equal to the saved result's.
    A query with fixed steps has neither."""
    (folder / "run.yaml").write_text(RUN)
    out_dir = folder / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["run", str(folder / "run.yaml"), "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len([w for w in caught if "did not reach tol=1e-09" in str(w.message)]) == 1  # the capped query, once
    blocks = {block.split(":")[0]: block.splitlines() for block in out.strip().split("\n\n")}
    for name in ("ig", "pooled", "capped"):
        lines = blocks[name]
        at = [i for i, line in enumerate(lines) if line.startswith("  adaptive")]
        assert len(at) == 1 and lines[at[0] - 1].startswith("  completeness gap"), lines
        mean, high, tol, missed = STEPS_LINE.match(lines[at[0]]).groups()  # type: ignore[union-attr]
        report = json.loads((out_dir / f"{name}.json").read_text())
        (entry,) = report["results"]
        result = InfluenceResult.load(out_dir / f"{name}.pt")
        assert result.steps is not None
        steps = entry["steps"]
        assert steps["mean"] == pytest.approx(float(result.steps.double().mean())) and f"{steps['mean']:.1f}" == mean
        assert steps["max"] == int(result.steps.max()) == int(high)
        assert entry["tol_missed"] == result.query["tol_missed"] == int(missed)
        if name == "pooled":
            assert set(steps) == {"mean", "max", "histogram"}
            assert sum(steps["histogram"].values()) == result.anchors == 4 and len(steps["histogram"]) > 1
            assert [int(k) for k in steps["histogram"]] == sorted(set(result.steps.tolist()))
        else:
            assert set(steps) == {"mean", "max", "per_point"} and steps["per_point"] == result.steps.tolist()
        assert tol == ("1e-9" if name == "capped" else "1e-2")
    assert next(line for line in blocks["capped"] if line.startswith("  adaptive")).endswith("3 anchors missed tol")
    assert json.loads((out_dir / "ig.json").read_text())["query"]["doi"] == {"kind": "line", "baseline": 0.0, "tol": 0.01, "max_steps": 1024, "space": "input"}
    fixed = json.loads((out_dir / "fixed.json").read_text())["results"][0]
    assert "steps" not in fixed and "tol_missed" not in fixed and "completeness" in fixed
    assert not any(line.startswith("  adaptive") for line in blocks["fixed"])


def test_run_prints_samples_for_a_noise_tol(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A noise DoI with ``tol`` (no completeness line): ``adaptive samples per anchor``."""
    doc = document({"name": "sg", "doi": {"kind": "noise", "samples": 8, "tol": 0.2, "max_samples": 32}, "qoi": {"kind": "class", "label": 0}, "inputs": {"limit": 2}})
    (folder / "noise.yaml").write_text(yaml.safe_dump(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code = main(["run", str(folder / "noise.yaml"), "--out", str(folder / "out_noise")])
    out, err = capsys.readouterr()
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("  adaptive")]
    assert re.fullmatch(r"  adaptive samples per anchor: mean \d+\.\d, max (8|16|24|32) \(tol 2e-1\); [0-2] anchors? missed tol", line), line
    entry = json.loads((folder / "out_noise" / "sg.json").read_text())["results"][0]
    assert set(entry["steps"]) == {"mean", "max", "per_point"} and len(entry["steps"]["per_point"]) == 2 and "tol_missed" in entry
