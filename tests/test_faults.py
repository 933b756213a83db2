"""Faults during a query: non-finite QoI values or gradients, and Ctrl-C.

Non-finite values are found per chunk without a host synchronisation per batch: an
anchor is bad when ``Σ_k 0·q(x_k)`` (NaN iff some ``q(x_k)`` is not finite) or its
float64 estimate ``Σ_k w_k ∇_k`` is not finite. ``nonfinite="raise"`` names the first bad
anchor and sample; ``nonfinite="skip"`` drops bad anchors as a whole (a pooled result
averages the others; a pointwise one has NaN rows) and counts them in
``query["skipped"]``. (The CUDA out-of-memory path is tested in ``test_engine.py``.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from conftest import tolerance
from doi import DatasetDoI, LineDoI, NoiseDoI, PointDoI, nodes_and_weights
from influence import input_influence, internal_influence
from influence.engine._checkpoint import Checkpoint
from models import mlp
from qoi import ClassQoI, FunctionQoI
from slices import Slice

F64 = torch.float64
THRESHOLD = 0.5


class BadValue(nn.Module):
    """``f(x)``, but ``NaN`` (or ``inf``) where ``x_0 > 0.5``: the QoI value is not finite,
    its gradient is (``torch.where`` routes no gradient to the constant)."""

    def __init__(self, fill: float = float("nan")) -> None:
        super().__init__()
        self.net, self.fill = mlp(4, 8, 3, seed=3), fill

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return torch.where(x[:, :1] > THRESHOLD, torch.full_like(out, self.fill), out)


class BadGradient(nn.Module):
    """``f(x) + where(x_0 < 0.5, 0, sqrt(x_0 − 0.5))``: the value is finite everywhere,
    but where ``x_0 < 0.5`` the gradient is NaN: the branch not taken still
    back-propagates ``0 · d sqrt(x_0 − 0.5) = 0 · NaN`` (the ``torch.where`` trap)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(4, 8, 3, seed=3)

    def forward(self, x: Tensor) -> Tensor:
        x0 = x[:, :1]
        return self.net(x) + torch.where(x0 < THRESHOLD, torch.zeros_like(x0), torch.sqrt(x0 - THRESHOLD))


def _points(rng: torch.Generator, n: int, high: list[int]) -> Tensor:
    """``n`` points with ``x_0 ∈ [-1, 0)`` except the rows ``high``, which get ``x_0 = 1``
    (bad for :class:`BadValue`, the only good ones for :class:`BadGradient`)."""
    x = torch.randn(n, 4, generator=rng, dtype=F64)
    x[:, 0] = -torch.rand(n, generator=rng, dtype=F64)
    x[high, 0] = 1.0
    return x


def _first_node_above(steps: int, level: float) -> int:
    """The first Gauss–Legendre node ``α_k`` with ``α_k · 1 > level`` (the path from 0 to
    a point with ``x_0 = 1`` crosses ``x_0 = level`` there)."""
    alphas, _ = nodes_and_weights("gauss-legendre", steps)
    return int(next(k for k, a in enumerate(alphas) if a > level))


def test_raise_names_the_anchor_and_sample_of_a_non_finite_value(rng: torch.Generator) -> None:
    """Along the line from 0 to ``x`` with ``x_0 = 1``, the output turns NaN at the first
    node past 0.5: the error names that anchor and that sample, and the QoI value."""
    model = BadValue().double()
    x = _points(rng, 6, high=[3, 5])
    k = _first_node_above(8, THRESHOLD)
    with pytest.raises(ValueError, match=rf"non-finite QoI value of ClassQoI\(1\) at anchor 3 \(inputs\[3\]\), sample {k} \(of 8 per anchor\)"):
        input_influence(model, ClassQoI(1), LineDoI(steps=8), x, batch_size=5)


def test_raise_names_a_non_finite_gradient(rng: torch.Generator) -> None:
    """A finite output whose gradient is NaN (PointDoI: sample 0) is named as such."""
    model = BadGradient().double()
    x = _points(rng, 5, high=[0, 1, 2, 4])  # anchor 3 has x_0 <= 0.5
    with pytest.raises(ValueError, match=r"non-finite gradient of ClassQoI\(0\) at anchor 3 \(inputs\[3\]\), sample 0 \(of 1"):
        input_influence(model, ClassQoI(0), PointDoI(), x)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -float("inf")])
