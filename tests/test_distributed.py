"""Sharding a query over ``torch.distributed`` processes (two CPU processes, gloo).

Pooled DoIs: chunk ``i`` of the population goes to rank ``i mod 2`` and the float64 sums
and counts are all-reduced; pointwise DoIs: rank ``r`` explains the
anchors ``[r·N/2, (r+1)·N/2)`` and the blocks are gathered. Random draws depend only on
``(seed, anchor id, sample)``, so every anchor gets the same samples as in one process:
the results equal the single-process ones up to the order of float64 additions (1e-10).
All processes are started once, by one ``torch.multiprocessing.spawn``; each writes what
it got to a file that the tests compare with single-process runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from conftest import tolerance
from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import InfluenceResult, input_influence, internal_influence
from models import mlp, res_cnn
from qoi import ClassQoI, FunctionQoI
from slices import Slice

F64 = torch.float64
WORLD = 2


class NaNAbove(nn.Module):
    """An MLP whose output is NaN where the first input feature exceeds 1.5."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(4, 8, 3, seed=5)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return torch.where(x[:, :1] > 1.5, torch.full_like(out, float("nan")), out)


COUNTS = {"rows": 0, "stop_after": None}  # rows seen by `counted` (per process); stop after that many calls


def counted(out: Tensor) -> Tensor:
    """``f_1``, counting the rows evaluated (and raising KeyboardInterrupt after
    ``stop_after`` calls, when set)."""
    COUNTS["rows"] += out.shape[0]
    if COUNTS["stop_after"] is not None:
        COUNTS["stop_after"] -= 1
        if COUNTS["stop_after"] < 0:
            raise KeyboardInterrupt
    return out[:, 1]


READS = {"items": 0}  # items read from `CountingDataset` (per process)


