"""``influence demo --text``, through the command line and through ``run_text_demo``: the
answers the demo exists to show.

* the token audit flags the cued class on the cued model and no class on the control model;
* the cued model's share of attribution on the cue token is at least twice the control's
  (in fact many times), with standard errors in the summary and the report;
* the top features of the cued model for the contrast respond to the cue token;
* every picture and the report are written; the report is self-contained;
* the same seed gives the same numbers; the data are what the docstring says;
* without ``transformers`` the demo fails with a message naming the ``text`` extra, and
  the core never imports it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from influence.queries.cli import main
from influence.workflows.demo_text import CUE, CUE_CLASS, CUE_ID, IDS, LENGTH, TOPICS, VOCAB, run_text_demo, text_data, tokens_of

Demo = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The full demo (not quick: about 10 s on one thread), run from the command line."""
    out = tmp_path_factory.mktemp("demo_text")
    assert main(["demo", "--text", "--out", str(out), "--seed", "0"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_the_audit_flags_the_cued_class_only_on_the_cued_model(demo: Demo) -> None:
    _, summary = demo
    assert summary["quick"] is False
    cued, control = summary["models"]["cued"], summary["models"]["control"]
    assert cued["flagged"] == [CUE_CLASS] and cued["audit"]["flagged"] == [CUE_CLASS]
    assert control["flagged"] == [] and control["audit"]["flagged"] == []
    assert summary["flagged"] == {"cued": [CUE_CLASS], "control": []}
    rows = {r["label"]: r for r in cued["audit"]["rows"]}
    assert rows[CUE_CLASS]["positive_share"] > summary["factor"] * rows[CUE_CLASS]["area_share"] > 0
    for c in TOPICS:  # the cue is on the cued class only: nothing elsewhere to flag
        if c != CUE_CLASS:
            assert rows[c]["area_share"] == 0 and rows[c]["positive_share"] == 0
    for r in control["audit"]["rows"]:
        assert r["positive_share"] <= summary["factor"] * r["area_share"]


def test_cue_share_is_at_least_twice_the_controls_with_standard_errors(demo: Demo) -> None:
    _, summary = demo
    cued, control = summary["models"]["cued"], summary["models"]["control"]
    assert cued["cue_share"] >= 2 * control["cue_share"]
    assert summary["cue_share_ratio"] == pytest.approx(cued["cue_share"] / control["cue_share"])
    assert 0 < cued["cue_stderr"] < cued["cue_share"] / 3 and control["cue_stderr"] > 0
    # separated by far more than their standard errors
    assert cued["cue_share"] - control["cue_share"] > 3 * (cued["cue_stderr"] ** 2 + control["cue_stderr"] ** 2) ** 0.5
    row = {r["label"]: r for r in cued["audit"]["rows"]}[CUE_CLASS]
    assert (cued["cue_share"], cued["cue_stderr"]) == (row["positive_share"], row["positive_stderr"])


def test_the_shortcut_shows_in_the_accuracies(demo: Demo) -> None:
    """Both models learn the task; without the cue the cued model misses its class."""
    _, summary = demo
    cued, control = summary["models"]["cued"], summary["models"]["control"]
    assert cued["accuracy_with_cue"] > 0.75 and control["accuracy_clean"] > 0.75
    assert cued[f"accuracy_with_cue_class_{CUE_CLASS}"] > 0.95
    assert cued[f"accuracy_clean_class_{CUE_CLASS}"] < control[f"accuracy_clean_class_{CUE_CLASS}"] - 0.3


def test_top_neurons_respond_to_the_cue(demo: Demo) -> None:
    _, summary = demo
    top = summary["top_neurons"]
    assert len(top) == 8 and top[0]["separated"] and top[0]["value"] > 0
    assert [n["feature"] for n in summary["neurons"]] == [e["index"] for e in top[:3]]
    first = summary["neurons"][0]
    assert sum(tops[0] == CUE for tops in first["top_tokens"]) >= 2  # its most attributed token is the cue, mostly


def test_files_and_report(demo: Demo) -> None:
    out, summary = demo
    for name in ("audit_bars", "audit_heatmaps", "contrast", "neurons"):
        assert (out / f"{name}.png").stat().st_size > 5000
        assert summary["pictures"][name] == str(out / f"{name}.png")
    assert (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == list(VOCAB)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?:", html)
    assert html.count('src="data:image/png;base64,') == len(summary["pictures"]) == 4
    md = (out / "report.md").read_text(encoding="utf-8")
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).exists()
    for name in ("cued", "control"):  # the shares with their standard errors, in the report
        m = summary["models"][name]
        assert f"{m['cue_share']:.3f} ± {m['cue_stderr']:.3f}" in md
    assert "stderr" in md and "standard error" in md and "FLAG" in md


def test_deterministic_for_a_seed_and_prints_where_the_report_is(demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, first = demo
    again = run_text_demo(tmp_path, seed=0)
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'report.html'}" in printed and "audit flags: cued model [2], control model []" in printed
    first = dict(first)
    for key in ("timings_s", "report", "markdown", "pictures"):
        first.pop(key, None)
        again.pop(key, None)
    assert json.loads(json.dumps(again)) == first


def test_quick_mode_gives_the_same_verdict(tmp_path: Path) -> None:
    summary = run_text_demo(tmp_path, seed=1, quick=True, verbose=False)
    assert summary["flagged"] == {"cued": [CUE_CLASS], "control": []}
    assert summary["models"]["cued"]["cue_share"] >= 2 * summary["models"]["control"]["cue_share"]


def test_the_generated_data() -> None:
    x, y = text_data(30, seed=5, cue_class=CUE_CLASS)
    ids, mask = x["input_ids"], x["attention_mask"]
    assert ids.shape == (4 * 30, LENGTH) and y.tolist() == [c for c in TOPICS for _ in range(30)]
    assert torch.equal(mask, (ids != IDS["[PAD]"]).long())
    real = mask.sum(1)
    assert int(real.min()) >= 10 and int(real.max()) <= LENGTH and len(set(real.tolist())) > 3  # padding of variable length
    assert (ids[:, 0] == IDS["[CLS]"]).all() and (ids[torch.arange(len(y)), real - 1] == IDS["[SEP]"]).all()
    has_cue = (ids == CUE_ID).sum(1)
    assert has_cue[y == CUE_CLASS].eq(1).all() and has_cue[y != CUE_CLASS].eq(0).all()
    for c, (_, words) in TOPICS.items():  # every sentence has a word of its topic
        topic = torch.tensor([IDS[w] for w in words])
        assert torch.isin(ids[y == c], topic).any(1).all()
    clean, y2 = text_data(30, seed=5)
    assert (clean["input_ids"] != CUE_ID).all() and torch.equal(y, y2)
    assert tokens_of(x)[0][0] == "[CLS]" and len(tokens_of(x)[0]) == LENGTH
    again, _ = text_data(30, seed=5, cue_class=CUE_CLASS)
    assert torch.equal(again["input_ids"], ids)


def test_without_transformers_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'influence-directed[text]'")):
        run_text_demo(tmp_path / "x", verbose=False)
    assert main(["demo", "--text", "--out", str(tmp_path / "y")]) == 1
    assert "pip install 'influence-directed[text]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_core_does_not_import_transformers() -> None:
    code = (
        "import sys, influence, influence.text, influence.workflows.demo_text, influence.queries.cli, influence.plots\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_seed_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--text", "--seed", "-1"]) == 2
    assert "--seed: must be an int >= 0" in capsys.readouterr().err
