"""Checkpoint and resume of population queries.

A checkpoint holds the float64 sums ``Σ m_i``, ``Σ m_i²`` and counts after the first
``P`` points, and ``P``; resuming skips those points without computing them and adds the
rest in the same chunks, so an interrupted-and-resumed query gives *exactly* (bit for
bit, ``torch.equal``) the uninterrupted result. A checkpoint of another query, or a
damaged file, is refused with an error naming ``checkpoint``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import Tensor

from conftest import tolerance
from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI
from influence import InfluenceResult, input_influence, internal_influence
from influence.engine._checkpoint import Checkpoint
from models import mlp, res_cnn
from qoi import ClassQoI, FunctionQoI
from slices import Slice

F64 = torch.float64

# --- a long query in a subprocess, killed with SIGKILL ------------------------------------

BUILD = """
import torch
from torch import nn

def build(n):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Softplus(), nn.Linear(16, 3)).double()
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x
"""

CHILD = BUILD + """
import sys, time
import influence.engine._chunk as chunks
from doi import DatasetDoI, LineDoI
from influence import input_influence
from qoi import FunctionQoI

torch.set_num_threads(1)
chunks._MAX_CHUNK = 16
checkpoint, out, pause, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rows = [0]

def slow_f1(output):
    rows[0] += output.shape[0]
    time.sleep(pause)
    return output[:, 1]