class CountingDataset(torch.utils.data.Dataset):
    """A map-style dataset that counts the items read from it."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        READS["items"] += 1
        return self.x[i]


def _data() -> dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(37, 6, generator=g, dtype=F64)
    xc = torch.randn(11, 3, 8, 8, generator=g, dtype=F64)
    yc = torch.arange(11) % 3
    xn = torch.randn(30, 4, generator=g, dtype=F64)
    return {"x": x, "xc": xc, "yc": yc, "xn": xn, "once": torch.tensor([0, 1, 1, 2, 1])}


def cases(folder: Path) -> dict[str, Callable[..., Any]]:
    """The queries every process runs (the same calls in one process give the reference)."""
    d = _data()
    m = mlp(6, 16, 4).double()
    c = res_cnn().double()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d["x"]), batch_size=5)
    nan_model = NaNAbove().double()
    tanh_mlp, relu_mlp = mlp(6, 16, 4, act=nn.Tanh, seed=1).double(), mlp(6, 16, 4, act=nn.ReLU, seed=2).double()
    return {
        # pooled: a DataLoader population, random noise around each point
        "dataset-noise": lambda **o: input_influence(m, ClassQoI(1), DatasetDoI(loader, each=NoiseDoI(0.2, samples=6, sampler="random")), batch_size=7, seed=3, **o),
        # pooled over a map-style Dataset: each process reads its own chunks only
        "dataset-map": lambda **o: input_influence(m, ClassQoI(2), DatasetDoI(CountingDataset(d["x"]), each=LineDoI(steps=3)), batch_size=4, seed=5, **o),
        # pooled at a conv layer, two QoIs, integrated gradients form: channel sums too
        "class-line-conv": lambda **o: internal_influence(
            Slice(c, "layer1"), [ClassQoI(0), ClassQoI(2) - ClassQoI(1)], ClassDoI((d["xc"], d["yc"]), 2, each=LineDoI(steps=4)), batch_size=16, multiply_activation=True, seed=1, **o
        ),
        # pooled over a single point: its own Monte Carlo error is the standard error
        "one-member": lambda **o: internal_influence(Slice(c, "layer2"), ClassQoI(3), ClassDoI((d["xc"][:5], d["once"]), 0, each=NoiseDoI(0.1, samples=8)), seed=2, **o),
        # pointwise: 5 anchors split 2 + 3
        "line": lambda **o: input_influence(m, ClassQoI(1), LineDoI(steps=8), d["x"][:5], batch_size=8, multiply_activation=True, seed=0, **o),
        "noise-conv": lambda **o: internal_influence(Slice(c, "layer2"), ClassQoI(0), NoiseDoI(0.1, samples=8), d["xc"][:3], seed=1, batch_size=16, **o),
        # pointwise with one anchor: rank 0 has none of its own
        "one-point": lambda **o: input_influence(m, ClassQoI(2), NoiseDoI(0.3, samples=4, sampler="random"), d["x"][:1], seed=4, **o),
        # non-finite outputs skipped: the counts are summed over processes
        "skip-pooled": lambda **o: input_influence(nan_model, ClassQoI(0), DatasetDoI(d["xn"], each=PointDoI()), nonfinite="skip", batch_size=4, seed=0, **o),
        "skip-pointwise": lambda **o: input_influence(
            nan_model, ClassQoI(0), LineDoI(steps=4), d["xn"][:9], nonfinite="skip", batch_size=4, seed=0, multiply_activation=True, **o
        ),
        # pointwise Sobol noise followed by a non-affine tail (see
        # test_sobol_draws_do_not_depend_on_the_process): in the input of a tanh MLP, and at
        # the first ReLU of a ReLU MLP (g = Linear, ReLU, Linear); 7 anchors split 3 + 4,
        # batches of 6 rows cut anchors mid-way, 3 Sobol replicates of 4 points per anchor
        "sobol-input-tanh": lambda seed=6, **o: input_influence(
            tanh_mlp, ClassQoI(1), NoiseDoI(0.5, samples=12), d["x"][:7], batch_size=6, seed=seed, **o
        ),
        "sobol-slice-relu": lambda seed=6, **o: internal_influence(
            Slice(relu_mlp, "1"), ClassQoI(2), NoiseDoI(0.5, samples=12, space="slice"), d["x"][:7], batch_size=6, seed=seed, **o
        ),
        # resumes the checkpoint that the test left after an interrupted single-process run
        "resume": lambda **o: input_influence(
            m, FunctionQoI(counted), DatasetDoI(d["x"], each=LineDoI(steps=3)), batch_size=6, seed=8, checkpoint=folder / "resume.ckpt", checkpoint_every=0, **o
        ),
    }


def _pack(result: Any) -> list[dict[str, Any]]:
    results = result if isinstance(result, list) else [result]
    return [
        {"values": r.values, "stderr": r.stderr, "channel_stderr": r.channel_stderr, "completeness": r.completeness, "anchors": r.anchors, "samples": r.samples, "query": r.query}
        for r in results
    ]


def _worker(rank: int, folder: str) -> None:
    import warnings

    warnings.simplefilter("ignore")  # the skip cases warn on rank 0
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        out: dict[str, Any] = {}
        for name, run in cases(Path(folder)).items():
            COUNTS["rows"], READS["items"] = 0, 0
            out[name] = _pack(run())
            out[name + ":rows"] = COUNTS["rows"]
            out[name + ":reads"] = READS["items"]
        # seed=None: rank 0 draws the seed and every rank uses it (their RNGs differ)
        torch.manual_seed(100 + rank)
        out["seed-none"] = _pack(input_influence(mlp(6, 16, 4).double(), ClassQoI(0), DatasetDoI(_data()["x"], each=NoiseDoI(0.3, samples=4)), seed=None))
        # different seeds on different ranks: refused on every rank
        try:
            input_influence(mlp(6, 16, 4).double(), ClassQoI(0), NoiseDoI(0.3, samples=4), _data()["x"][:4], seed=rank)
            out["mismatch"] = None
        except ValueError as e:
            out["mismatch"] = str(e)
        # a non-finite value on one process: every process raises its error (none hangs)
        for name, run in [
            ("raise-pooled", lambda: input_influence(NaNAbove().double(), ClassQoI(0), DatasetDoI(_data()["xn"]), batch_size=4, seed=0)),
            ("raise-pointwise", lambda: input_influence(NaNAbove().double(), ClassQoI(0), PointDoI(), _data()["xn"][:9], batch_size=4, seed=0)),
        ]:
            try:
                run()
                out[name] = None
            except ValueError as e:
                out[name] = str(e)
        # distributed=False runs alone inside the group
        out["alone"] = _pack(input_influence(mlp(6, 16, 4).double(), ClassQoI(0), LineDoI(steps=4), _data()["x"][:3], seed=0, distributed=False))
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs every case in 2 processes once; returns the folder, each rank's outputs and
    the checkpoint left by the interrupted run (before the processes resumed it)."""
    import influence.engine._chunk as chunks

    folder = tmp_path_factory.mktemp("distributed")
    # an interrupted single-process run leaves a partial checkpoint for the "resume" case
    original = chunks._MAX_CHUNK
    chunks._MAX_CHUNK = 6
    COUNTS["stop_after"] = 9
    try:
        with pytest.raises(KeyboardInterrupt):
            cases(folder)["resume"]()
    finally:
        COUNTS["stop_after"] = None
        chunks._MAX_CHUNK = original
    from influence.engine._checkpoint import Checkpoint

    partial = Checkpoint(folder / "resume.ckpt", 0).load()
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    outs = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"folder": folder, "outs": outs, "partial": partial}


