"""The ``influence`` command line: the examples run and equal the same queries written in
Python; bad query files exit with code 2 and one line naming the field; failures while
computing exit with code 1; ``influence layers`` lists residual and TorchScript models.

Everything runs in-process through ``influence.queries.cli.main(argv)`` (one subprocess test
checks ``python -m influence``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from doi import ClassDoI, LineDoI, PointDoI
from influence import InfluenceResult, input_influence, internal_influence
from influence.queries.cli import main
from influence.synthetic import glyph_images, trained_cnn
from models import control_flow_net, mlp, res_cnn
from qoi import ClassQoI, ComparativeQoI, MaxClassQoI
from slices import Slice

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the examples ---------------------------------------------------------------------------


def _python_queries(name: str) -> dict[str, list[InfluenceResult]]:
    """Each example's queries, written with the Python API (the same model, data and
    arguments as its YAML)."""
    if name == "top_neurons":
        model = trained_cnn(seed=0)
        d = glyph_images(split="test", n_per_class=50)
        xy, relu2 = (d["x"], d["y"]), Slice(model, "relu2")
        return {
            "channels_3_vs_8": [internal_influence(relu2, ComparativeQoI(3, 8), ClassDoI(xy, 3), seed=0, batch_size=64)],
            "units_3_vs_8_ig": [
                internal_influence(
                    relu2, ComparativeQoI(3, 8), ClassDoI(xy, 3, each=LineDoI(0.0, steps=16)), seed=0, batch_size=64, multiply_activation=True
                )
            ],
        }
    if name == "background_audit":
        model = trained_cnn(seed=0, cue_class=3)
        d = glyph_images(split="train", cue_class=3, n_per_class=30)
        xy, line = (d["x"], d["y"]), LineDoI(0.0, steps=16)
        return {
            "class3_corner": [input_influence(model, ClassQoI(3), ClassDoI(xy, 3, each=line), seed=0, multiply_activation=True)],
            "class8_corner": [input_influence(model, ClassQoI(8), ClassDoI(xy, 8, each=line), seed=0, multiply_activation=True)],
            "class3_glyph_vs_background": [input_influence(model, ClassQoI(3), PointDoI(), d["x"][d["y"] == 3][:8], seed=0, multiply_activation=True)],
        }
    if name == "integrated_gradients":
        model = trained_cnn(seed=0)
        x = glyph_images(split="test", n_per_class=20)["x"]
        points = x[[0, 25, 61, 140, 199]]
        black = Slice(model, "relu2").h(torch.zeros(1, 3, 16, 16))
        return {
            "ig_black": [input_influence(model, MaxClassQoI(), LineDoI(0.0, steps=32), points, seed=0, multiply_activation=True)],
            "ig_mean_image": [input_influence(model, MaxClassQoI(), LineDoI(x.mean(0, keepdim=True), steps=32), points, seed=0, multiply_activation=True)],
            "layer_ig": [
                internal_influence(Slice(model, "relu2"), MaxClassQoI(), LineDoI(black, steps=32, space="slice"), points, seed=0, multiply_activation=True)
            ],
        }
    if name.startswith("text_"):  # the text examples' Python versions live with their tests
        from test_query_text import python_queries

        return python_queries(name)
    raise AssertionError(f"no Python version of examples/{name}.yaml; add one here")


def test_there_are_three_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"top_neurons", "background_audit", "integrated_gradients"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_and_equals_python(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``influence run examples/X.yaml`` exits 0, prints a table per query and a summary
    line, and writes results equal (``torch.equal``) to the same queries in Python; the
    JSON's top-k is ``result.top(...)`` of that result."""
    code, out, err = cli(capsys, "run", str(example), "--out", str(tmp_path))
    assert code == 0, err
    expected = _python_queries(example.stem)
    for name, results in expected.items():
        assert re.search(rf"^{name}(\[\d+\])?: top ", out, re.M) and "rank" in out  # name[j]: one table per QoI of a list
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["query"]["name"] == name
        for j, want in enumerate(results):
            got = InfluenceResult.load(tmp_path / report["results"][j]["file"])
            assert torch.equal(got.values, want.values), name
            assert torch.equal(got.stderr, want.stderr), name
            gap = report["results"][j].get("completeness")
            assert (gap is None) == (want.completeness is None), name  # every line attribution reports its gap
            if gap is not None:
                assert gap["per_point"] == want.completeness.reshape(-1).tolist()
                assert gap["max"] == float(want.completeness.max())
                assert "completeness gap |Σ attribution − Δq| / |Δq|: " in out
            top = report["query"]["output"]["top"]
            if want.pooled or want.anchors == 1 or top["anchor"] != "mean":
                anchor = None if want.pooled else (0 if top["anchor"] == "mean" else top["anchor"])
                ranked = want.top(top["k"], by=top["by"], agg=top["agg"], absolute=top["absolute"], anchor=anchor)
                assert [(r["value"], r["stderr"]) for r in report["results"][j]["top"]] == [(r.value, r.stderr) for r in ranked]
    last = out.strip().splitlines()[-1]
    files = sum(1 + len(results) for results in expected.values())  # <name>.json, and a .pt per QoI
    assert re.match(rf"ran {len(expected)} quer(y|ies) in [\d.]+ s; wrote {files} files to {re.escape(str(tmp_path))}", last)


