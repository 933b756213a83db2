"""``influence demo`` in quick mode, through the command line and through ``run_demo``: the
answers the demo exists to show.

* the audit flags the planted class (3) on the cued model and no class on the control model;
* the essence check's default ranking (contrast) beats the median of 100 random sets of k
  units for every k in {1, 2, 4, 8}, on both models;
* integrated gradients' deletion curve falls faster than a random order's, and its insertion
  curve rises faster, on both models;
* every picture and the report are written; the report is self-contained;
* the same seed gives the same numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from influence.queries.cli import main
from influence.demo import CUE_CLASS, KS, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_the_audit_flags_the_planted_class_only_on_the_cued_model(demo: tuple[Path, dict[str, Any]]) -> None:
    _, summary = demo
    cued, control = summary["models"]["cued"]["audit"], summary["models"]["control"]["audit"]
    assert cued["flagged"] == [CUE_CLASS]
    assert control["flagged"] == []
    row = {r["label"]: r for r in cued["rows"]}[CUE_CLASS]
    assert row["positive_share"] > summary["factor"] * row["area_share"]
    for r in control["rows"]:
        assert r["positive_share"] <= summary["factor"] * r["area_share"]


def test_contrast_ranking_beats_random_units(demo: tuple[Path, dict[str, Any]]) -> None:
    _, summary = demo
    for name in ("cued", "control"):
        essence = summary["models"][name]["essence"]
        assert essence["draws"] == 100
        rows = {(r["ranking"], r["k"]): r for r in essence["rows"]}
        for k in KS:
            r = rows[("contrast", k)]
            assert r["auc"] > r["random_median"], (name, k)
        assert {"influence", "gradient_x_activation"} <= {r for r, _ in rows}  # the other rankings are reported too


def test_integrated_gradients_beat_random_order(demo: tuple[Path, dict[str, Any]]) -> None:
    _, summary = demo
    for name in ("cued", "control"):
        c = summary["models"][name]["curves"]
        assert c["deletion"]["auc"] < c["random_deletion"]["auc"], name
        assert c["insertion"]["auc"] > c["random_insertion"]["auc"], name


def test_files_and_report(demo: tuple[Path, dict[str, Any]]) -> None:
    out, summary = demo
    for kind in ("contrast", "neurons", "essence", "curves"):
        for name in ("cued", "control"):
            assert (out / f"{kind}_{name}.png").stat().st_size > 1000
    assert (out / "audit_bars.png").exists() and (out / "audit_heatmaps.png").exists()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?:", html)
    assert html.count('src="data:image/png;base64,') == len(summary["pictures"])
    md = (out / "report.md").read_text(encoding="utf-8")
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).exists()


def test_deterministic_for_a_seed_and_prints_where_the_report_is(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run_demo`` with the seed of the command-line run gives the same summary (but the
    timings and paths) and prints where the report is."""
    _, first = demo
    again = run_demo(tmp_path, seed=0, quick=True)
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    assert again["report"] == str(tmp_path / "report.html")
    first = dict(first)
    for key in ("timings_s", "report", "markdown", "pictures"):
        first.pop(key, None)
        again.pop(key, None)
    assert json.loads(json.dumps(again)) == first


def test_bad_seed_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "-1"]) == 2
    assert "--seed: must be an int >= 0" in capsys.readouterr().err
