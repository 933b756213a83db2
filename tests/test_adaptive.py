"""Adaptive lines: ``LineDoI(baseline, tol=...)`` chooses each anchor's steps.

The scheme (:mod:`doi._adaptive`): 8 Gauss–Legendre nodes first; the anchors not yet
within ``tol`` go on together with a graded, nested trapezoid rule, level by level. With
``multiply_activation`` an anchor is done when its relative completeness gap
``|Σ attribution − Δq| / |Δq|`` is at most ``tol`` (every QoI), without it when two
successive graded levels agree to ``tol`` (relative L2).

The acceptance checks, on a ReLU CNN (32 anchors, baseline 0, ``tol=1e-2``):

* each reported gap is the true gap, from two forward passes of the model;
* each anchor is within ``tol`` or counted in ``query["tol_missed"]`` (with a warning);
* the query evaluates at most half the gradient rows of the cheapest uniform rule
  (Gauss–Legendre or midpoint, the same steps for every anchor) that brings every
  anchor within ``tol``. This is shown exactly, not by sampling step counts: on a ReLU
  network ``α ↦ q(αx)`` is piecewise linear, so its kinks are found layer by layer
  (:func:`exact_path`) and any rule's estimate is a lookup of slopes at its nodes. Every
  uniform ``n`` with ``n·N < 2·samples`` is then shown to leave some anchor outside
  ``tol`` for both rules.

and on the same CNN with softplus, ``tol=1e-6`` costs at most 32 steps per anchor on
average. Every path of the engine takes ``tol``: pooled, several QoIs at once, a line in
the space of an inner layer, two gloo processes, and an interrupted-and-resumed
checkpointed query.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI
from doi._quadrature import nodes_and_weights
from influence import InfluenceResult, input_influence, internal_influence
from influence.engine._checkpoint import Checkpoint
from qoi import ClassQoI, FunctionQoI
from slices import Slice

F64 = torch.float64
TOL = 1e-2  # on the ReLU network
N = 32  # anchors
WORLD = 2


# --- models and data (module level: the spawned processes build them too) --------------


def cnn(act: type[nn.Module], seed: int = 0) -> nn.Sequential:
    """``(3, 16, 16) → 10``: three 3×3 convolutions (the last two with stride 2), each
    followed by ``act``, then a linear layer; Kaiming-normal weights, biases N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), act(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), act(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), act(),
        nn.Flatten(), nn.Linear(512, 10),
    ).double()  # fmt: skip
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=F64) * (2 / fan_in) ** 0.5)
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g, dtype=F64))
    return model.eval()


def anchors(n: int = N, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=F64)


def labels(n: int = N) -> Tensor:
    return torch.arange(n) % 3


def true_changes(model: nn.Module, x: Tensor, cls: int) -> Tensor:
    """``q(x) − q(0)`` from two forward passes."""
    with torch.no_grad():
        return model(x)[:, cls] - model(torch.zeros_like(x))[:, cls]


def hand_gap(values: Tensor, change: Tensor) -> Tensor:
    return (values.reshape(values.shape[0], -1).sum(1) - change).abs() / change.abs()


