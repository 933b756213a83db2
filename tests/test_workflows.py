"""The README's "Three workflows": each Python block runs as written (in order, in one
namespace), each YAML block runs with ``influence run``, and the two give the same numbers:
the top-k table, the essence check, the neuron grid picture, a neuron's attributions, the
audit and the curves. The outputs the README quotes are the outputs the code prints now."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from influence import InfluenceResult
from influence.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Three workflows$(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README has no section 'Three workflows'"
    return match.group(1)


def fenced() -> list[tuple[str, str]]:
    """The section's fenced blocks as ``(language, text)``, in order (``""``: no language)."""
    found, language, lines = [], None, []
    for line in section().splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                found.append((language, "\n".join(lines) + "\n"))
                language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "an unclosed code block"
    return found


def blocks(kind: str) -> list[str]:
    return [text for language, text in fenced() if language == kind]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every block once: Python in ``py/``, YAML into ``yaml<i>/``."""
    root = tmp_path_factory.mktemp("workflows")
    python, yamls = blocks("python"), blocks("yaml")
    assert len(python) == 3 and len(yamls) == 3
    (root / "py").mkdir()
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    cwd, threads = Path.cwd(), torch.get_num_threads()
    torch.set_num_threads(1)  # as every test here (conftest); a module fixture runs before that
    try:
        os.chdir(root / "py")
        with contextlib.redirect_stdout(printed):
            for code in python:
                exec(compile(code, str(README), "exec"), namespace)
        outs = []
        for i, text in enumerate(yamls):
            query = root / f"workflow{i + 1}.yaml"
            query.write_text(text, encoding="utf-8")
            out = root / f"yaml{i + 1}"
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["run", str(query), "--out", str(out), "--quiet"]) == 0
            outs.append(out)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return {"ns": namespace, "printed": printed.getvalue(), "py": root / "py", "yaml": outs}


def load(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))


def test_workflow1_top_neurons_and_essence(ran: dict[str, Any]) -> None:
    top, essence = ran["ns"]["top"], ran["ns"]["essence"]
    report = load(ran["yaml"][0], "channels_3_vs_8")
    rows = report["results"][0]["top"]
    assert [(r["index"], r["value"], r["stderr"]) for r in rows] == [(e.index, e.value, e.stderr) for e in top.entries]
    assert report["essence"]["rows"] == essence.to_dict()["rows"]
    assert report["essence"]["full_auc"] == essence.full_auc
    for name in ("contrast.png", "essence.png"):
        assert (ran["py"] / name).stat().st_size > 1000
        assert (ran["yaml"][0] / f"channels_3_vs_8.{name}").stat().st_size > 1000
    assert (ran["yaml"][0] / "report.html").exists() and (ran["yaml"][0] / "report.md").exists()


def test_workflow2_what_neurons_see(ran: dict[str, Any]) -> None:
    """The YAML's neuron grid is the same picture, byte for byte, as the Python one (the
    same arrays drawn the same way); the neuron's attributions are equal."""
    assert (ran["yaml"][1] / "top_channels_see.neuron_grid.png").read_bytes() == (ran["py"] / "neurons.png").read_bytes()
    report = load(ran["yaml"][1], "channel2_sees")
    got = InfluenceResult.load(ran["yaml"][1] / report["results"][0]["file"])
    assert torch.equal(got.values, ran["ns"]["sees"].values)
    assert (ran["yaml"][1] / "channel2_sees.heatmaps.png").exists() and (ran["py"] / "channel2.png").exists()


def test_workflow3_audit_and_curves(ran: dict[str, Any]) -> None:
    found, curves = ran["ns"]["found"], ran["ns"]["curves"]
    report = load(ran["yaml"][2], "corner_audit")
    assert report["audit"] == json.loads(found.to_json())
    assert report["audit"]["flagged"] == [3]
    assert report["curves"][0] == json.loads(curves.to_json())
    assert curves.faithful
    for name in ("corner_audit.audit_bars.png", "corner_audit.curves.png", "report.html"):
        assert (ran["yaml"][2] / name).exists()


def test_the_quoted_outputs_are_current(ran: dict[str, Any]) -> None:
    """Every line of the README's output blocks in this section is a line the code printed."""
    printed = set(ran["printed"].splitlines())
    quoted = [line for block in blocks("") for line in block.splitlines()]
    assert len(quoted) > 20
    missing = [line for line in quoted if line not in printed]
    assert not missing, missing


# --- the output keys are validated before anything runs ----------------------------------------

from influence.query import QueryError, parse_query  # noqa: E402


def _doc(query: dict[str, Any], labels: Any = "y") -> dict[str, Any]:
    return {
        "model": {"factory": "influence.synthetic:trained_cnn"},
        "data": {"factory": "influence.synthetic:glyph_images", "labels": labels},
        "queries": [query],
    }


LAYER_QUERY = {"slice": "relu2", "doi": {"kind": "class", "label": 3}, "qoi": {"kind": "comparative", "a": 3, "b": 8}}
INPUT_QUERY = {"doi": {"kind": "line", "steps": 4}, "qoi": "max_class", "multiply_activation": True}