def test_raise_in_a_population_names_the_stream_position(rng: torch.Generator, fill: float) -> None:
    """In a population, the anchor is its position in the stream of points."""
    model = BadValue(fill).double()
    x = _points(rng, 40, high=[17, 30])
    with pytest.raises(ValueError, match=r"at anchor 17 of the population, sample 0 .*nonfinite='skip'"):
        input_influence(model, ClassQoI(2), DatasetDoI(x), batch_size=8)


@pytest.mark.parametrize("model_kind", ["value", "gradient"])
def test_skip_drops_bad_anchors_from_a_population(rng: torch.Generator, model_kind: str) -> None:
    """Skipping gives the mean over the good points only, with the standard error of
    that mean (sd over them / √n), counts the others, and warns. Reference: the rows of
    the good anchors in a pointwise run (same anchor ids, so the same noise)."""
    x = _points(rng, 40, high=[2, 17, 30])
    model: nn.Module = BadValue().double() if model_kind == "value" else BadGradient().double()
    good = x[:, 0] < THRESHOLD if model_kind == "value" else x[:, 0] > THRESHOLD
    skipped = int((~good).sum())
    doi = NoiseDoI(0.01, samples=4, sampler="random")  # small noise: no sample crosses 0.5
    with pytest.warns(RuntimeWarning, match=rf"skipped {skipped} anchors .*ClassQoI\(1\)"):
        got = input_influence(model, ClassQoI(1), DatasetDoI(x, each=doi), nonfinite="skip", batch_size=8, seed=4)
    with pytest.warns(RuntimeWarning, match=rf"skipped {skipped} anchors"):
        pointwise = input_influence(model, ClassQoI(1), doi, x, batch_size=8, seed=4, nonfinite="skip")
    kept = pointwise.values[good]
    torch.testing.assert_close(got.values, kept.mean(0), **tolerance(F64))
    torch.testing.assert_close(got.stderr, kept.std(0) / kept.shape[0] ** 0.5, **tolerance(F64))
    assert got.query["skipped"] == skipped
    assert got.anchors == int(good.sum()) and got.samples == 4 * int(good.sum())


def test_skip_gives_nan_rows_in_a_pointwise_result(rng: torch.Generator) -> None:
    """A skipped anchor's row is NaN (values, standard errors, channel standard
    errors); the other rows equal an ordinary run on the good points."""
    model = BadValue().double()
    x = _points(rng, 7, high=[1, 4])
    with pytest.warns(RuntimeWarning, match=r"skipped 2 anchors .*\(e\.g\. anchors 1, 4\)"):
        got = input_influence(model, ClassQoI(0), NoiseDoI(0.05, samples=6, sampler="random"), x, nonfinite="skip", seed=1, batch_size=4)
    bad = torch.zeros(7, dtype=torch.bool)
    bad[[1, 4]] = True
    assert torch.equal(got.values.isnan().all(1), bad) and torch.equal(got.stderr.isnan().all(1), bad)
    assert not got.values[~bad].isnan().any()
    assert got.query["skipped"] == 2 and got.anchors == 7 and got.samples == 6 * 5
    # the good rows: a second query on the same anchors, where nothing is skipped
    clean = input_influence(model.net, ClassQoI(0), NoiseDoI(0.05, samples=6, sampler="random"), x, seed=1, batch_size=4)
    torch.testing.assert_close(got.values[~bad], clean.values[~bad], **tolerance(F64))


def test_skip_with_a_deterministic_doi_marks_its_zero_stderr_rows(rng: torch.Generator) -> None:
    """Without sampling error the standard errors are zero, except NaN on skipped rows;
    at a conv layer the channel standard errors too."""
    from models import res_cnn

    net = res_cnn().double()

    x = torch.randn(8, 3, 8, 8, generator=rng, dtype=F64)
    with torch.no_grad():
        f1 = net(x)[:, 1]
    level = f1.sort().values[3:5].mean()  # half of the points above, half below
    bad = f1 > level

    def f0(out: Tensor) -> Tensor:
        return torch.where(out[:, 1] > level, torch.full_like(out[:, 0], float("nan")), out[:, 0])

    with pytest.warns(RuntimeWarning, match="skipped"):
        got = internal_influence(Slice(net, "layer1"), FunctionQoI(f0), PointDoI(), x, nonfinite="skip", batch_size=4)
    assert torch.equal(got.stderr.flatten(1).isnan().all(1), bad)
    assert torch.equal(got.channel_stderr.isnan().all(1), bad)  # type: ignore[union-attr]
    assert not bool(got.stderr[~bad].any()) and not bool(got.channel_stderr[~bad].any())  # type: ignore[index]