def test_audit_example_finds_the_shortcut(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The background audit's region shares are ``Σ_box |v| / Σ |v|`` of the pooled
    result, and the cue corner (9 of 256 pixels) takes most of class 3's attribution but
    almost none of the control class 8's."""
    code, _, err = cli(capsys, "run", str(ROOT / "examples" / "background_audit.yaml"), "--out", str(tmp_path), "--quiet")
    assert code == 0, err
    shares = {}
    for name in ("class3_corner", "class8_corner"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        result = InfluenceResult.load(tmp_path / f"{name}.pt")
        regions = {r["region"]: r for r in report["results"][0]["regions"]}
        v = result.values
        want = float(v[:, 0:3, 0:3].abs().sum() / v.abs().sum())
        assert regions["cue_corner"]["share"] == pytest.approx(want, rel=1e-12)
        assert regions["cue_corner"]["share"] + regions["elsewhere"]["share"] == pytest.approx(1.0, rel=1e-12)
        shares[name] = want
    assert shares["class3_corner"] > 0.3 > 0.05 > shares["class8_corner"]


def test_python_dash_m_runs_an_example(tmp_path: Path) -> None:
    """``python -m influence run examples/integrated_gradients.yaml`` from a clean
    checkout: exit 0, tables on stdout, nothing on stderr when stdout is not a terminal
    (no progress bar)."""
    done = subprocess.run(
        [sys.executable, "-m", "influence", "run", str(ROOT / "examples" / "integrated_gradients.yaml"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "ig_black: top 8 units of the input" in done.stdout
    assert done.stderr == ""


# --- help, validate ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["validate", "--help"], ["layers", "--help"]])
def test_help_has_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, *argv)
    assert code == 0
    assert "example" in out and "influence " in out


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "validate", str(ROOT / "examples" / "background_audit.yaml"))
    assert code == 0
    assert out.startswith("ok: ") and "3 queries" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys)[0] == 2
    assert cli(capsys, "frobnicate")[0] == 2


# --- bad query files: exit 2, one line naming the field ------------------------------------------


BASE = """
model: {factory: "models:res_cnn", kwargs: {seed: 0}}
data: {path: data.npz, inputs: x, labels: y}
queries:
  - name: ig
    doi: {kind: line, steps: 8}
    qoi: {kind: class, label: 1}
    inputs: {indices: [0, 1]}
    multiply_activation: true
  - name: layer
    slice: layer1
    doi: {kind: class, label: 2}
    qoi: {kind: comparative, a: 2, b: 0}
"""


def _edit(text: str, path: str, value: Any = None, *, delete: bool = False) -> str:
    """BASE with the value at ``path`` (``a.b[1].c``) replaced, or deleted."""
    doc = yaml.safe_load(text)
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    target = doc
    for part in parts[:-1]:
        target = target[part]
    if delete:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return yaml.safe_dump(doc, sort_keys=False)


# (id, YAML text, field path in the message, words in the message, found by `validate`)
BAD: list[tuple[str, str, str, str, bool]] = [
    ("unknown key, did you mean", _edit(BASE, "queries[0].doi.stpes", 4), "queries[0].doi.stpes", "did you mean 'steps'", True),
    ("wrong type", _edit(BASE, "queries[0].doi.steps", "many"), "queries[0].doi.steps", "must be an int >= 1 (got 'many')", True),
    ("negative steps", _edit(BASE, "queries[0].doi.steps", -3), "queries[0].doi.steps", "must be an int >= 1 (got -3)", True),
    ("missing section", _edit(BASE, "data", delete=True), "data", "missing section", True),
    ("unknown section", _edit(BASE, "queris", []), "queris", "did you mean 'queries'", True),
    ("empty query list", _edit(BASE, "queries", []), "queries", "empty", True),
    ("unknown DoI kind", _edit(BASE, "queries[0].doi.kind", "lien"), "queries[0].doi.kind", "did you mean 'line'", True),
    ("unknown QoI kind", _edit(BASE, "queries[1].qoi.kind", "comparison"), "queries[1].qoi.kind", "did you mean 'comparative'", True),
    ("bad rule", _edit(BASE, "queries[0].doi.rule", "simpson"), "queries[0].doi.rule", "must be one of", True),
    ("trapezoid needs 2 steps", _edit(_edit(BASE, "queries[0].doi.rule", "trapezoid"), "queries[0].doi.steps", 1), "queries[0].doi", "trapezoid", True),
    ("replicates must divide samples", _edit(BASE, "queries[0].doi", {"kind": "noise", "samples": 32, "replicates": 5}), "queries[0].doi", "must divide", True),
    ("sigma must be positive", _edit(BASE, "queries[0].doi", {"kind": "noise", "sigma": -1}), "queries[0].doi.sigma", "a number > 0", True),
    ("population DoI with inputs", _edit(BASE, "queries[1].inputs", {"limit": 3}), "queries[1].inputs", "remove inputs", True),
    ("each must be pointwise", _edit(BASE, "queries[1].doi.each", {"kind": "class", "label": 1}), "queries[1].doi.each.kind", "pointwise", True),
    ("activation_of needs slice space", _edit(BASE, "queries[0].doi.baseline", {"activation_of": 0}), "queries[0].doi.baseline", "space: slice", True),
    ("batch_size 0", _edit(BASE, "queries[1].batch_size", 0), "queries[1].batch_size", "must be an int >= 1 or 'auto' (got 0)", True),
    ("unknown dtype", _edit(BASE, "defaults", {"dtype": "float128"}), "defaults.dtype", "float64", True),
    ("seed is not a bool", _edit(BASE, "defaults", {"seed": True}), "defaults.seed", "(got True)", True),
    ("duplicate names", _edit(BASE, "queries[1].name", "ig"), "queries[1].name", "unique", True),
    ("factory is not an import path", _edit(BASE, "model.factory", "models.res_cnn"), "model.factory", "import path", True),
    ("factory and torchscript", _edit(BASE, "model.torchscript", "data.npz"), "model", "exactly one of", True),
    ("missing data file", _edit(BASE, "data.path", "nope.npz"), "data.path", "file not found", True),
    ("data file type", _edit(BASE, "data.path", "data.csv"), "data.path", "unsupported file type", True),
    ("region box", _edit(BASE, "queries[1].output", {"regions": {"r": {"box": {"top": 3, "left": 0, "height": 0, "width": 2}}}}), "queries[1].output.regions.r.box.height", "an int >= 1", True),
    ("YAML tag", BASE + "extra: !!python/object:os.system {}\n", "q.yaml", "tag '!!python/object:os.system' is not allowed", True),
    ("duplicate YAML key", BASE + "model: {factory: 'models:mlp'}\n", "q.yaml", "duplicate key 'model'", True),
    ("invalid YAML", BASE + "  - [unclosed\n", "q.yaml", "invalid YAML", True),
    ("not a mapping", "- just\n- a list\n", "q.yaml", "must be a mapping", True),
    # found when the model and data are loaded (`validate` accepts these files)
    ("unknown layer", _edit(BASE, "queries[1].slice", "layer9"), "queries[1].slice.layer", "unknown layer 'layer9' in ResCNN; did you mean", False),
    ("class not in data", _edit(BASE, "queries[1].doi.label", 4), "queries[1].doi.label", "class 4 is not in the data", False),
    ("input label not in data", _edit(BASE, "queries[0].inputs", {"label": 4}), "queries[0].inputs.label", "not in the data", False),
    ("index out of range", _edit(BASE, "queries[0].inputs", {"indices": [0, 99]}), "queries[0].inputs.indices[1]", "out of range", False),
    ("baseline shape mismatch", _edit(BASE, "queries[0].doi.baseline", {"array": "small"}), "queries[0].doi.baseline", "does not fit inputs of shape (3, 8, 8)", False),
    ("baseline array missing", _edit(BASE, "queries[0].doi.baseline", {"array": "rowz"}), "queries[0].doi.baseline.array", "did you mean 'rows'", False),
    ("weights do not fit", _edit(BASE, "model.weights", "mlp.pt"), "model.weights", "do not fit the model", False),
    ("weights are a pickled model", _edit(BASE, "model.weights", "whole.pt"), "model.weights", "weights_only=True", False),
    ("unreadable data file", _edit(BASE, "data.path", "corrupt.npz"), "data.path", "cannot read corrupt.npz", False),
    ("factory module missing", _edit(BASE, "model.factory", "nomodule:build"), "model.factory", "cannot import module 'nomodule'", False),
    ("factory attribute missing", _edit(BASE, "model.factory", "models:res_cn"), "model.factory", "did you mean 'res_cnn'", False),
    ("factory kwargs", _edit(BASE, "model", {"factory": "models:mlp", "kwargs": {"sead": 1}}), "model.kwargs.sead", "did you mean 'seed'", False),
    ("factory kwargs passed on", _edit(BASE, "model.kwargs", {"sead": 1}), "model.kwargs.sead", "not an argument of res_cnn()", False),
    ("inputs array missing", _edit(BASE, "data.inputs", "img"), "data.inputs", "no array 'img'", False),
    ("labels wrong shape", _edit(BASE, "data.labels", "small"), "data.labels", "must hold 20 int labels", False),
    ("class QoI out of range", _edit(BASE, "queries[0].qoi.label", 9), "queries[0].qoi", "out of range", False),
    ("neuron layer unknown", _edit(BASE, "queries[0].qoi", {"kind": "neuron", "layer": "layer3", "index": 0}), "queries[0].qoi.layer", "unknown layer", False),
    ("neuron index out of range", _edit(BASE, "queries[0].qoi", {"kind": "neuron", "layer": "layer2", "index": 80}), "queries[0].qoi", "out of range", False),
    ("neuron before the cut", _edit(BASE, "queries[1].qoi", {"kind": "neuron", "layer": "stem", "index": 0}), "queries[1].qoi", "does not depend", False),
    ("device not available", _edit(BASE, "queries[0].device", "cuda:97"), "queries[0].device", "not available", False),
]


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    g = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        x=g.standard_normal((20, 3, 8, 8)).astype(np.float32),
        y=np.arange(20) % 4,
        rows=np.zeros((20, 3, 8, 8), dtype=np.float32),
        small=np.zeros((2, 2), dtype=np.float32),
    )
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    torch.save(mlp(seed=0).state_dict(), tmp_path / "mlp.pt")
    torch.save(res_cnn(seed=0), tmp_path / "whole.pt")  # a whole pickled model, not a state_dict
    return tmp_path


def test_bad_suite_is_large() -> None:
    assert len(BAD) >= 25 and len({case[0] for case in BAD}) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=[case[0] for case in BAD])