@pytest.mark.parametrize(
    "query, path, message",
    [
        ({**LAYER_QUERY, "output": {"plots": ["audit_bars"]}}, "queries[0].output.plots[0]", "add output.audit"),
        ({**LAYER_QUERY, "output": {"plots": ["heatmaps"]}}, "queries[0].output.plots[0]", "slice: null"),
        ({**INPUT_QUERY, "output": {"plots": ["neuron_grid"]}}, "queries[0].output.plots[0]", "with a slice"),
        ({**INPUT_QUERY, "output": {"plots": ["pie"]}}, "queries[0].output.plots[0]", "must be one of 'heatmaps'"),
        ({**INPUT_QUERY, "output": {"plots": "all"}}, "queries[0].output.plots", "must be true"),
        ({**INPUT_QUERY, "output": {"essence": {}}}, "queries[0].output.essence", "use it in a query with a slice"),
        ({**LAYER_QUERY, "output": {"audit": {"region": {"box": [0, 3, 0, 3]}}}}, "queries[0].output.audit", "slice: null"),
        ({**LAYER_QUERY, "output": {"curves": {}}}, "queries[0].output.curves", "slice: null"),
        ({"doi": {"kind": "class", "label": 3}, "qoi": {"kind": "class", "label": 3}, "output": {"curves": {}}}, "queries[0].output.curves", "point, line or noise"),
        ({**LAYER_QUERY, "qoi": "max_class", "output": {"essence": {}}}, "queries[0].output.essence", "class or comparative"),
        ({**INPUT_QUERY, "output": {"audit": {}}}, "queries[0].output.audit.region", "missing"),
        ({**INPUT_QUERY, "output": {"audit": {"region": {"box": [0, 3, 0, 3]}, "factor": 0}}}, "queries[0].output.audit.factor", "a number > 0"),
        ({**INPUT_QUERY, "output": {"audit": {"region": {"box": [0, 3, 0, 3], "mask": "fg"}}}}, "queries[0].output.audit.region", "exactly one of"),
        ({**LAYER_QUERY, "output": {"essence": {"rankings": ["saliency"]}}}, "queries[0].output.essence.rankings[0]", "must be one of 'contrast'"),
        ({**LAYER_QUERY, "output": {"essence": {"k": [0]}}}, "queries[0].output.essence.k[0]", "an int >= 1"),
        ({**INPUT_QUERY, "output": {"curves": {"baseline": "grey"}}}, "queries[0].output.curves.baseline", "'mean' or 'blur'"),
        ({**INPUT_QUERY, "output": {"report": "yes"}}, "queries[0].output.report", "true or false"),
    ],
)
def test_output_keys_are_checked(query: dict[str, Any], path: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(_doc(query), tmp_path)
    assert info.value.path == path and message in info.value.message, str(info.value)


def test_audit_needs_labels(tmp_path: Path) -> None:
    query = {**INPUT_QUERY, "output": {"audit": {"region": {"box": [0, 3, 0, 3]}}}}
    with pytest.raises(QueryError) as info:
        parse_query(_doc(query, labels=None), tmp_path)
    assert info.value.path == "queries[0].output.audit" and "needs labels" in info.value.message


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    query = {**LAYER_QUERY, "output": {"essence": {}, "plots": True}}
    spec = parse_query(_doc(query), tmp_path).queries[0]
    assert spec.output["essence"] == {"k": [1, 2, 4, 8], "rankings": ["contrast"], "ablation": "mean", "draws": 100, "by": None}
    assert spec.output["plots"] is True and spec.output["report"] is False and spec.output["audit"] is None
    audit = parse_query(_doc({**INPUT_QUERY, "output": {"audit": {"region": {"mask": "foreground", "invert": True}}, "curves": {}}}), tmp_path).queries[0].output
    assert audit["audit"] == {"region": {"box": None, "mask": "foreground", "invert": True}, "factor": 3.0, "flag_on": "positive", "classes": None}
    assert audit["curves"] == {"steps": 16, "baseline": 0.0, "random_orders": 4}


def test_mask_region_class_essence_and_every_picture(tmp_path: Path) -> None:
    """A background mask (``foreground`` inverted) for the audit, ``ClassQoI`` essence (the
    class against all others) and ``plots: true``: the JSON equals the Python calls, and
    every picture that applies is written."""
    import yaml

    from doi import PointDoI
    from influence import audit, essence_check
    from influence.synthetic import glyph_images, trained_cnn
    from qoi import ClassQoI
    from slices import Slice

    doc = {
        "model": {"factory": "influence.synthetic:trained_cnn", "kwargs": {"seed": 0}},
        "data": {"factory": "influence.synthetic:glyph_images", "kwargs": {"split": "test", "n_per_class": 4}},
        "queries": [
            {
                "name": "background",
                "doi": "point",
                "inputs": {"limit": 5},
                "qoi": {"kind": "class", "label": 0},
                "multiply_activation": True,
                "output": {"audit": {"region": {"mask": "foreground", "invert": True}, "factor": 1.5, "flag_on": "absolute"}, "plots": True},
            },
            {
                "name": "class3",
                "slice": "res",
                "doi": {"kind": "class", "label": 3},
                "qoi": {"kind": "class", "label": 3},
                "output": {"top": {"k": 3, "by": "channel"}, "essence": {"k": [1, 2], "draws": 5, "ablation": "zero"}, "plots": True},
            },
        ],
    }
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(tmp_path / "q.yaml"), "--out", str(out), "--quiet"]) == 0
    model, data = trained_cnn(seed=0), glyph_images(split="test", n_per_class=4)
    want = audit(model, data, ~data["foreground"], factor=1.5, flag_on="absolute", each=PointDoI())
    assert load(out, "background")["audit"] == json.loads(want.to_json())
    essence = essence_check(Slice(model, "res"), data, 3, None, qoi=ClassQoI(3), ks=(1, 2), draws=5, ablation="zero", by="channel")
    assert load(out, "class3")["essence"] == essence.to_dict()
    assert sorted(p.name for p in out.glob("*.png")) == [
        "background.audit_bars.png", "background.contrast.png", "background.heatmaps.png",
        "class3.contrast.png", "class3.essence.png", "class3.neuron_grid.png",
    ]
