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
