"""InfluenceResult: ranking units and channels (with the right standard errors),
pointwise vs pooled access, save/load, numpy, and lists of QoIs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from conftest import tolerance
from doi import DatasetDoI, LineDoI, NoiseDoI, PointDoI, Rows
from influence import InfluenceResult, Ranked, input_influence, internal_influence
from models import mlp, res_cnn
from qoi import ClassQoI, ComparativeQoI
from slices import Slice

F64 = torch.float64


def _made(values: Tensor, stderr: Tensor | None = None, *, pooled: bool = True, channel_stderr: Tensor | None = None) -> InfluenceResult:
    return InfluenceResult(
        values=values.double(),
        stderr=torch.zeros_like(values, dtype=F64) if stderr is None else stderr.double(),
        samples=1,
        anchors=1 if pooled else values.shape[0],
        pooled=pooled,
        query={"qoi": "test"},
        channel_stderr=channel_stderr,
    )


# ---------------------------------------------------------------- top by unit


def test_top_by_unit_hand_made() -> None:
    """Units ranked by value, largest first, as index tuples with their stderr;
    ``absolute=True`` ranks by ``|value|`` but reports the signed value."""
    values = torch.tensor([[1.0, -5.0, 0.5], [3.0, 2.0, -0.25]], dtype=F64)
    stderr = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=F64)
    res = _made(values, stderr)
    assert res.top(3) == [Ranked((1, 0), 3.0, 0.4), Ranked((1, 1), 2.0, 0.5), Ranked((0, 0), 1.0, 0.1)]
    assert res.top(2, absolute=True) == [Ranked((0, 1), -5.0, 0.2), Ranked((1, 0), 3.0, 0.4)]
    assert len(res.top(100)) == 6


def test_top_on_1d_units_gives_int_indices() -> None:
    res = _made(torch.tensor([0.5, -2.0, 1.5]))
    assert res.top(2) == [Ranked(2, 1.5, 0.0), Ranked(0, 0.5, 0.0)]
    assert [r.index for r in res.top(3, absolute=True)] == [1, 2, 0]
    # by="channel" on 1-D units ranks the units themselves
    assert res.top(1, by="channel") == [Ranked(2, 1.5, 0.0)]


def test_top_by_unit_on_a_real_result(rng: torch.Generator) -> None:
    """On a ``(4, 8, 8)`` slice: ``top(k)`` are the ``k`` largest entries of ``values``
    in descending order, and ``values[index]`` is the reported value."""
    model = res_cnn().double()
    x = torch.randn(1, 3, 8, 8, generator=rng, dtype=F64)
    res = internal_influence(Slice(model, "layer1"), 1, PointDoI(), x)
    assert res.unit_shape == (4, 8, 8)
    for absolute in (False, True):
        top = res.top(10, absolute=absolute)
        key = res.values[0].abs() if absolute else res.values[0]
        expected = key.flatten().sort(descending=True).values[:10]
        assert all(isinstance(r.index, tuple) and len(r.index) == 3 for r in top)
        got = [float(key[r.index]) for r in top]
        assert got == expected.tolist()
        assert all(r.value == float(res.values[0][r.index]) for r in top)


# ---------------------------------------------------------------- top by channel


def test_top_by_channel_hand_made() -> None:
    """``agg="sum"``: channel scores ``Σ_{spatial} values[c]`` with ``channel_stderr[c]``;
    ``agg="max"``: ``max_{spatial} values[c]`` with the stderr of the maximising unit."""
    values = torch.tensor([[[1.0, 2.0], [3.0, -1.0]], [[4.0, 0.0], [0.0, 0.0]], [[-9.0, 0.0], [0.0, 1.0]]], dtype=F64)
    stderr = torch.arange(12, dtype=F64).view(3, 2, 2) / 100
    res = _made(values, stderr, channel_stderr=torch.tensor([0.7, 0.8, 0.9], dtype=F64))
    assert res.top(3, by="channel") == [Ranked(0, 5.0, 0.7), Ranked(1, 4.0, 0.8), Ranked(2, -8.0, 0.9)]
    assert res.top(1, by="channel", absolute=True) == [Ranked(2, -8.0, 0.9)]
    assert res.top(3, by="channel", agg="max") == [Ranked(1, 4.0, 0.04), Ranked(0, 3.0, 0.02), Ranked(2, 1.0, 0.11)]


def test_channel_stderr_of_a_pooled_result(rng: torch.Generator) -> None:
    """For a population DoI over ``N`` anchors the stderr of a channel sum is
    ``sd_i(s_{i,c}) / √N`` where ``s_{i,c} = Σ_{spatial} χ_i[c]`` is anchor ``i``'s channel
    sum, computed here independently from the pointwise results over the same anchors
    (the channel sums are correlated units, so this is not the units' stderrs combined).
    ``top(by="channel")`` reports exactly these values and errors."""
    model = res_cnn().double()
    n = 9
    x = torch.randn(n, 3, 8, 8, generator=rng, dtype=F64)
    slc = Slice(model, "layer1")  # (4, 8, 8); nonlinear after the cut, so gradients vary with x
    pooled = internal_influence(slc, 2, DatasetDoI(x), batch_size=4)
    pointwise = internal_influence(slc, 2, PointDoI(), x, batch_size=4)
    assert pooled.pooled and pooled.anchors == n
    sums = pointwise.values.flatten(2).sum(-1)  # (N, C)
    expected = sums.std(0) / math.sqrt(n)
    assert pooled.channel_stderr is not None and pooled.channel_stderr.shape == (4,)
    assert bool((expected > 0).all())
    torch.testing.assert_close(pooled.channel_stderr, expected, **tolerance(F64))
    torch.testing.assert_close(pooled.values, pointwise.values.mean(0), **tolerance(F64))
    torch.testing.assert_close(pooled.stderr, pointwise.values.std(0) / math.sqrt(n), **tolerance(F64))
    # not the root-sum-of-squares of the unit stderrs
    naive = pooled.stderr.flatten(1).pow(2).sum(1).sqrt()
    assert not torch.allclose(pooled.channel_stderr, naive, rtol=1e-3)

    top = pooled.top(4, by="channel")
    means = sums.mean(0)
    assert [r.index for r in top] == means.argsort(descending=True).tolist()
    for r in top:
        assert r.value == pytest.approx(float(means[r.index]), rel=1e-12)
        assert r.stderr == pytest.approx(float(expected[r.index]), rel=1e-9)
    top_max = pooled.top(4, by="channel", agg="max")
    flat = pooled.values.flatten(1)
    for r in top_max:
        assert r.value == float(flat[r.index].max())
        assert r.stderr == float(pooled.stderr.flatten(1)[r.index][flat[r.index].argmax()])


def test_channel_stderr_of_a_pointwise_noise_result(rng: torch.Generator) -> None:
    """Pointwise NoiseDoI (random, ``S`` samples of weight ``1/S``): anchor ``i``'s channel
    stderr is ``sd_k(s_{ik,c}) / √S`` over the per-sample gradients' channel sums;
    recomputed by drawing the same noise points (draws depend only on seed, anchor id and
    sample index) and taking PointDoI gradients there. ``top(by="channel", anchor=i)``
    reads row ``i``."""
    model = res_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=rng, dtype=F64)
    samples, seed = 6, 17
    doi = NoiseDoI(sigma=0.3, samples=samples, sampler="random")
    slc = Slice(model, "layer1")
    res = internal_influence(slc, 0, doi, x, seed=seed, batch_size=5)
    points, _ = doi.draw(x, None, Rows.build(0, 2 * samples, samples, 0, torch.device("cpu")), seed)
    grads = internal_influence(slc, 0, PointDoI(), points).values.view(2, samples, 4, 8, 8)
    sums = grads.flatten(3).sum(-1)  # (2, S, C)
    torch.testing.assert_close(res.values, grads.mean(1), **tolerance(F64))
    torch.testing.assert_close(res.stderr, grads.std(1) / math.sqrt(samples), **tolerance(F64))
    assert res.channel_stderr is not None
    torch.testing.assert_close(res.channel_stderr, sums.std(1) / math.sqrt(samples), **tolerance(F64))
    for i in range(2):
        for ranked in res.top(4, by="channel", anchor=i):
            assert ranked.stderr == pytest.approx(float(res.channel_stderr[i, ranked.index]), rel=1e-12)
            assert ranked.value == pytest.approx(float(sums[i].mean(0)[ranked.index]), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- pointwise vs pooled


def test_pointwise_top_needs_anchor(rng: torch.Generator) -> None:
    values = torch.randn(3, 4, generator=rng, dtype=F64)
    res = _made(values, pooled=False)
    with pytest.raises(ValueError, match=r"explains 3 points; pass anchor=<0..2>"):
        res.top(2)
    with pytest.raises(ValueError, match=r"anchor must be in 0..2 \(got 3\)"):
        res.top(2, anchor=3)
    best = int(values[1].argmax())
    assert res.top(1, anchor=1)[0] == Ranked(best, float(values[1, best]), 0.0)
    single = _made(values[:1], pooled=False)
    assert single.top(1) == single.top(1, anchor=0)
    with pytest.raises(ValueError, match="pointwise results only"):
        _made(values[0]).top(1, anchor=0)


def test_top_argument_checks() -> None:
    res = _made(torch.tensor([1.0, 2.0]))
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            res.top(k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="by must be"):
        res.top(1, by="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="agg must be"):
        res.top(1, agg="mean")  # type: ignore[arg-type]


# ---------------------------------------------------------------- save / load, numpy


@pytest.mark.parametrize("kind", ["pooled-conv", "pointwise-mlp"])
def test_save_load_round_trip(tmp_path, rng: torch.Generator, kind: str) -> None:
    """``load(save(r))`` has bit-identical tensors (``torch.equal``), the same counts,
    flag and query dict (incl. seed); ``channel_stderr`` stays ``None`` for 1-D units."""
    if kind == "pooled-conv":
        x = torch.randn(5, 3, 8, 8, generator=rng, dtype=F64)
        res = internal_influence(Slice(res_cnn().double(), "layer2"), 1, DatasetDoI(x, each=NoiseDoI(samples=4)), seed=3)
    else:
        x = torch.randn(3, 6, generator=rng, dtype=F64)
        res = input_influence(mlp().double(), 2, LineDoI(steps=4), x, seed=5)
    path = tmp_path / "result.pt"
    res.save(path)
    back = InfluenceResult.load(path)
    assert torch.equal(back.values, res.values) and back.values.dtype == F64
    assert torch.equal(back.stderr, res.stderr)
    if res.channel_stderr is None:
        assert kind == "pointwise-mlp" and back.channel_stderr is None
    else:
        assert back.channel_stderr is not None and torch.equal(back.channel_stderr, res.channel_stderr)
    assert (back.samples, back.anchors, back.pooled) == (res.samples, res.anchors, res.pooled)
    assert back.query == res.query and back.query["seed"] == (3 if kind == "pooled-conv" else 5)
    assert back.top(3, anchor=None if res.pooled else 0) == res.top(3, anchor=None if res.pooled else 0)
    assert [p.name for p in tmp_path.iterdir()] == ["result.pt"]  # no temporary left behind


def test_load_refuses_other_files(tmp_path) -> None:
    for name, payload in (("dict.pt", {"values": torch.zeros(2)}), ("tensor.pt", torch.zeros(3)), ("other.pt", {"format": "something/1"})):
        path = tmp_path / name
        torch.save(payload, path)
        with pytest.raises(ValueError, match="is not an influence result file"):
            InfluenceResult.load(path)


def test_numpy(rng: torch.Generator) -> None:
    x = torch.randn(2, 6, generator=rng, dtype=F64)
    res = input_influence(mlp().double(), 0, PointDoI(), x)
    arr = res.numpy()
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.shape == (2, 6)
    assert np.array_equal(arr, res.values.numpy())


# ---------------------------------------------------------------- lists of QoIs


def test_list_of_qois_returns_results_in_order(rng: torch.Generator) -> None:
    """A list of QoIs shares the forward passes and returns one result per QoI, in order,
    each equal to the single-QoI query; influence is linear in the QoI, so the
    comparison's influence is the difference of the classes'."""
    model = mlp().double()
    x = torch.randn(5, 6, generator=rng, dtype=F64)
    slc = Slice(model, "1")
    doi = LineDoI(steps=3)
    qois = [ClassQoI(0), ClassQoI(3), ComparativeQoI(0, 3)]
    results = internal_influence(slc, qois, doi, x, batch_size=4)
    assert isinstance(results, list) and len(results) == 3
    assert [r.query["qoi"] for r in results] == [repr(q) for q in qois]
    for q, r in zip(qois, results):
        alone = internal_influence(slc, q, doi, x, batch_size=4)
        torch.testing.assert_close(r.values, alone.values, **tolerance(F64))
    torch.testing.assert_close(results[2].values, results[0].values - results[1].values, **tolerance(F64))
    single = internal_influence(slc, [ClassQoI(1)], doi, x)
    assert isinstance(single, list) and len(single) == 1