def test_bad_query_exits_2_with_the_field(case: tuple[str, str, str, str, bool], bad_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``influence run`` exits 2 with exactly one line ``error: <field>: <message>`` on
    stderr, no traceback; ``influence validate`` finds the static mistakes (and accepts
    the files whose mistakes only show against the loaded model and data)."""
    _, text, path, words, static = case
    query = bad_folder / "q.yaml"
    query.write_text(text)
    code, out, err = cli(capsys, "run", str(query), "--out", str(bad_folder / "out"), "--quiet")
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    field = str(query) if path == "q.yaml" else path
    assert lines[0].startswith(f"error: {field}: "), lines[0]
    assert words in lines[0], lines[0]
    assert not (bad_folder / "out").exists()  # nothing ran, nothing written
    code, out, err = cli(capsys, "validate", str(query))
    assert code == (2 if static else 0), err


def test_missing_query_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "run", str(tmp_path / "nope.yaml"))
    assert code == 2 and "query file not found" in err


def test_bad_device_option(bad_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--device`` naming an unavailable device is a bad argument (exit 2)."""
    (bad_folder / "q.yaml").write_text(BASE)
    code, _, err = cli(capsys, "run", str(bad_folder / "q.yaml"), "--device", "cuda:97", "--quiet")
    assert code == 2 and err.startswith("error: --device: ")


# --- runtime failures: exit 1 -----------------------------------------------------------------


FAILING = """
import torch

def score_unless_grad(out):
    if out.shape[0] > 1:  # the engine's batches, not the one-point check
        raise RuntimeError("boom in the middle of the computation")
    return out[:, 0]
"""


def test_failure_while_computing_exits_1(bad_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failure inside the computation exits 1 with one line naming the query, and no
    traceback unless ``--debug``; nothing is written for it."""
    (bad_folder / "failing.py").write_text(FAILING)
    text = _edit(BASE, "queries[1].qoi", {"kind": "callable", "function": "failing:score_unless_grad"})
    (bad_folder / "q.yaml").write_text(text)
    code, out, err = cli(capsys, "run", str(bad_folder / "q.yaml"), "--out", str(bad_folder / "out"))
    assert code == 1
    assert err.strip().splitlines() == [
        "error: query 'layer' (queries[1]): RuntimeError: boom in the middle of the computation (--debug shows the traceback)"
    ]
    assert "ig: top" in out  # the first query ran
    code, _, err = cli(capsys, "--debug", "run", str(bad_folder / "q.yaml"), "--out", str(bad_folder / "out"), "--quiet")
    assert code == 1 and "Traceback" in err


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_quiet_save_plots_and_lists(bad_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--quiet`` prints only the summary; ``save: false`` writes nothing; a list of QoIs
    writes ``name.0.pt``, ``name.1.pt``; ``plots: true`` draws every picture that applies
    (for input influence: heatmaps and the top-k bars), one per QoI."""
    doc = yaml.safe_load(BASE)
    doc["queries"][0]["qoi"] = [{"kind": "class", "label": 1}, {"kind": "class", "label": 2}]
    doc["queries"][0]["output"] = {"plots": True}
    doc["queries"][1]["output"] = {"save": False}
    (bad_folder / "q.yaml").write_text(yaml.safe_dump(doc))
    out_dir = bad_folder / "results"
    code, out, err = cli(capsys, "run", str(bad_folder / "q.yaml"), "--out", str(out_dir), "--quiet")
    assert code == 0, err
    assert out.count("\n") == 1 and out.startswith("ran 2 queries in ")
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "ig.0.contrast.png", "ig.0.heatmaps.png", "ig.0.pt", "ig.1.contrast.png", "ig.1.heatmaps.png", "ig.1.pt", "ig.json"
    ]
    report = json.loads((out_dir / "ig.json").read_text())
    assert [r["qoi"] for r in report["results"]] == ["ClassQoI(1)", "ClassQoI(2)"]
    assert report["query"]["doi"] == {"kind": "line", "baseline": 0.0, "steps": 8, "rule": "gauss-legendre", "space": "input"}
    code, out, err = cli(capsys, "run", str(bad_folder / "q.yaml"), "--out", str(out_dir))
    assert code == 0 and err == ""
    assert "ig[0]: top 10 units of the input for ClassQoI(1)" in out


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_only_on_a_terminal(quiet: bool, bad_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """With stdout a terminal the engine shows progress on stderr (tqdm, or a counter
    without it); ``--quiet`` turns it off, as does a stdout that is not a terminal (every
    other test here)."""
    (bad_folder / "q.yaml").write_text(BASE)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    argv = ["run", str(bad_folder / "q.yaml"), "--out", str(bad_folder / "o")] + (["--quiet"] if quiet else [])
    code, _, err = cli(capsys, *argv)
    assert code == 0
    assert (err == "") == quiet, err


def test_default_out_folder(bad_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--out`` results go to ``out/<query file name>/`` in the working folder."""
    (bad_folder / "audit.yaml").write_text(BASE)
    monkeypatch.chdir(bad_folder)
    code, out, _ = cli(capsys, "run", "audit.yaml", "--quiet")
    assert code == 0
    assert (bad_folder / "out" / "audit" / "ig.json").is_file()
    assert f"to {Path('out') / 'audit'}" in out


# --- influence layers --------------------------------------------------------------------------


def _hooked_shapes(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    def record(name: str, output: torch.Tensor) -> None:
        found.setdefault(name, str(tuple(output.shape[1:])))

    handles = [m.register_forward_hook(lambda m, a, o, n=n: record(n, o)) for n, m in model.named_modules()]
    with torch.no_grad():
        model(torch.rand(1, *shape))
    for h in handles:
        h.remove()
    return found


def _table(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines()[2:]:
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) >= 3:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def test_layers_of_a_residual_cnn(capsys: pytest.CaptureFixture[str]) -> None:
    """``influence layers models:res_cnn --input-shape 3,8,8`` lists every module with its
    type and the output shape that a forward hook sees."""
    code, out, err = cli(capsys, "layers", "models:res_cnn", "--kwargs", '{"seed": 1}', "--input-shape", "3,8,8")
    assert code == 0, err
    rows = _table(out)
    want = _hooked_shapes(res_cnn(seed=1), (3, 8, 8))
    assert {name: shape for name, (_, shape) in rows.items()} == {("(model)" if n == "" else n): s for n, s in want.items()}
    assert rows["layer1.conv2"][0] == "Conv2d" and rows["layer1"][0] == "Block"


def _script(model: torch.nn.Module, path: Path, trace: tuple[int, ...] | None = None) -> None:
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(model, torch.rand(1, *trace)) if trace else torch.jit.script(model)
        torch.jit.save(scripted, str(path))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_layers_of_a_torchscript_model(how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TorchScript file (scripted or traced) gets the same names and shapes as the eager
    model, although TorchScript runs no Python hooks."""
    model = res_cnn(seed=2)
    _script(model, tmp_path / "m.pt", (3, 8, 8) if how == "trace" else None)
    code, out, err = cli(capsys, "layers", str(tmp_path / "m.pt"), "--input-shape", "3,8,8")
    assert code == 0, err
    assert out.startswith("TorchScript ResCNN on one input of shape (3, 8, 8)")
    rows = _table(out)
    want = _hooked_shapes(model, (3, 8, 8))
    assert {name: shape for name, (_, shape) in rows.items()} == {("(model)" if n == "" else n): s for n, s in want.items()}


def test_layers_of_torchscript_with_control_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Submodules called inside scripted control flow are listed with '?' and the reason;
    the others still get their shapes."""
    _script(control_flow_net(seed=0), tmp_path / "cf.pt")
    code, out, err = cli(capsys, "layers", str(tmp_path / "cf.pt"), "--input-shape", "6")
    assert code == 0, err
    rows = _table(out)
    assert rows["fc1"][1] == "(16,)" and rows["act1"][1] == "(16,)"
    assert rows["fc2"][1].startswith("?") and "control flow" in out


def test_layers_of_a_query_file_and_without_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """A query YAML's model, shaped by its data; a factory without ``--input-shape`` lists
    names and types with '?' shapes and says how to get them."""
    code, out, _ = cli(capsys, "layers", str(ROOT / "examples" / "top_neurons.yaml"))
    assert code == 0 and _table(out)["relu2"] == ("ReLU", "(16, 16, 16)")
    code, out, _ = cli(capsys, "layers", "influence.synthetic:small_cnn")
    assert code == 0 and _table(out)["res.conv_a"] == ("Conv2d", "?") and "--input-shape" in out


@pytest.mark.parametrize(
    "argv, field",
    [
        (["models:res_cnn", "--input-shape", "3,x,8"], "--input-shape"),
        (["models:res_cnn", "--input-shape", "3,5"], "--input-shape"),
        (["models:res_cnn", "--kwargs", "{seed: 1}"], "--kwargs"),
        (["models:mlp", "--kwargs", '{"sead": 1}'], "--kwargs.sead"),
        (["models:nothing"], "MODEL"),
        (["no/such/file.pt"], "MODEL"),
    ],
)
def test_layers_bad_arguments(argv: list[str], field: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "layers", *argv)
    assert code == 2 and err.startswith(f"error: {field}: ") and len(err.strip().splitlines()) == 1, err
