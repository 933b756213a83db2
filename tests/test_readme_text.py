"""The README's "Text models": its Python block runs as written and prints the quoted
output (the same rules as :mod:`test_workflows`), and its YAML block, run with
``influence run``, gives the same token attributions and the same audit."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from influence import InfluenceResult
from influence.queries.cli import main
from test_workflows import REFERENCE_KERNELS, blocks, reference_kernels_missing, run_python_blocks, tokens, unmatched

TITLE = "Text models"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("text")
    python, yamls = blocks("python", TITLE), blocks("yaml", TITLE)
    assert len(python) == 1 and len(yamls) == 1
    namespace: dict[str, Any] = {}
    printed = run_python_blocks(root, namespace, TITLE)
    query = root / "text.yaml"
    query.write_text(yamls[0], encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as shown:
            assert main(["run", str(query), "--out", str(root / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"ns": namespace, "printed": printed, "out": root / "out", "shown": shown.getvalue()}


def quoted_lines() -> list[str]:
    quoted = [line for block in blocks("", TITLE) for line in block.splitlines()]
    assert len(quoted) > 8
    return quoted


def test_yaml_equals_python(ran: dict[str, Any]) -> None:
    """The YAML query explains the first four sentences of class 1 (rows 1, 3, 5, 7) with
    the Python block's integrated gradients, and its audit is the Python audit."""
    ns = ran["ns"]
    report = json.loads((ran["out"] / "ig_positive.json").read_text(encoding="utf-8"))
    got = InfluenceResult.load(ran["out"] / report["results"][0]["file"])
    rows = torch.tensor([1, 3, 5, 7])
    torch.testing.assert_close(got.values, ns["ig"].values[rows], rtol=1e-10, atol=1e-13)
    assert report["audit"] == json.loads(ns["found"].to_json())
    assert ns["found"].flagged == (1,)
    assert "'zq'" in ran["shown"] and "[PAD]" not in ran["shown"]  # top tokens as strings, padding dropped


def test_the_python_block_explains_the_cue(ran: dict[str, Any]) -> None:
    """What the section says of its numbers: padding gets 0, each sentence's tokens sum to
    its Δq (completeness), and the neuron views name real positions."""
    ns = ran["ns"]
    values = ns["ig"].token_attributions()
    assert bool((values[ns["enc"]["attention_mask"] == 0] == 0).all())
    assert float(ns["ig"].completeness.max()) < 1e-3
    for view in ns["views"]:
        assert bool(ns["enc"]["attention_mask"][view.examples, view.positions].bool().all())


def test_the_quoted_output_has_the_printed_layout(ran: dict[str, Any]) -> None:
    printed, at, missing = ran["printed"].splitlines(), 0, []
    for line in quoted_lines():
        hit = next((i for i in range(at, len(printed)) if tokens(printed[i])[0] == tokens(line)[0]), None)
        if hit is None:
            missing.append(line)
        else:
            at = hit + 1
    assert not missing, missing


def test_the_quoted_output_is_current(tmp_path: Path) -> None:
    """The quoted lines are printed, to the printed precision, on the README's kernels (see
    :func:`test_workflows.test_the_quoted_outputs_are_current`)."""
    reason = reference_kernels_missing()
    if reason:
        pytest.skip(reason)
    import influence

    packages = str(Path(influence.__file__).resolve().parents[1])
    env = {**os.environ, **REFERENCE_KERNELS, "PYTHONPATH": os.pathsep.join(filter(None, [packages, os.environ.get("PYTHONPATH")]))}
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import test_workflows as w; "
        f"print(w.run_python_blocks(Path(sys.argv[2]), {{}}, {TITLE!r}), end='')"
    )
    here = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", script, here, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    missing = unmatched(quoted_lines(), done.stdout.splitlines())
    assert not missing, "\n" + "\n".join(missing)