def _assert_same(got: list[dict[str, Any]], want: list[InfluenceResult]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g["values"], w.values, equal_nan=True, **tolerance(F64))
        torch.testing.assert_close(g["stderr"], w.stderr, equal_nan=True, **tolerance(F64))
        if w.channel_stderr is None:
            assert g["channel_stderr"] is None
        else:
            torch.testing.assert_close(g["channel_stderr"], w.channel_stderr, equal_nan=True, **tolerance(F64))
        if w.completeness is None:  # a line attribution's gap: gathered (pointwise) or summed (pooled)
            assert g["completeness"] is None
        else:
            torch.testing.assert_close(g["completeness"], w.completeness, equal_nan=True, rtol=1e-8, atol=1e-12)
        assert (g["anchors"], g["samples"], g["query"]["seed"]) == (w.anchors, w.samples, w.query["seed"])
        assert g["query"].get("skipped") == w.query.get("skipped")


@pytest.mark.parametrize("name", ["dataset-noise", "dataset-map", "class-line-conv", "one-member", "line", "noise-conv", "one-point", "skip-pooled", "skip-pointwise"])
def test_two_processes_equal_one(shards: dict[str, Any], name: str) -> None:
    """Every rank returns the whole result, equal to one process's to 1e-10 (float64
    sums in another order): values, standard errors, channel standard errors, counts."""
    run = cases(shards["folder"])[name]
    if name.startswith("skip"):
        with pytest.warns(RuntimeWarning, match="skipped"):
            want = run()
    else:
        want = run()
    for out in shards["outs"]:
        _assert_same(out[name], want if isinstance(want, list) else [want])


@pytest.mark.parametrize("name", ["sobol-input-tanh", "sobol-slice-relu"])
def test_sobol_draws_do_not_depend_on_the_process(shards: dict[str, Any], name: str) -> None:
    """Each anchor's Sobol replicates are shifted by uniforms keyed by its id in the whole
    stream of anchors, so rank 1, whose chunk starts at anchor 3, draws what one process
    draws for anchors 3..6: the results are equal to 1e-10. The other pointwise noise cases
    cannot show this: after the cut of ``noise-conv`` the network is affine, its gradient is
    the same at every sample and any draws give the same values (and a zero standard error);
    ``one-point`` has one anchor, whose id is 0 on either process. Here the tail is not
    affine, and the test first checks that the draws matter: another seed moves the values
    and the standard errors are not zero."""
    run = cases(shards["folder"])[name]
    want, other = run(), run(seed=7)
    assert (want.values - other.values).abs().max() > 1e-3 * want.values.abs().max()
    assert (want.stderr > 0).all()
    for out in shards["outs"]:
        _assert_same(out[name], [want])


def test_each_process_reads_its_own_chunks_of_a_dataset(shards: dict[str, Any]) -> None:
    """A map-style Dataset is read by index: 37 points in two chunks (20 + 17: a
    multiple of the 4 anchors that fill whole batches of 3 samples each), each process
    reads its own chunk, plus the first batch (4 points) and one point to probe."""
    reads = [out["dataset-map:reads"] for out in shards["outs"]]
    assert reads == [20 + 4 + 1, 17 + 4 + 1]


def test_skipped_counts_are_summed_over_processes(shards: dict[str, Any]) -> None:
    """Points with first feature > 1.5 give NaN outputs: each is skipped once, whichever
    process held it."""
    x = _data()["xn"]
    bad = int((x[:, 0] > 1.5).sum())
    assert bad > 0
    for out in shards["outs"]:
        assert out["skip-pooled"][0]["query"]["skipped"] == bad
        assert out["skip-pooled"][0]["anchors"] == x.shape[0] - bad
        rows = out["skip-pointwise"][0]["values"].isnan().all(1)
        assert torch.equal(rows, x[:9, 0] > 1.5)


def test_a_seed_drawn_on_rank_zero_is_used_everywhere(shards: dict[str, Any]) -> None:
    """With ``seed=None`` (and different RNG states), all ranks use rank 0's seed; a
    single process with that seed gives the same result."""
    a, b = (out["seed-none"][0] for out in shards["outs"])
    assert a["query"]["seed"] == b["query"]["seed"]
    assert torch.equal(a["values"], b["values"])
    want = input_influence(mlp(6, 16, 4).double(), ClassQoI(0), DatasetDoI(_data()["x"], each=NoiseDoI(0.3, samples=4)), seed=a["query"]["seed"])
    _assert_same([a], [want])


