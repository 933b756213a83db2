"""The README's "Three workflows": each Python block runs as written (in order, in one
namespace), each YAML block runs with ``influence run``, and the two give the same numbers:
the top-k table, the essence check, the neuron grid picture, a neuron's attributions, the
audit and the curves. The outputs the README quotes are the outputs the code prints now
(to the printed precision, on the kernels the README's numbers come from)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import torch

from influence import InfluenceResult
from influence.queries.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str = "Three workflows") -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}$(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def fenced(title: str = "Three workflows") -> list[tuple[str, str]]:
    """The section's fenced blocks as ``(language, text)``, in order (``""``: no language)."""
    found, language, lines = [], None, []
    for line in section(title).splitlines():
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


def blocks(kind: str, title: str = "Three workflows") -> list[str]:
    return [text for language, text in fenced(title) if language == kind]


def run_python_blocks(directory: Path, namespace: dict[str, Any], title: str = "Three workflows") -> str:
    """Run the section's Python blocks in order, in ``namespace``, with ``directory`` as the
    working directory and one thread (as every test here); return what they printed. The
    working directory and the thread count are left as they were."""
    printed = io.StringIO()
    cwd, threads = Path.cwd(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        os.chdir(directory)
        with contextlib.redirect_stdout(printed):
            for code in blocks("python", title):
                exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return printed.getvalue()


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every block once: Python in ``py/``, YAML into ``yaml<i>/``."""
    root = tmp_path_factory.mktemp("workflows")
    python, yamls = blocks("python"), blocks("yaml")
    assert len(python) == 3 and len(yamls) == 3
    (root / "py").mkdir()
    namespace: dict[str, Any] = {}
    cwd, threads = Path.cwd(), torch.get_num_threads()
    try:
        printed = run_python_blocks(root / "py", namespace)
        os.chdir(root / "py")
        torch.set_num_threads(1)  # as every test here (conftest); a module fixture runs before that
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
    return {"ns": namespace, "printed": printed, "py": root / "py", "yaml": outs}


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


# --- the quoted outputs -----------------------------------------------------------------------
#
# A quoted line and a printed line match when their words and punctuation are the same token
# for token (spacing is not compared: a column shifts when a number's width changes) and their
# numbers agree: exactly for a number printed without a decimal point or exponent (a count, an
# index, a class: ``3``, ``50``, ``(3,)``), and within ``max(2 units of the last printed digit,
# 1 % of the value)`` for a rounded measurement (``0.811``, ``-8.3970``, ``+8.8987e+00``).
#   - 2 units of the last digit: two correctly rounded prints of values that differ by a
#     rounding error can differ by 1 unit (½ unit each way across a rounding boundary); the
#     second unit lets the value itself move by up to a unit. ``0.000 ± 0.001`` may read
#     ``0.001 ± 0.000``, and must, as a relative tolerance means nothing at zero.
#   - 1 %: a number printed with 5 significant digits claims more than a float32 pipeline
#     guarantees across thread counts and kernels: a float32 sum of n terms in another order
#     moves by up to about n·ε (ε = 6e-8), ~6e-4 for the 1e4-term reductions here. 1 % covers
#     that ten times over and still rejects a 5 % error, let alone a 10 % one.

NUMBER = r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?!\w)"
TOKEN = re.compile(rf"(?P<number>{NUMBER})|\w+|\S")
RELATIVE = 0.01
LAST_DIGITS = 2
# Where the quoted numbers come from: a torch build's CPU kernels differ by instruction set
# (AVX-512, AVX2, ...) in the last bits of float32 sums, and the quoted results come from
# *trained* CNNs (influence.synthetic.trained_cnn), whose training amplifies those bits: the
# weights differ at 1e-3 after one epoch, and with the AVX-512 kernels the essence AUC 0.811
# reads 0.660 and the deletion area -8.3970 reads -12.0265 (training in float64 does not
# help: Adam divides each gradient by its own running size, so a gradient made of rounding
# noise still moves its weight by about lr). No tolerance absorbs that, and none should: the
# numbers are exact for given kernels. The README's outputs were printed with AVX2 kernels
# (with these settings they are reproduced digit for digit on an AVX-512 machine), which every
# x86-64 CPU since 2013 can be told to use: these variables do that (ATen, oneDNN, MKL; MKL_CBWR
# makes MKL take the same code path on Intel and AMD).
REFERENCE_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def tokens(line: str) -> tuple[tuple[str, ...], list[str]]:
    """``(skeleton, numbers)``: the line's tokens with each number replaced by ``#``, and the
    numbers in order. ``"  1   0.811 > [0.500, 0.522]"`` gives ``("#", "#", ">", "[", "#",
    ",", "#", "]")`` and ``["1", "0.811", "0.500", "0.522"]``."""
    skeleton, numbers = [], []
    for m in TOKEN.finditer(line):
        if m.group("number"):
            skeleton.append("#")
            numbers.append(m.group("number"))
        else:
            skeleton.append(m.group(0))
    return tuple(skeleton), numbers


def is_count(number: str) -> bool:
    """Printed without a decimal point or exponent: a count, an index, a class (exact)."""
    return not re.search(r"[.eE]", number)


def numbers_agree(quoted: str, printed: str) -> bool:
    """One number of a quoted line against the printed one (see the rules above)."""
    a, b = Decimal(quoted), Decimal(printed)
    if is_count(quoted) or is_count(printed):
        return is_count(quoted) and is_count(printed) and a == b
    unit = Decimal(10) ** max(a.as_tuple().exponent, b.as_tuple().exponent)  # type: ignore[operator]
    return abs(a - b) <= max(LAST_DIGITS * unit, Decimal(str(RELATIVE)) * max(abs(a), abs(b)))


def lines_match(quoted: str, printed: str) -> bool:
    (qs, qn), (ps, pn) = tokens(quoted), tokens(printed)
    return qs == ps and all(numbers_agree(a, b) for a, b in zip(qn, pn))


def unmatched(quoted: list[str], printed: list[str]) -> list[str]:
    """The quoted lines that are not, in order, lines the code printed (each is matched to
    the first printed line after the previous match that agrees with it: for an in-order
    match, taking the earliest candidate never loses one), each with the printed line of
    the same layout it is nearest to, if there is one."""
    missing, at = [], 0
    for line in quoted:
        hit = next((i for i in range(at, len(printed)) if lines_match(line, printed[i])), None)
        if hit is not None:
            at = hit + 1
            continue

        def distance(p: str) -> tuple[int, int]:  # (counts that differ, numbers that differ)
            pairs = list(zip(tokens(line)[1], tokens(p)[1]))
            return sum(is_count(a) and a != b for a, b in pairs), sum(not numbers_agree(a, b) for a, b in pairs)

        same_layout = [p for p in printed if tokens(p)[0] == tokens(line)[0]]
        near = min(same_layout, key=distance, default=None)
        missing.append(f"quoted:  {line.strip()}\n  printed: {near.strip() if near else '(no line of this layout)'}")
    return missing


@pytest.mark.parametrize(
    "quoted, printed, same",
    [
        ("  1    0.811 >   0.500 [0.500, 0.522]", "  1    0.811 >   0.500 [0.500, 0.522]", True),
        ("  1    0.811 >   0.500 [0.500, 0.522]", "  1    0.812 >   0.500 [0.499, 0.523]", True),  # last digit
        ("  1    0.811 >   0.500 [0.500, 0.522]", "  1 0.811 > 0.500 [0.500,0.522]", True),  # spacing
        ("  deletion   -8.3970 ± 1.8836", "  deletion   -8.4431 ± 1.8836", True),  # 0.5 %
        ("    0   10    0.000 ± 0.001", "    0   10    0.002 ± 0.000", True),  # 2 units at 0
        ("  3  +2.4329e+00  7.66e-02  +31.8 *", "  3  +2.4330e+00  7.67e-02  +31.9 *", True),
        ("  1    0.811 >   0.500 [0.500, 0.522]", "  1    0.730 >   0.500 [0.500, 0.522]", False),  # -10 %
        ("  deletion   -8.3970 ± 1.8836", "  deletion   -9.2367 ± 1.8836", False),  # +10 %
        ("  deletion   -8.3970 ± 1.8836", "  deletion   -8.8169 ± 1.8836", False),  # +5 %
        ("  deletion   -8.3970 ± 1.8836", "  deletion   8.3970 ± 1.8836", False),  # the sign
        ("    0   10    0.000 ± 0.001", "    0   10    0.004 ± 0.001", False),  # 4 units at 0
        ("  deletion   -8.3970 ± 1.8836", "  insertion   -8.3970 ± 1.8836", False),  # a word
        ("  1    0.811 >   0.500 [0.500, 0.522]", "  1    0.811     0.500 [0.500, 0.522]", False),  # a marker
        ("    3   10    0.750 ± 0.011", "    3   11    0.750 ± 0.011", False),  # a count is exact
        ("    3   10    0.750 ± 0.011", "    3.0   10    0.750 ± 0.011", False),  # and stays a count
        ("class 3 (50) vs class 8 (50)", "class 3 (50) vs class 9 (50)", False),
        ("of relu2 for f_3 - f_8", "of relu3 for f_3 - f_8", False),  # digits inside a name
        ("full model 1.000", "full model 1.000 ", True),
    ],
)
def test_the_line_matcher(quoted: str, printed: str, same: bool) -> None:
    """The matcher accepts a last-digit change, a 0.5 % change and new spacing; it rejects a
    5 % or 10 % change, a flipped sign, a changed word, marker, name or count."""
    assert lines_match(quoted, printed) is same
    assert (unmatched([quoted], ["unrelated", printed]) == []) is same


def test_the_tokens_of_a_quoted_line() -> None:
    skeleton, numbers = tokens("  1    0.811 >  -0.12 [0.500, 0.522]  +8.8987e+00 (3,) relu2 f_3 - f_8 ± 3")
    assert numbers == ["1", "0.811", "-0.12", "0.500", "0.522", "+8.8987e+00", "3", "3"]
    assert skeleton == ("#", "#", ">", "#", "[", "#", ",", "#", "]", "#", "(", "#", ",", ")", "relu2", "f_3", "-", "f_8", "±", "#")


def quoted_lines() -> list[str]:
    quoted = [line for block in blocks("") for line in block.splitlines()]
    assert len(quoted) > 20
    return quoted


def test_the_quoted_outputs_have_the_printed_layout(ran: dict[str, Any]) -> None:
    """On any machine and torch version: every quoted line is, in order, a printed line with
    the same words, punctuation and count of numbers. Two tokens are left out: ``>`` (beats
    the random draws) and ``FLAG``, which the trained weights decide (see below)."""

    def layout(line: str) -> tuple[str, ...]:
        return tuple(t for t in tokens(line)[0] if t not in (">", "FLAG"))

    printed, at, missing = ran["printed"].splitlines(), 0, []
    for line in quoted_lines():
        hit = next((i for i in range(at, len(printed)) if layout(printed[i]) == layout(line)), None)
        if hit is None:
            missing.append(line)
        else:
            at = hit + 1
    assert not missing, missing


def reference_kernels_missing() -> str | None:
    """Why this machine cannot print the README's numbers, or None."""
    pinned = re.search(r"torch==([\w.]+)", README.read_text(encoding="utf-8"))
    assert pinned, "the README names no torch version (torch==X) for the outputs it quotes"
    version = torch.__version__.split("+")[0]
    if version != pinned.group(1):
        return f"the README quotes torch {pinned.group(1)}'s outputs; this is torch {version}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the README quotes outputs of x86-64 AVX2 kernels; this is {platform.machine()}"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the README quotes outputs of AVX2 kernels; this CPU has no AVX2"
    return None


def test_the_quoted_outputs_are_current(tmp_path: Path) -> None:
    """Every line of the README's output blocks in this section is, in order, a line the
    code prints (words and punctuation exactly, numbers to the printed precision: see the
    rules above), when the Python blocks run in a fresh process on the README's torch
    version and kernels (``REFERENCE_KERNELS``). Skipped, with the reason, where those
    kernels cannot be had (another torch version, not x86-64): the layout is still checked
    there, by the test above."""
    reason = reference_kernels_missing()
    if reason:
        pytest.skip(reason)
    import influence

    packages = str(Path(influence.__file__).resolve().parents[1])  # the same `influence` as here
    env = {**os.environ, **REFERENCE_KERNELS, "PYTHONPATH": os.pathsep.join(filter(None, [packages, os.environ.get("PYTHONPATH")]))}
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import test_workflows as w; "
        "print(w.run_python_blocks(Path(sys.argv[2]), {}), end='')"
    )
    here = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", script, here, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    missing = unmatched(quoted_lines(), done.stdout.splitlines())
    assert not missing, "\n" + "\n".join(missing)