def test_an_overflowing_sum_of_finite_values_is_not_a_fault(rng: torch.Generator) -> None:
    """Values near the float32 maximum are finite, their per-batch sum is not: the
    chunk's values are checked one by one, and the query goes on unchanged."""

    def huge(out: Tensor) -> Tensor:
        return out[:, 0] + 3e38

    model = mlp(4, 8, 3)
    x = torch.randn(6, 4, generator=rng)
    got = input_influence(model, FunctionQoI(huge), LineDoI(steps=4), x, batch_size=8)
    want = input_influence(model, ClassQoI(0), LineDoI(steps=4), x, batch_size=8)
    assert torch.equal(got.values, want.values)  # the same gradients: q differs by a constant


def test_a_population_that_is_all_bad_is_an_error(rng: torch.Generator) -> None:
    x = _points(rng, 5, high=[0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="every anchor .* non-finite"):
        input_influence(BadValue().double(), ClassQoI(0), DatasetDoI(x), nonfinite="skip")


def test_nonfinite_option_is_checked() -> None:
    with pytest.raises(ValueError, match="nonfinite: expected 'raise' or 'skip' \\(got 'ignore'\\)"):
        input_influence(nn.Linear(3, 2), ClassQoI(0), PointDoI(), torch.zeros(1, 3), nonfinite="ignore")  # type: ignore[arg-type]


def test_finite_queries_are_not_marked() -> None:
    """Without faults, ``nonfinite="skip"`` changes nothing and reports zero skipped."""
    model = mlp(4, 8, 3).double()
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = input_influence(model, ClassQoI(1), DatasetDoI(x, each=LineDoI(steps=4)), nonfinite="skip")
    b = input_influence(model, ClassQoI(1), DatasetDoI(x, each=LineDoI(steps=4)))
    assert torch.equal(a.values, b.values) and a.query["skipped"] == 0 and "skipped" not in b.query


# --- Ctrl-C ---------------------------------------------------------------------------------

CALLS = {"left": 0}


def stopping(out: Tensor) -> Tensor:
    """``f_1``, raising KeyboardInterrupt (as Ctrl-C does) when ``CALLS["left"]`` runs out."""
    CALLS["left"] -= 1
    if CALLS["left"] < 0:
        raise KeyboardInterrupt
    return out[:, 1]


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bool], dict[str, bool]]:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_ctrl_c_saves_a_checkpoint_and_leaves_the_model_unchanged(tmp_path: Path, rng: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt propagates; the model is back in training mode with its
    ``requires_grad`` flags, weights and no hooks; the checkpoint holds the chunks done,
    and the rerun from it equals an uninterrupted run exactly."""
    import influence.engine._chunk as chunks

    monkeypatch.setattr(chunks, "_MAX_CHUNK", 4)
    model = mlp(4, 8, 3).double().train()
    model[2].weight.requires_grad_(False)
    before = _snapshot(model)
    x = torch.randn(20, 4, generator=rng, dtype=F64)
    slc = Slice(model, "1")
    run = lambda **o: internal_influence(slc, FunctionQoI(stopping), DatasetDoI(x, each=LineDoI(steps=4)), batch_size=8, seed=0, **o)  # noqa: E731
    CALLS["left"] = 10**9
    want = run()
    CALLS["left"] = 5  # 2 batches per chunk: stops in the third chunk
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=tmp_path / "q.ckpt", checkpoint_every=3600)
    state, flags, modes = _snapshot(model)
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert flags == before[1] and modes == before[2] and _hooks(model) == 0
    assert Checkpoint(tmp_path / "q.ckpt", 0).load()["position"] == 8  # type: ignore[index]
    CALLS["left"] = 10**9
    got = run(checkpoint=tmp_path / "q.ckpt")
    assert torch.equal(got.values, want.values) and torch.equal(got.stderr, want.stderr)


def test_ctrl_c_without_a_checkpoint_leaves_the_model_unchanged(rng: torch.Generator) -> None:
    model = mlp(4, 8, 3).double().train()
    before = _snapshot(model)
    CALLS["left"] = 1
    with pytest.raises(KeyboardInterrupt):
        input_influence(model, FunctionQoI(stopping), NoiseDoI(0.1, samples=8), torch.randn(6, 4, generator=rng, dtype=F64), batch_size=4)
    state, flags, modes = _snapshot(model)
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert flags == before[1] and modes == before[2] and _hooks(model) == 0


def test_error_message_mentions_how_to_skip(rng: torch.Generator) -> None:
    x = _points(rng, 3, high=[1])
    with pytest.raises(ValueError) as info:
        input_influence(BadValue().double(), ClassQoI(0), PointDoI(), x)
    assert re.search(r"result\.query\['skipped'\]", str(info.value))
