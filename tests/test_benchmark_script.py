"""The benchmark scripts must not rot: run them on a tiny setting (timings unchecked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_run_py_tiny_prints_every_case_and_the_tables() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--threads", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    out = done.stdout
    fixed, _, rest = out.partition("### resnet")
    main, _, precision = rest.partition("Precision on the residual CNN")
    assert "Fixed cost per call" in fixed and "saliency" in fixed
    for case in ["integrated gradients (input)", "SmoothGrad", "saliency", "input-space line", "slice-space line", "ClassDoI over", "10 classes"]:
        assert main.count(case) == 2, f"{case!r} missing for one of the two models"
    assert "steps needed for error ≤ 1e-3" in out
    assert precision.count("bf16 autocast |") == 2  # the fast mode, for both of its cases
    # the sequence-attribution table: ours (one query of per-token QoIs) equals the
    # step-by-step loop, and Captum's LLMGradientAttribution where they compute the same
    header = "| matrix | T | ours ms | loop ms | loop/ours | Captum ms | Captum/ours | ours vs loop | ours vs Captum |"
    assert header in out
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith(("saliency matrix", "integrated gradients matrix")):
            rows[cells[0].split()[0]] = dict(zip(columns, cells))
    assert set(rows) == {"saliency", "integrated"}
    for row in rows.values():
        assert row["T"] == "8"
        assert float(row["ours vs loop"]) < 1e-4
        assert float(row["ours vs Captum"]) < 1e-4
    check_adaptive_table(out)


ADAPTIVE_HEADER = (
    "| net | tol | max_steps | adaptive rows | missed | adaptive gap | adaptive ms | rule | steps | n…2n too | uniform rows | uniform gap | uniform ms "
    "| rows uniform/adaptive | time uniform/adaptive |"
)


def check_adaptive_table(out: str) -> None:
    """The adaptive-precision table: a row per net (ReLU, softplus) and uniform rule
    (Gauss–Legendre, midpoint); where a uniform step count was found, the engine's own
    worst gap at that count is within the adaptive query's (the exact-path and
    interpolated gaps that chose it agree with the engine), and the ratios are the
    ratios of the printed rows and times."""
    assert ADAPTIVE_HEADER in out
    found = re.search(r"integrated gradients of (\d+) anchors", out)
    assert found
    anchors = int(found.group(1))
    columns = [c.strip() for c in ADAPTIVE_HEADER.strip("|").split("|")]
    rows = []
    for line in out.partition(ADAPTIVE_HEADER)[2].splitlines()[2:]:
        if not line.startswith("| "):
            break
        rows.append(dict(zip(columns, (c.strip() for c in line.strip().strip("|").split("|")))))
    assert {(r["net"], r["rule"]) for r in rows} == {(n, r) for n in ("ReLU", "softplus") for r in ("gauss-legendre", "midpoint")}
    for r in rows:
        assert int(r["adaptive rows"]) > 0 and float(r["adaptive ms"]) > 0
        if r["steps"].startswith(">"):
            assert r["uniform gap"] == r["uniform ms"] == r["time uniform/adaptive"] == "–"
            continue
        assert float(r["uniform gap"]) <= float(r["adaptive gap"]) * 1.06  # both printed to 2 digits
        assert int(r["uniform rows"]) == int(r["steps"]) * anchors
        assert float(r["rows uniform/adaptive"].rstrip("×")) == pytest.approx(int(r["uniform rows"]) / int(r["adaptive rows"]), abs=0.006)
        assert float(r["time uniform/adaptive"].rstrip("×")) == pytest.approx(float(r["uniform ms"]) / float(r["adaptive ms"]), rel=0.06, abs=0.006)


def test_run_py_skips_the_sequence_table_without_transformers() -> None:
    code = (
        "import runpy, sys\n"
        "sys.modules['transformers'] = None  # import transformers raises ImportError\n"
        "sys.argv = ['run.py', '--only-sequence', '--tiny', '--threads', '1']\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'run.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "Sequence attribution: skipped (transformers is not installed)." in done.stdout
    assert "| matrix |" not in done.stdout