model, x = build(n)
result = input_influence(model, FunctionQoI(slow_f1), DatasetDoI(x, each=LineDoI(steps=4)), batch_size=16, seed=0, checkpoint=checkpoint, checkpoint_every=0)
result.save(out)
print(rows[0])
"""


def _child(tmp_path: Path, pause: float, n: int) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(tmp_path / "query.ckpt"), str(tmp_path / "result.pt"), str(pause), str(n)]


def test_a_killed_query_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled query (2000 points × 4 steps, checkpoint after every chunk of 16 points)
    is killed with SIGKILL once a checkpoint exists; rerunning it evaluates only the
    remaining ``(N − P)·4`` rows and gives the uninterrupted result, bit for bit."""
    import influence.engine._chunk as chunks

    n = 2000
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = tmp_path / "query.ckpt"
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_child(tmp_path, 0.004, n), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
            assert proc.poll() is None, "the query ended before it could be killed: " + log.read_text()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    position = Checkpoint(ckpt, 0).load()["position"]  # type: ignore[index]
    assert 0 < position < n and position % 16 == 0
    done = subprocess.run(_child(tmp_path, 0.0, n), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == (n - position) * 4  # the first P points were not recomputed
    resumed = InfluenceResult.load(tmp_path / "result.pt")

    space: dict[str, Any] = {}
    exec(BUILD, space)
    model, x = space["build"](n)
    monkeypatch.setattr(chunks, "_MAX_CHUNK", 16)
    want = input_influence(model, ClassQoI(1), DatasetDoI(x, each=LineDoI(steps=4)), batch_size=16, seed=0)
    assert torch.equal(resumed.values, want.values) and torch.equal(resumed.stderr, want.stderr)
    assert resumed.anchors == n and resumed.samples == 4 * n


# --- in-process interruptions -----------------------------------------------------------

CALLS = {"left": None, "rows": 0}


def halting(output: Tensor) -> Tensor:
    """``f_1``; counts rows and raises KeyboardInterrupt when ``CALLS["left"]`` runs out."""
    CALLS["rows"] += output.shape[0]
    if CALLS["left"] is not None:
        CALLS["left"] -= 1
        if CALLS["left"] < 0:
            raise KeyboardInterrupt
    return output[:, 1]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of at most 4 points, so that small populations have many."""
    import influence.engine._chunk as chunks

    monkeypatch.setattr(chunks, "_MAX_CHUNK", 4)
    CALLS.update(left=None, rows=0)


def _interrupt_after(calls: int, run: Callable[[], Any]) -> None:
    CALLS["left"] = calls
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        CALLS["left"] = None


def _queries(rng: torch.Generator) -> dict[str, Callable[..., Any]]:
    x = torch.randn(30, 6, generator=rng, dtype=F64)
    xc = torch.randn(24, 3, 8, 8, generator=rng, dtype=F64)
    yc = torch.arange(24) % 2
    m, c = mlp(6, 8, 3).double(), res_cnn().double()
    return {
        # random noise (G = S groups: per-anchor variances), two QoIs sharing the pass
        "noise-two-qois": lambda **o: input_influence(
            m, [FunctionQoI(halting), ClassQoI(2)], DatasetDoI(x, each=NoiseDoI(0.2, samples=4, sampler="random")), **{"batch_size": 8, "seed": 5, **o}
        ),
        # a conv layer (channel sums), a class of the data, integrated-gradients form
        "class-line-conv": lambda **o: internal_influence(
            Slice(c, "layer1"), FunctionQoI(halting), ClassDoI((xc, yc), 1, each=LineDoI(steps=3)), multiply_activation=True, **{"batch_size": 6, "seed": 2, **o}
        ),
    }


@pytest.mark.parametrize("name", ["noise-two-qois", "class-line-conv"])
@pytest.mark.parametrize("after", [5, 9])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, rng: torch.Generator, small_chunks: None, name: str, after: int) -> None:
    """Ctrl-C (KeyboardInterrupt from the QoI after ``after`` calls: batches, and for the
    line the two ends' passes of each chunk) saves the checkpoint; the rerun resumes
    after its ``P`` points and equals the uninterrupted run exactly (values, standard
    errors, channel standard errors, counts, completeness)."""
    run = _queries(rng)[name]
    ckpt = tmp_path / "q.ckpt"
    want = run()
    _interrupt_after(after, lambda: run(checkpoint=ckpt, checkpoint_every=3600))
    position = Checkpoint(ckpt, 0).load()["position"]  # type: ignore[index]
    assert position > 0
    got = run(checkpoint=ckpt, checkpoint_every=3600)
    for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
        assert torch.equal(g.values, w.values) and torch.equal(g.stderr, w.stderr)
        assert (g.channel_stderr is None) == (w.channel_stderr is None)
        assert g.channel_stderr is None or torch.equal(g.channel_stderr, w.channel_stderr)
        assert (g.anchors, g.samples) == (w.anchors, w.samples)
        assert (g.completeness is None) == (w.completeness is None) == (name != "class-line-conv")
        assert g.completeness is None or torch.equal(g.completeness, w.completeness)
        assert g.query["checkpoint"] == str(ckpt)


def test_a_resumed_query_may_change_its_batch_size(tmp_path: Path, rng: torch.Generator, small_chunks: None) -> None:
    """The checkpoint counts points, not batches: resumed with another batch size (so
    other chunks), the result equals the uninterrupted one up to float64 rounding."""
    run = _queries(rng)["noise-two-qois"]
    want = run()
    _interrupt_after(3, lambda: run(checkpoint=tmp_path / "q.ckpt"))
    got = run(checkpoint=tmp_path / "q.ckpt", batch_size=5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.values, w.values, **tolerance(F64))
        torch.testing.assert_close(g.stderr, w.stderr, **tolerance(F64))


def test_a_finished_checkpoint_returns_the_result_without_computing(tmp_path: Path, rng: torch.Generator, small_chunks: None) -> None:
    run = _queries(rng)["class-line-conv"]
    first = run(checkpoint=tmp_path / "q.ckpt")
    CALLS["rows"] = 0
    again = run(checkpoint=tmp_path / "q.ckpt")
    assert CALLS["rows"] == 0
    assert torch.equal(again.values, first.values) and torch.equal(again.stderr, first.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["q.ckpt"]  # no temporary files left


def test_seed_none_resumes_with_the_checkpoints_seed(tmp_path: Path, rng: torch.Generator, small_chunks: None) -> None:
    """With ``seed=None`` the first run draws a seed and records it; the rerun uses the
    checkpoint's seed instead of drawing a new one, so it can resume."""
    x = torch.randn(20, 6, generator=rng, dtype=F64)
    model = mlp(6, 8, 3).double()
    run = lambda: input_influence(model, FunctionQoI(halting), DatasetDoI(x, each=NoiseDoI(0.3, samples=4)), checkpoint=tmp_path / "q.ckpt")  # noqa: E731
    _interrupt_after(2, run)
    seed = Checkpoint(tmp_path / "q.ckpt", 0).load()["seed"]  # type: ignore[index]
    got = run()
    assert got.query["seed"] == seed
    want = input_influence(model, ClassQoI(1), DatasetDoI(x, each=NoiseDoI(0.3, samples=4)), seed=seed)
    assert torch.equal(got.values, want.values)


# --- refusals ------------------------------------------------------------------------------


def _base(rng: torch.Generator) -> dict[str, Any]:
    x = torch.randn(24, 6, generator=rng, dtype=F64)
    return {
        "model": mlp(6, 8, 3).double(), "x": x, "steps": 3, "seed": 1, "qoi": ClassQoI(1), "baseline": torch.zeros(6, dtype=F64),
        "multiply": False, "affine_prefix": True,
    }


def _run(spec: dict[str, Any], path: Path) -> InfluenceResult:
    doi = DatasetDoI(spec["x"], each=LineDoI(spec["baseline"], steps=spec["steps"]))
    return input_influence(  # type: ignore[return-value]
        spec["model"], spec["qoi"], doi, seed=spec["seed"], multiply_activation=spec["multiply"], affine_prefix=spec["affine_prefix"], checkpoint=path
    )


def _other_weights(spec: dict[str, Any]) -> None:
    spec["model"] = mlp(6, 8, 3, seed=1).double()


def _last_point(spec: dict[str, Any]) -> None:
    spec["x"] = spec["x"].clone()
    spec["x"][-1, 0] += 1e-9


def _first_point(spec: dict[str, Any]) -> None:
    spec["x"] = spec["x"].clone()
    spec["x"][0, 3] += 1e-9


CHANGES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "seed": (lambda s: s.update(seed=2), "its seed differs"),
    "weights": (_other_weights, "its model differs"),
    "steps": (lambda s: s.update(steps=4), "its doi differs"),
    "baseline": (lambda s: s.update(baseline=torch.full((6,), 0.5, dtype=F64)), "its doi differs"),
    "qoi": (lambda s: s.update(qoi=ClassQoI(2)), "its qoi differs"),
    "multiply": (lambda s: s.update(multiply=True), "its multiply_activation differs"),
    "affine prefix": (lambda s: s.update(affine_prefix=False), "its affine_prefix differs"),
    "more points": (lambda s: s.update(x=torch.cat([s["x"], s["x"][:1]])), "its data differs"),
    "first point": (_first_point, "its data differs"),
    "last point": (_last_point, "the data differs from the checkpoint's at the point where it stopped"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_checkpoint_of_another_query_is_refused(tmp_path: Path, rng: torch.Generator, change: str) -> None:
    """Model weights, seed, DoI (also a tensor baseline), QoI, multiply_activation,
    affine_prefix (it moves rounding, and a resumed run must equal an uninterrupted one) and
    the data (size, first point, the points just before the resume position) are
    checked; a mismatch raises a ValueError naming ``checkpoint`` and what differs, and
    leaves the checkpoint as it was."""
    spec = _base(rng)
    path = tmp_path / "q.ckpt"
    _run(spec, path)
    before = path.read_bytes()
    modify, message = CHANGES[change]
    modify(spec)
    with pytest.raises(ValueError, match="^checkpoint: .*" + message):
        _run(spec, path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "empty", "not a checkpoint"])
def test_a_damaged_checkpoint_is_refused(tmp_path: Path, rng: torch.Generator, damage: str) -> None:
    """Every byte is covered by a SHA-256 checksum: any damage is a clear error, never a
    wrong answer."""
    spec = _base(rng)
    path = tmp_path / "q.ckpt"
    _run(spec, path)
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) * 2 // 3] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "empty":
        data = bytearray()
    else:
        torch.save({"position": 3}, path)
        data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="^checkpoint: .* is not an intact influence checkpoint"):
        _run(spec, path)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, rng: torch.Generator, small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saves go to a temporary file, fsync'ed, then renamed over the checkpoint: a
    failure before the rename (simulated: a full disk) leaves the previous checkpoint
    intact and no temporary file; the query can then resume from it."""
    import warnings

    run = _queries(rng)["class-line-conv"]
    want = run()
    path = tmp_path / "q.ckpt"
    _interrupt_after(5, lambda: run(checkpoint=path, checkpoint_every=3600))
    before = path.read_bytes()
    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(OSError, match="disk full"):
        warnings.simplefilter("always")
        run(checkpoint=path, checkpoint_every=0)
    assert any("could not save the checkpoint" in str(w.message) for w in caught)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["q.ckpt"]
    monkeypatch.setattr(os, "replace", real_replace)
    got = run(checkpoint=path)
    assert torch.equal(got.values, want.values) and torch.equal(got.stderr, want.stderr)


def test_checkpoint_arguments_are_checked(tmp_path: Path, rng: torch.Generator) -> None:
    model = mlp(6, 8, 3).double()
    x = torch.randn(4, 6, generator=rng, dtype=F64)
    with pytest.raises(ValueError, match="checkpoint: only population DoIs"):
        input_influence(model, ClassQoI(0), LineDoI(steps=2), x, checkpoint=tmp_path / "q.ckpt")
    with pytest.raises(ValueError, match="checkpoint: folder .* does not exist"):
        input_influence(model, ClassQoI(0), DatasetDoI(x), checkpoint=tmp_path / "missing" / "q.ckpt")
    with pytest.raises(ValueError, match="checkpoint: .* is a folder"):
        input_influence(model, ClassQoI(0), DatasetDoI(x), checkpoint=tmp_path)
    with pytest.raises(TypeError, match="checkpoint: expected a file path"):
        input_influence(model, ClassQoI(0), DatasetDoI(x), checkpoint=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_every: expected seconds >= 0"):
        input_influence(model, ClassQoI(0), DatasetDoI(x), checkpoint=tmp_path / "q.ckpt", checkpoint_every=-1)


# --- YAML `checkpoint:` and `influence run --checkpoint DIR` -----------------------------

FACTORY = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
"""