def run_quietly(run: Callable[[], Any]) -> tuple[Any, list[warnings.WarningMessage]]:
    """The result of ``run()`` and the warnings it gave (every one recorded)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, list(caught)


def missed_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "did not reach tol" in str(w.message)]


def checked(run: Callable[[], Any], tol: float) -> Any:
    """``run()``'s result (or results), after checking that every anchor is within
    ``tol`` or counted in ``query["tol_missed"]``, and that exactly one warning, with
    that count, came when some anchor missed (none otherwise)."""
    result, caught = run_quietly(run)
    results = result if isinstance(result, list) else [result]
    missed = results[0].query["tol_missed"]
    for r in results:
        assert r.query["tol_missed"] == missed
        if r.completeness is not None and not r.pooled:
            # an anchor counts as missed if any QoI is outside tol: at least this QoI's misses
            assert int((r.completeness > tol).sum()) <= missed
    if len(results) == 1 and results[0].completeness is not None and not results[0].pooled:
        assert int((results[0].completeness > tol).sum()) == missed
    assert len(caught) == len(missed_warnings(caught)) == (1 if missed else 0)
    if missed:
        assert f"influence: {missed} of " in str(caught[0].message)
    return result


# --- the exact line integral of a ReLU network ----------------------------------------


def exact_path(model: nn.Sequential, x: Tensor, cls: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``α ↦ q(αx)`` on ``[0, 1]`` for a sequential network of affine layers and ReLUs:
    it is continuous and piecewise linear. Returns its kinks ``a`` (sorted, with 0 and 1),
    its slope on each piece (``len(a) − 1``: the path derivative ``∇q(αx)·x``, constant
    between kinks) and ``q(x) − q(0)``.

    Layer by layer, the activations along the line are kept at the kinks found so far,
    between which they are linear: an affine layer maps them as they are (it commutes
    with linear interpolation), a ReLU adds the points where a unit changes sign on a
    piece, with the pre-activations interpolated there."""
    a = torch.tensor([0.0, 1.0], dtype=F64)
    h = torch.stack([torch.zeros_like(x), x])
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.ReLU):
                flat = h.reshape(h.shape[0], -1)
                lo, hi = flat[:-1], flat[1:]
                piece, unit = (((lo < 0) & (hi > 0)) | ((lo > 0) & (hi < 0))).nonzero(as_tuple=True)
                t = lo[piece, unit] / (lo[piece, unit] - hi[piece, unit])
                kinks = torch.unique(torch.cat([a, a[piece] + t * (a[piece + 1] - a[piece])]))
                j = (torch.searchsorted(a, kinks, right=True) - 1).clamp(max=a.shape[0] - 2)
                u = ((kinks - a[j]) / (a[j + 1] - a[j])).view(-1, *[1] * (h.ndim - 1))
                h, a = torch.relu(torch.lerp(h[j], h[j + 1], u)), kinks
            else:
                assert isinstance(layer, (nn.Conv2d, nn.Linear, nn.Flatten))
                h = layer(h)
    q = h[:, cls]
    return a.numpy(), ((q[1:] - q[:-1]) / (a[1:] - a[:-1])).numpy(), float(q[-1] - q[0])


def uniform_gap(path: tuple[np.ndarray, np.ndarray, float], rule: str, n: int) -> float:
    """The relative completeness gap of ``LineDoI(0, steps=n, rule=rule)`` for the anchor
    of ``path``: ``|Σ_k w_k f(α_k) − Δq| / |Δq|`` with ``f`` the slope at each node."""
    a, slope, change = path
    alpha, weight = nodes_and_weights(rule, n)  # type: ignore[arg-type]
    piece = np.searchsorted(a, alpha, side="right") - 1
    return abs(float(slope[piece] @ weight) - change) / abs(change)


# --- the ReLU network ------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu() -> dict[str, Any]:
    """The ReLU CNN, its anchors, and the adaptive query's result and warnings."""
    torch.set_num_threads(1)
    model, x = cnn(nn.ReLU), anchors()
    result, caught = run_quietly(lambda: input_influence(model, ClassQoI(0), LineDoI(0.0, tol=TOL), x, multiply_activation=True))
    return {"model": model, "x": x, "result": result, "caught": caught}


