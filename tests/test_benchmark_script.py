"""The benchmark scripts must not rot: run them on a tiny setting (timings unchecked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_run_py_tiny_prints_every_case_and_the_quadrature_table() -> None:
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