def _query_file(folder: Path, extra: str = "", doi: str = "{kind: dataset, each: {kind: noise, samples: 4, sampler: random}}") -> Path:
    (folder / "tiny.py").write_text(FACTORY)
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(40, 5, generator=g, dtype=F64), "y": torch.arange(40) % 3}, folder / "data.pt")
    path = folder / "q.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            model: {{factory: "tiny:build"}}
            data: {{path: data.pt}}
            defaults: {{seed: 3, batch_size: 8}}
            queries:
              - name: pooled
                doi: {doi}
                qoi: {{kind: class, label: 1}}
                {extra}
              - name: points
                doi: {{kind: line, steps: 4}}
                qoi: {{kind: class, label: 1}}
                inputs: {{limit: 3}}
            """
        )
    )
    return path


def _python_pooled(folder: Path) -> InfluenceResult:
    space: dict[str, Any] = {}
    exec(FACTORY, space)
    data = torch.load(folder / "data.pt")
    doi = DatasetDoI(data["x"], each=NoiseDoI(0.1, samples=4, sampler="random"))
    return input_influence(space["build"](), ClassQoI(1), doi, seed=3, batch_size=8)  # type: ignore[return-value]


def test_yaml_checkpoint_key_keeps_and_resumes_a_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``checkpoint: FILE`` (relative to the query file) is written by the run; the rerun
    resumes from it (nothing left to compute) and writes the same result, which equals
    the Python call."""
    from influence.queries.cli import main

    path = _query_file(tmp_path, "checkpoint: state/pooled.ckpt")
    (tmp_path / "state").mkdir()
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "state" / "pooled.ckpt").exists()
    first = InfluenceResult.load(tmp_path / "out" / "pooled.pt")
    assert first.query["checkpoint"] == str(tmp_path / "state" / "pooled.ckpt")
    assert torch.equal(first.values, _python_pooled(tmp_path).values)
    assert main(["run", str(path), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert torch.equal(InfluenceResult.load(tmp_path / "again" / "pooled.pt").values, first.values)
    capsys.readouterr()


def test_yaml_checkpoint_errors_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint on a pointwise query, a missing folder, and a checkpoint of another
    query are bad queries (exit code 2) naming ``queries[i].checkpoint``."""
    from influence.queries.cli import main

    out = ["--out", str(tmp_path / "out"), "--quiet"]
    path = _query_file(tmp_path, "checkpoint: missing/pooled.ckpt")
    assert main(["run", str(path), *out]) == 2
    assert "queries[0].checkpoint: folder not found" in capsys.readouterr().err
    path = _query_file(tmp_path, "checkpoint: pooled.ckpt", doi="{kind: point}")
    assert main(["run", str(path), *out]) == 2
    assert "queries[0].checkpoint: applies to class and dataset DoIs" in capsys.readouterr().err
    path = _query_file(tmp_path, "checkpoint: pooled.ckpt")
    assert main(["run", str(path), *out]) == 0
    path.write_text(path.read_text().replace("seed: 3", "seed: 4"))
    assert main(["run", str(path), *out]) == 2
    err = capsys.readouterr().err
    assert "queries[0].checkpoint:" in err and "its seed differs" in err


def test_cli_checkpoint_folder_holds_one_file_per_pooled_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--checkpoint DIR`` gives every class/dataset query ``DIR/<name>.ckpt`` (the
    pointwise query none); the result files are written whole (no temporary files)."""
    from influence.queries.cli import main

    path = _query_file(tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint", str(tmp_path / "ck")]) == 0
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["pooled.ckpt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["points.json", "points.pt", "pooled.json", "pooled.pt"]
    assert Checkpoint(tmp_path / "ck" / "pooled.ckpt", 0).load()["position"] == 40  # type: ignore[index]
    capsys.readouterr()