# --- the output keys are validated before anything runs ----------------------------------------

from influence.queries import QueryError, parse_query  # noqa: E402


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
        ({**LAYER_QUERY, "output": {"audit": {"region": {"box": {"top": 0, "left": 0, "height": 3, "width": 3}}}}}, "queries[0].output.audit", "slice: null"),
        ({**LAYER_QUERY, "output": {"curves": {}}}, "queries[0].output.curves", "slice: null"),
        ({"doi": {"kind": "class", "label": 3}, "qoi": {"kind": "class", "label": 3}, "output": {"curves": {}}}, "queries[0].output.curves", "point, line or noise"),
        ({**LAYER_QUERY, "qoi": "max_class", "output": {"essence": {}}}, "queries[0].output.essence", "class or comparative"),
        ({**INPUT_QUERY, "output": {"audit": {}}}, "queries[0].output.audit.region", "missing"),
        ({**INPUT_QUERY, "output": {"audit": {"region": {"box": {"top": 0, "left": 0, "height": 3, "width": 3}}, "factor": 0}}}, "queries[0].output.audit.factor", "a number > 0"),
        ({**INPUT_QUERY, "output": {"audit": {"region": {"box": {"top": 0, "left": 0, "height": 3, "width": 3}, "mask": "fg"}}}}, "queries[0].output.audit.region", "exactly one of"),
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
    query = {**INPUT_QUERY, "output": {"audit": {"region": {"box": {"top": 0, "left": 0, "height": 3, "width": 3}}}}}
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