def test_different_calls_on_different_ranks_are_refused(shards: dict[str, Any]) -> None:
    """Every rank raises the same clear error (rather than hanging in a collective)."""
    messages = [out["mismatch"] for out in shards["outs"]]
    assert messages[0] is not None and messages[0] == messages[1]
    assert "distributed: process 1 runs a different seed" in messages[0]


@pytest.mark.parametrize("name", ["raise-pooled", "raise-pointwise"])
def test_a_failure_on_one_process_is_raised_on_all(shards: dict[str, Any], name: str) -> None:
    """``nonfinite="raise"``: the process that meets the NaN stops; at the next
    exchange every process raises the same ValueError, naming a bad anchor."""
    x = _data()["xn"]
    messages = [out[name] for out in shards["outs"]]
    assert messages[0] is not None and messages[0] == messages[1]
    anchor = int(messages[0].split("at anchor ")[1].split()[0])
    assert x[anchor, 0] > 1.5 and "non-finite QoI value of ClassQoI(0)" in messages[0]


def test_distributed_false_runs_alone(shards: dict[str, Any]) -> None:
    want = input_influence(mlp(6, 16, 4).double(), ClassQoI(0), LineDoI(steps=4), _data()["x"][:3])
    for out in shards["outs"]:
        assert torch.equal(out["alone"][0]["values"], want.values)


def test_processes_resume_a_checkpoint(shards: dict[str, Any]) -> None:
    """A checkpoint left by an interrupted single-process run is resumed by two
    processes: they compute only the remaining points (rows evaluated in total =
    (N − P)·S) and give the uninterrupted result; the final checkpoint then returns the
    same result to a single process without computing anything."""
    partial = shards["partial"]
    position = partial["position"]
    n, steps = _data()["x"].shape[0], 3
    assert 0 < position < n
    assert sum(out["resume:rows"] for out in shards["outs"]) == (n - position) * steps
    m = mlp(6, 16, 4).double()
    want = input_influence(m, FunctionQoI(counted), DatasetDoI(_data()["x"], each=LineDoI(steps=3)), batch_size=6, seed=8)
    for out in shards["outs"]:
        _assert_same(out["resume"], [want])
    COUNTS["rows"] = 0
    again = cases(shards["folder"])["resume"]()
    assert COUNTS["rows"] == 0
    assert torch.equal(again.values, shards["outs"][0]["resume"][0]["values"])


def test_torchrun_runs_a_query_file_with_rank_zero_writing(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m influence run q.yaml``: the command line
    initialises the process group (gloo), both processes compute, rank 0 alone prints
    and writes; the pooled and pointwise results equal a single-process run's (1e-10)."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "tiny.py").write_text("import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()\n")
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(45, 5, generator=g, dtype=F64), "y": torch.arange(45) % 3}, tmp_path / "data.pt")
    (tmp_path / "q.yaml").write_text(
        textwrap.dedent(
            """
            model: {factory: "tiny:build"}
            data: {path: data.pt}
            defaults: {seed: 3, batch_size: 8}
            queries:
              - {name: pooled, doi: {kind: class, label: 2, each: {kind: noise, samples: 4, sampler: random}}, qoi: {kind: class, label: 1}}
              - {name: points, doi: {kind: line, steps: 4}, qoi: {kind: class, label: 0}, inputs: {limit: 5}}
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *launcher, out: subprocess.run(  # noqa: E731
        [sys.executable, *launcher, "-m", "influence", "run", str(tmp_path / "q.yaml"), "--out", str(tmp_path / out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    two = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", out="two")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("ran 2 queries") == 1  # printed by rank 0 only
    one = run(out="one")
    assert one.returncode == 0, one.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["points.json", "points.pt", "pooled.json", "pooled.pt"]
    for name in ("pooled", "points"):
        a, b = InfluenceResult.load(tmp_path / "two" / f"{name}.pt"), InfluenceResult.load(tmp_path / "one" / f"{name}.pt")
        torch.testing.assert_close(a.values, b.values, **tolerance(F64))
        torch.testing.assert_close(a.stderr, b.stderr, **tolerance(F64))


def test_distributed_true_needs_a_process_group() -> None:
    with pytest.raises(ValueError, match="distributed: torch.distributed is not initialised"):
        input_influence(nn.Linear(3, 2).double(), ClassQoI(0), PointDoI(), torch.zeros(2, 3, dtype=F64), distributed=True)
    with pytest.raises(TypeError, match="distributed"):
        input_influence(nn.Linear(3, 2).double(), ClassQoI(0), PointDoI(), torch.zeros(2, 3, dtype=F64), distributed="yes")  # type: ignore[arg-type]