def test_reported_gap_is_the_true_gap(relu: dict[str, Any]) -> None:
    """Each anchor's ``result.completeness`` equals ``|Σ attribution − (q(x) − q(0))| /
    |q(x) − q(0)|`` with ``q`` from two forward passes of the model (to 1e-6 absolute),
    and ``steps``/``samples`` describe the work: 8 Gauss–Legendre nodes, then
    ``2^L − 1`` graded nodes (``L ≥ 4``) for the anchors that needed more."""
    r, model, x = relu["result"], relu["model"], relu["x"]
    assert r.values.shape == x.shape and r.completeness.shape == (N,) and r.steps.shape == (N,)
    want = hand_gap(r.values, true_changes(model, x, 0))
    torch.testing.assert_close(r.completeness, want, rtol=0, atol=1e-6)
    allowed = {8} | {8 + 2**level - 1 for level in range(4, 11)}
    assert set(r.steps.tolist()) <= allowed and int(r.steps.max()) <= 1024
    assert r.samples == int(r.steps.sum())
    assert (r.steps > 8).any() and (r.steps == 8).any()  # some anchors are easy, others are not


def test_every_anchor_is_within_tol_or_counted(relu: dict[str, Any]) -> None:
    """An anchor is within ``tol`` or counted in ``query["tol_missed"]``, and the query
    warns (once, with the count) exactly when some anchor missed."""
    r = relu["result"]
    outside = int((r.completeness > TOL).sum())
    assert r.query["tol_missed"] == outside
    messages = missed_warnings(relu["caught"])
    assert len(relu["caught"]) == len(messages) == (1 if outside else 0)
    if outside:
        assert messages[0].startswith(f"influence: {outside} of {N} anchors did not reach tol=0.01")


def test_exact_path_matches_the_engines_gradients(relu: dict[str, Any]) -> None:
    """:func:`exact_path` is exact: its slopes integrate to ``q(x) − q(0)``, and the gaps
    of uniform rules computed from it equal the engine's for the same rule and steps."""
    model, x = relu["model"], relu["x"][:3]
    paths = [exact_path(model, xi, 0) for xi in x]
    change = true_changes(model, x, 0)
    for (a, slope, dq), want in zip(paths, change.tolist()):
        assert abs(float(slope @ np.diff(a)) - want) <= 1e-12 * abs(want) + 1e-14
        assert dq == pytest.approx(want, rel=1e-12, abs=1e-14)
    for rule, n in [("gauss-legendre", 8), ("gauss-legendre", 37), ("midpoint", 50)]:
        r = input_influence(model, ClassQoI(0), LineDoI(0.0, steps=n, rule=rule), x, multiply_activation=True)  # type: ignore[arg-type]
        mine = torch.tensor([uniform_gap(p, rule, n) for p in paths], dtype=F64)
        torch.testing.assert_close(r.completeness, mine, rtol=1e-7, atol=1e-10)


def test_adaptive_takes_at_most_half_the_rows_of_the_best_uniform_rule(relu: dict[str, Any]) -> None:
    """Every uniform step count ``n`` with ``n·N < 2·samples`` leaves some anchor outside
    ``tol``, with Gauss–Legendre and with the midpoint rule: the smallest uniform ``n``
    that brings every anchor within ``tol`` costs at least twice the adaptive query's
    gradient rows. The gaps of uniform rules are exact (:func:`exact_path`); the anchors
    are taken hardest first (most adaptive steps) until every such ``n`` is ruled out.

    Measured: 3633 rows adaptive (``n ≤ 227`` to rule out; 5 anchors do it); every
    anchor within ``tol`` takes 268 uniform Gauss–Legendre steps (8576 rows) or 552
    midpoint steps (17664 rows)."""
    r, model, x = relu["result"], relu["model"], relu["x"]
    assert r.query["tol_missed"] == 0
    largest = -(-2 * r.samples // N) - 1  # the largest n with n·N < 2·samples
    assert largest * N < 2 * r.samples <= (largest + 1) * N
    ruled_out = {rule: np.zeros(largest + 1, dtype=bool) for rule in ("gauss-legendre", "midpoint")}
    for rule in ruled_out:
        ruled_out[rule][0] = True  # n = 0 is no rule
    for i in sorted(range(N), key=lambda i: (-int(r.steps[i]), i)):
        if all(done.all() for done in ruled_out.values()):
            break
        path = exact_path(model, x[i], 0)
        for rule, done in ruled_out.items():
            for n in np.nonzero(~done)[0]:
                done[n] = uniform_gap(path, rule, int(n)) > TOL
    for rule, done in ruled_out.items():
        assert done.all(), f"{rule} with {np.nonzero(~done)[0].tolist()} steps brings all {N} anchors within tol={TOL}"


# --- the smooth network ------------------------------------------------------------------


def test_a_smooth_network_meets_a_tight_tol_in_few_steps() -> None:
    """Softplus: ``tol=1e-6`` is met by every anchor, at most 32 steps per anchor on
    average (Gauss–Legendre converges fast on a smooth line)."""
    model, x = cnn(nn.Softplus), anchors()
    r = input_influence(model, ClassQoI(0), LineDoI(0.0, tol=1e-6), x, multiply_activation=True)
    assert r.query["tol_missed"] == 0
    assert float(r.completeness.max()) <= 1e-6
    torch.testing.assert_close(r.completeness, hand_gap(r.values, true_changes(model, x, 0)), rtol=0, atol=1e-9)
    assert float(r.steps.double().mean()) <= 32 and r.samples == int(r.steps.sum())


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_without_multiply_successive_estimates_agree(tol: float) -> None:
    """Without ``multiply_activation`` the graded levels go on until two successive
    estimates agree to ``tol`` (relative L2): the final estimate is then within ``tol``
    of a fine Gauss–Legendre reference, anchor by anchor. No completeness is tracked, and
    the steps are ``2^L − 1`` with ``L ≥ 4`` (the first comparison)."""
    model, x = cnn(nn.Softplus), anchors(8)
    r = input_influence(model, ClassQoI(0), LineDoI(0.0, tol=tol), x)
    ref = input_influence(model, ClassQoI(0), LineDoI(0.0, steps=96), x)
    assert r.completeness is None and r.query["tol_missed"] == 0
    assert set(r.steps.tolist()) <= {2**level - 1 for level in range(4, 11)}
    error = (r.values - ref.values).flatten(1).norm(dim=1) / ref.values.flatten(1).norm(dim=1)
    assert float(error.max()) <= tol


# --- the other paths of the engine -------------------------------------------------------


def test_pooled_equals_the_mean_of_the_pointwise_results(relu: dict[str, Any]) -> None:
    """``ClassDoI(..., each=LineDoI(tol=...))``: the pooled attribution is the mean of the
    members' adaptive attributions (1e-10), its ``steps`` are theirs sorted, its
    ``samples`` their sum and ``tol_missed`` their count of misses."""
    model, x, y = relu["model"], relu["x"], labels()
    members = x[y == 1]
    pooled = internal_influence(Slice(model, None), ClassQoI(0), ClassDoI((x, y), 1, each=LineDoI(0.0, tol=TOL)), multiply_activation=True)
    points = input_influence(model, ClassQoI(0), LineDoI(0.0, tol=TOL), members, multiply_activation=True)
    assert pooled.pooled and pooled.anchors == members.shape[0]
    torch.testing.assert_close(pooled.values, points.values.mean(0), rtol=1e-10, atol=1e-10)
    assert torch.equal(pooled.steps, torch.sort(points.steps).values)
    assert pooled.samples == points.samples == int(points.steps.sum())
    assert pooled.query["tol_missed"] == points.query["tol_missed"] == 0
    want = (pooled.values.sum() - true_changes(model, members, 0).mean()).abs() / true_changes(model, members, 0).mean().abs()
    torch.testing.assert_close(pooled.completeness, want, rtol=1e-6, atol=1e-10)


def test_several_qois_are_refined_until_each_meets_tol(relu: dict[str, Any]) -> None:
    """Two QoIs in one call share the rounds: an anchor goes on until both are within
    ``tol``, so it takes at least the steps of either alone; where its steps equal
    those of a QoI alone, its values for that QoI are the same (1e-10)."""
    model, x = relu["model"], relu["x"][:16]
    both = input_influence(model, [ClassQoI(0), ClassQoI(1)], LineDoI(0.0, tol=TOL), x, multiply_activation=True)
    alone = [input_influence(model, ClassQoI(c), LineDoI(0.0, tol=TOL), x, multiply_activation=True) for c in (0, 1)]
    assert torch.equal(both[0].steps, both[1].steps) and both[0].samples == both[1].samples == int(both[0].steps.sum())
    assert both[0].query["tol_missed"] == both[1].query["tol_missed"] == 0
    for c, (r, single) in enumerate(zip(both, alone)):
        assert float(r.completeness.max()) <= TOL
        torch.testing.assert_close(r.completeness, hand_gap(r.values, true_changes(model, x, c)), rtol=0, atol=1e-6)
        assert (r.steps >= single.steps).all()
        same = r.steps == single.steps
        assert same.any()
        torch.testing.assert_close(r.values[same], single.values[same], rtol=1e-10, atol=1e-10)
    assert (both[0].steps > torch.minimum(alone[0].steps, alone[1].steps)).any()  # the other QoI held some anchors back


def test_a_line_in_the_space_of_an_inner_layer(relu: dict[str, Any]) -> None:
    """``Slice(model, "3")``, ``space="slice"``: the line runs from 0 to ``h(x)`` at the
    cut. The gaps are the true gaps of ``g``, every anchor is within ``tol``, and the
    result is the adaptive input attribution of the tail network ``g`` at ``h(x)``
    (values to 1e-10, the same steps). (An anchor whose ``Δq`` at the cut is small may
    miss ``tol`` within ``max_steps``: it is counted and warned about.)"""
    model, x = relu["model"], relu["x"][:16]
    slc = Slice(model, "3")
    r = checked(lambda: internal_influence(slc, ClassQoI(0), LineDoI(0.0, tol=TOL, space="slice"), x, multiply_activation=True), TOL)
    with torch.no_grad():
        z = slc.h(x)
    tail = nn.Sequential(*list(model)[4:])
    change = true_changes(tail, z, 0)
    assert r.values.shape == z.shape
    torch.testing.assert_close(r.completeness, hand_gap(r.values, change), rtol=0, atol=1e-6)
    assert (r.steps > 8).any()
    want = checked(lambda: input_influence(tail, ClassQoI(0), LineDoI(0.0, tol=TOL), z, multiply_activation=True), TOL)
    assert torch.equal(r.steps, want.steps) and r.samples == want.samples
    torch.testing.assert_close(r.values, want.values, rtol=1e-10, atol=1e-10)


# --- two processes -------------------------------------------------------------------------


def dist_cases() -> dict[str, Callable[..., Any]]:
    """The adaptive queries run by two gloo processes and by one."""
    model, x, y = cnn(nn.ReLU), anchors(12, seed=2), labels(12)
    return {
        "pointwise": lambda **o: input_influence(model, ClassQoI(0), LineDoI(0.0, tol=TOL), x, multiply_activation=True, **o),
        "pooled": lambda **o: internal_influence(Slice(model, None), ClassQoI(0), ClassDoI((x, y), 0, each=LineDoI(0.0, tol=TOL)), multiply_activation=True, **o),
        "pointwise-plain": lambda **o: input_influence(model, ClassQoI(2), LineDoI(0.0, tol=TOL), x[:5], **o),
        "noise": lambda **o: input_influence(model, ClassQoI(0), NoiseDoI(0.3, samples=8, sampler="random", tol=0.2), x, seed=3, **o),
        "noise-pooled": lambda **o: input_influence(model, ClassQoI(0), ClassDoI((x, y), 0, each=NoiseDoI(0.3, samples=8, tol=0.2)), seed=3, **o),
    }


def _pack(r: InfluenceResult) -> dict[str, Any]:
    return {
        "values": r.values, "stderr": r.stderr, "completeness": r.completeness, "steps": r.steps, "samples": r.samples, "anchors": r.anchors,
        "tol_missed": r.query["tol_missed"],
    }  # fmt: skip


def _dist_worker(rank: int, folder: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        out = {name: _pack(run(distributed=True)) for name, run in dist_cases().items()}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("adaptive-distributed")
    mp.spawn(_dist_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["pointwise", "pooled", "pointwise-plain", "noise", "noise-pooled"])
def test_two_processes_equal_one(shards: list[dict[str, Any]], name: str) -> None:
    """Pointwise (anchors split 6 + 6) and pooled (chunks shared out): every rank returns
    the single-process result (values and gaps to 1e-10, the same steps and counts)."""
    want = checked(dist_cases()[name], TOL)
    steps = want.steps
    assert steps is not None and bool((steps > 15).any())
    for out in shards:
        got = out[name]
        torch.testing.assert_close(got["values"], want.values, rtol=1e-10, atol=1e-10)
        assert torch.equal(got["steps"], steps)
        torch.testing.assert_close(got["stderr"], want.stderr, rtol=1e-8, atol=1e-12)
        assert (got["samples"], got["anchors"], got["tol_missed"]) == (want.samples, want.anchors, want.query["tol_missed"])
        if want.completeness is None:
            assert got["completeness"] is None
        else:
            torch.testing.assert_close(got["completeness"], want.completeness, rtol=1e-8, atol=1e-12)


# --- checkpoints ----------------------------------------------------------------------------

CALLS: dict[str, Any] = {"left": None, "count": 0}


def halting(output: Tensor) -> Tensor:
    """``f_0``; counts calls and raises KeyboardInterrupt when ``CALLS["left"]`` runs out."""
    CALLS["count"] += 1
    if CALLS["left"] is not None:
        CALLS["left"] -= 1
        if CALLS["left"] < 0:
            raise KeyboardInterrupt
    return output[:, 0]


def test_interrupted_and_resumed_equals_uninterrupted(relu: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled adaptive query in chunks of 4 anchors, interrupted (Ctrl-C from the QoI)
    once its first chunk is done, saves a checkpoint; the rerun resumes after it and
    equals the uninterrupted run exactly: values, gap, steps, samples, misses."""
    import influence.engine._chunk as chunks

    monkeypatch.setattr(chunks, "_MAX_CHUNK", 4)
    model, x = relu["model"], relu["x"][:12]
    run = lambda n=12, **o: input_influence(model, FunctionQoI(halting), DatasetDoI(x[:n], each=LineDoI(0.0, tol=TOL)), multiply_activation=True, **o)  # noqa: E731
    CALLS.update(left=None, count=0)
    run(4)
    first_chunk = CALLS["count"]  # the QoI's calls for the first 4 anchors
    want = run()
    assert (want.steps > 8).sum() >= 2
    ckpt = tmp_path / "q.ckpt"
    CALLS["left"] = first_chunk + 1
    try:
        with pytest.raises(KeyboardInterrupt):
            run(checkpoint=ckpt, checkpoint_every=3600)
    finally:
        CALLS["left"] = None
    assert Checkpoint(ckpt, 0).load()["position"] == 4  # type: ignore[index]
    got = run(checkpoint=ckpt, checkpoint_every=3600)
    assert torch.equal(got.values, want.values) and torch.equal(got.stderr, want.stderr)
    assert torch.equal(got.completeness, want.completeness)
    assert torch.equal(got.steps, want.steps)
    assert (got.samples, got.anchors, got.query["tol_missed"]) == (want.samples, want.anchors, want.query["tol_missed"])


def test_an_adaptive_noise_population_resumes_exactly(relu: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for ``NoiseDoI(tol=...)`` around every member: rounds of fresh samples
    per member, interrupted after the first chunk and resumed, equal to the bit."""
    import influence.engine._chunk as chunks

    monkeypatch.setattr(chunks, "_MAX_CHUNK", 4)
    model, x = relu["model"], relu["x"][:12]
    noise = NoiseDoI(0.3, samples=8, sampler="random", tol=0.2)
    run = lambda n=12, **o: input_influence(model, FunctionQoI(halting), DatasetDoI(x[:n], each=noise), seed=5, **o)  # noqa: E731
    CALLS.update(left=None, count=0)
    run(4)
    first_chunk = CALLS["count"]
    want = run()
    assert bool((want.steps > 8).any())
    ckpt = tmp_path / "noise.ckpt"
    CALLS["left"] = first_chunk + 1
    try:
        with pytest.raises(KeyboardInterrupt):
            run(checkpoint=ckpt, checkpoint_every=3600)
    finally:
        CALLS["left"] = None
    assert Checkpoint(ckpt, 0).load()["position"] == 4  # type: ignore[index]
    got = run(checkpoint=ckpt, checkpoint_every=3600)
    assert torch.equal(got.values, want.values) and torch.equal(got.stderr, want.stderr) and torch.equal(got.steps, want.steps)


# --- results, arguments and misses ----------------------------------------------------------


def test_save_and_load_keep_the_steps(relu: dict[str, Any], tmp_path: Path) -> None:
    r = relu["result"]
    r.save(tmp_path / "r.pt")
    back = InfluenceResult.load(tmp_path / "r.pt")
    assert back.steps is not None and torch.equal(back.steps, r.steps)
    assert back.samples == r.samples and back.query["tol_missed"] == r.query["tol_missed"]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tol": 0}, "tol"),
        ({"tol": 1.5}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"tol": 1e-2, "steps": 16}, "steps"),
        ({"tol": 1e-2, "rule": "midpoint"}, "rule"),
        ({"tol": 1e-2, "max_steps": 4}, "max_steps"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=rf"LineDoI: .*\b{name}\b"):
        LineDoI(0.0, **kwargs)


def test_an_anchor_that_misses_tol_is_counted_and_warned_about_once(relu: dict[str, Any]) -> None:
    """``max_steps=8`` leaves the Gauss–Legendre round only: the anchors whose gap is
    still above ``tol`` are counted in ``query["tol_missed"]``, named by one
    RuntimeWarning, and keep their 8-node estimate."""
    model, x = relu["model"], relu["x"]
    r, caught = run_quietly(lambda: input_influence(model, ClassQoI(0), LineDoI(0.0, tol=TOL, max_steps=8), x, multiply_activation=True))
    outside = int((r.completeness > TOL).sum())
    assert 0 < outside < N
    assert r.query["tol_missed"] == outside
    assert (r.steps == 8).all() and r.samples == 8 * N
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    assert str(caught[0].message).startswith(f"influence: {outside} of {N} anchors did not reach tol=0.01 (relative completeness gap) within max_steps=8")
    with pytest.warns(RuntimeWarning, match=f"{outside} of {N} anchors did not reach tol"):
        input_influence(model, ClassQoI(0), LineDoI(0.0, tol=TOL, max_steps=8), x, multiply_activation=True)
    gl8 = input_influence(model, ClassQoI(0), LineDoI(0.0, steps=8), x, multiply_activation=True)
    torch.testing.assert_close(r.values, gl8.values, rtol=1e-10, atol=1e-12)
    # pooled: the members that missed are counted the same way (no per-anchor gaps to show)
    y = labels()
    pooled, caught = run_quietly(
        lambda: internal_influence(Slice(model, None), ClassQoI(0), ClassDoI((x, y), 2, each=LineDoI(0.0, tol=TOL, max_steps=8)), multiply_activation=True)
    )
    members_out = int((r.completeness[y == 2] > TOL).sum())
    assert members_out > 0 and pooled.query["tol_missed"] == members_out
    assert missed_warnings(caught) == [str(w.message) for w in caught] and len(caught) == 1
    assert f"{members_out} of {int((y == 2).sum())} anchors" in str(caught[0].message)
    assert "result.completeness shows their gaps" not in str(caught[0].message)
