"""The essence check: keep the top-k units of a slice, ablate the others, measure the ROC AUC.

* ``roc_auc`` is ``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`` over all pairs (checked by brute force, with ties).
* On a network whose head after the cut is linear, ``q = v·h(x) + c``, the three rankings have
  closed forms: influence ``v``, gradient × activation ``v ⊙ mean_a h``, contrast
  ``v ⊙ (mean_a h − mean_b h)``; and the gradient ranking picks a dead unit with a large weight
  (AUC ½: every score tied) while the contrast ranking picks the unit that separates the classes.
* Every reported AUC equals a brute-force evaluation of the ablated network (others set to
  the data mean, or to zero), for units and for whole channels, for every slice realisation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from influence import essence_check, roc_auc
from models import res_cnn
from qoi import ClassQoI, NeuronQoI
from slices import Slice


def brute_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """``mean over pairs of [p > n] + ½ [p = n]``."""
    p, n = pos[:, None], neg[None, :]
    return float(((p > n) + 0.5 * (p == n)).mean())


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    st.lists(st.integers(-3, 3), min_size=1, max_size=12),
)
def test_roc_auc_is_the_mann_whitney_statistic(pos: list[int], neg: list[int]) -> None:
    """Small integer scores make ties common; mid-ranks count a tie as one half."""
    assert roc_auc(np.array(pos, float), np.array(neg, float)) == pytest.approx(brute_auc(np.array(pos, float), np.array(neg, float)), abs=1e-12)


def test_roc_auc_batches_over_leading_axes() -> None:
    g = np.random.default_rng(0)
    pos, neg = g.normal(size=(5, 7)), g.normal(size=(5, 9))
    np.testing.assert_allclose(roc_auc(pos, neg), [brute_auc(p, n) for p, n in zip(pos, neg)], atol=1e-12)
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        roc_auc(np.zeros(3), np.zeros(0))


V = torch.tensor([0.1, 10.0, 0.5, -0.3], dtype=torch.float64)  # output weights of f_0; f_1 = f_2 = 0


def head_model() -> nn.Sequential:
    """``x (3,) -> relu(W x + c) (4 units) -> [v·h, 0, 0]``: unit 0 is ``relu(x_0)`` (fires
    for class 0 only), unit 1 is dead (bias −1, zero weights) but has the largest output
    weight, units 2 and 3 carry noise that both classes share."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -1.0, 0.0, 0.0]))
        model[2].weight.zero_()
        model[2].weight[0].copy_(V)
        model[2].bias.copy_(torch.tensor([0.25, 0.0, 0.0]))
    return model


def head_data(rng: torch.Generator, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: ``x_0 ∈ [1, 2)``; classes 1 and 2: ``x_0 ∈ [−2, −1)``; ``x_1, x_2 ∈ [0, 1)``."""
    y = torch.arange(3).repeat_interleave(n)
    x = torch.rand(3 * n, 3, generator=rng, dtype=torch.float64)
    x[:, 0] = torch.where(y == 0, 1 + x[:, 0], -1 - x[:, 0])
    return x, y


def ablated_auc(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, keep: list[int], fill: torch.Tensor, a: int, b: int | None) -> float:
    """Brute force: ``q = v·h̃ + bias`` with ``h̃_u = h_u`` for kept units, ``fill_u`` otherwise."""
    with torch.no_grad():
        h = model[1](model[0](x))
        mask = torch.zeros(4, dtype=torch.bool)
        mask[keep] = True
        out = model[2](torch.where(mask, h, fill))
    q = (out[:, a] - out[:, b]) if b is not None else out[:, a]
    neg = (y == b) if b is not None else (y != a)
    return brute_auc(q[y == a].numpy(), q[neg].numpy())


def test_rankings_have_their_closed_forms(rng: torch.Generator) -> None:
    """After a linear head the gradient is ``v`` everywhere, so: influence ``= v``,
    gradient × activation ``= v ⊙ mean_a h``, contrast ``= v ⊙ (mean_a h − mean_b h)``
    (the line integral of a constant gradient is exact)."""
    model, (x, y) = head_model(), head_data(rng)
    result = essence_check(Slice(model, "1"), (x, y), 0, 1, ks=(1,), rankings=("contrast", "influence", "gradient_x_activation"), draws=5)
    with torch.no_grad():
        h = model[1](model[0](x))
    torch.testing.assert_close(result.scores["influence"], V)
    torch.testing.assert_close(result.scores["gradient_x_activation"], V * h[y == 0].mean(0))
    torch.testing.assert_close(result.scores["contrast"], V * (h[y == 0].mean(0) - h[y == 1].mean(0)))


def test_gradient_ranking_picks_a_dead_unit_and_loses(rng: torch.Generator) -> None:
    """The dead unit 1 has the largest weight, so the bare gradient ranks it first; kept
    alone it leaves ``q`` constant: AUC exactly ½. The contrast ranking keeps unit 0,
    which fires for class 0 only: AUC 1."""
    model, (x, y) = head_model(), head_data(rng)
    result = essence_check(Slice(model, "1"), (x, y), 0, 1, ks=(1, 2), rankings=("contrast", "influence"), draws=50)
    assert result.row("influence", 1).units == (1,)
    assert result.row("influence", 1).auc == 0.5
    assert result.row("contrast", 1).units == (0,)
    assert result.row("contrast", 1).auc == 1.0
    assert result.row("contrast", 1).beats_random and not result.row("influence", 1).beats_random
    assert result.full_auc < 1.0  # the shared noise of units 2 and 3 blurs the whole network's answer
    assert result.n_positive == 12 and result.n_negative == 12 and result.units == 4


@pytest.mark.parametrize("ablation", ["mean", "zero"])
@pytest.mark.parametrize("b", [1, None])
def test_every_auc_matches_the_ablated_network(rng: torch.Generator, ablation: str, b: int | None) -> None:
    """Kept units as reported, the others at their data-set mean (over all of ``data``) or
    zero; against everything not class 0 when ``b`` is None (the quantity is then ``f_0``)."""
    model, (x, y) = head_model(), head_data(rng)
    result = essence_check(Slice(model, "1"), (x, y), 0, b, ks=(1, 2, 3), rankings=("contrast", "influence", "gradient_x_activation"), ablation=ablation, draws=10)
    with torch.no_grad():
        h = model[1](model[0](x))
    fill = h.mean(0) if ablation == "mean" else torch.zeros(4, dtype=torch.float64)
    for row in result.rows:
        assert len(row.units) == row.k
        assert row.auc == pytest.approx(ablated_auc(model, x, y, list(row.units), fill, 0, b), abs=1e-12)
    assert result.full_auc == pytest.approx(ablated_auc(model, x, y, [0, 1, 2, 3], fill, 0, b), abs=1e-12)
    assert result.negatives == (f"class {b}" if b is not None else "not class 0")
    assert result.n_negative == (12 if b is not None else 24)


def test_random_sets_of_all_units_give_the_full_auc(rng: torch.Generator) -> None:
    """With ``k`` = every unit each random set keeps everything: median = quartiles = full AUC."""
    model, (x, y) = head_model(), head_data(rng)
    row = essence_check(Slice(model, "1"), (x, y), 0, 1, ks=(4,), draws=7).row("contrast", 4)
    assert row.random_median == row.random_q25 == row.random_q75 == row.auc


def test_seeded_and_deterministic(rng: torch.Generator) -> None:
    model, data = head_model(), head_data(rng)
    r1 = essence_check(Slice(model, "1"), data, 0, None, ks=(1, 2), draws=20, seed=3)
    r2 = essence_check(Slice(model, "1"), data, 0, None, ks=(1, 2), draws=20, seed=3)
    assert r1.to_dict() == r2.to_dict()


def conv_setup(rng: torch.Generator) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = res_cnn(seed=1, classes=3).double()
    x = torch.randn(24, 3, 8, 8, generator=rng, dtype=torch.float64)
    y = torch.arange(3).repeat(8)
    return model, x, y


@pytest.mark.parametrize("by", ["unit", "channel"])
def test_conv_slice_matches_brute_force_for_units_and_channels(rng: torch.Generator, by: str) -> None:
    """On ``layer2`` (8 channels of 4×4): the AUC of each row equals the model evaluated with
    the activation at the cut replaced (outside the kept units or channels) by its mean."""
    model, x, y = conv_setup(rng)
    slc = Slice(model, "layer2")
    result = essence_check(slc, (x, y), 0, 2, ks=(1, 3), rankings=("contrast", "gradient_x_activation"), by=by, draws=8, batch_size=16)
    assert result.units == (8 if by == "channel" else 8 * 16)
    with torch.no_grad():
        z = slc.h(x)
    fill = z.mean(0)
    for row in result.rows:
        keep = torch.zeros(z.shape[1:], dtype=torch.bool)
        for u in row.units:
            keep[u] = True  # an int selects a whole channel, a tuple one unit
        with torch.no_grad():
            out = slc.g(torch.where(keep, z, fill))
        q = (out[:, 0] - out[:, 2]).numpy()
        assert row.auc == pytest.approx(brute_auc(q[y.numpy() == 0], q[y.numpy() == 2]), abs=1e-12)
    if by == "channel":
        scores = result.scores["contrast"]
        assert scores.shape == (8,)
        assert result.row("contrast", 3).units == tuple(int(i) for i in scores.argsort(descending=True)[:3])


def test_hook_realisation_agrees_with_the_graph_split(rng: torch.Generator) -> None:
    """Slice invariance carries over: the hook slice (``g(z, x)``) gives the same check."""
    model, x, y = conv_setup(rng)
    kwargs = dict(ks=(1, 2), rankings=("contrast", "influence"), draws=6, batch_size=20)
    graph = essence_check(Slice(model, "layer2", realisation="graph"), (x, y), 1, 0, **kwargs)
    hook = essence_check(Slice(model, "layer2", realisation="hook"), (x, y), 1, 0, **kwargs)
    for r1, r2 in zip(graph.rows, hook.rows):
        assert r1.units == r2.units
        assert r1.auc == pytest.approx(r2.auc, abs=1e-9)
        assert r1.random_median == pytest.approx(r2.random_median, abs=1e-9)


def test_batch_size_does_not_change_the_answer(rng: torch.Generator) -> None:
    model, x, y = conv_setup(rng)
    r1 = essence_check(Slice(model, "layer2"), (x, y), 0, 1, ks=(2,), draws=9, batch_size=7)
    r2 = essence_check(Slice(model, "layer2"), (x, y), 0, 1, ks=(2,), draws=9, batch_size=500)
    for a, b in zip(r1.rows, r2.rows):
        assert a.units == b.units
        assert a.auc == pytest.approx(b.auc, abs=1e-12) and a.random_median == pytest.approx(b.random_median, abs=1e-12)


def test_table_and_json(rng: torch.Generator) -> None:
    model, data = head_model(), head_data(rng)
    result = essence_check(Slice(model, "1"), {"x": data[0], "y": data[1]}, 0, 1, ks=(1, 2), rankings=("contrast", "influence"), draws=10)
    table = result.to_table()
    assert "contrast" in table and "influence" in table and "random median" in table
    loaded = json.loads(result.to_json())
    assert [(r["ranking"], r["k"]) for r in loaded["rows"]] == [("contrast", 1), ("contrast", 2), ("influence", 1), ("influence", 2)]
    assert loaded["rows"][0]["auc"] == result.row("contrast", 1).auc
    assert result.auc("contrast") == [result.row("contrast", 1).auc, result.row("contrast", 2).auc]
    assert result.ks == (1, 2) and result.rankings == ("contrast", "influence")


def test_custom_quantity(rng: torch.Generator) -> None:
    """``qoi=`` replaces ``f_a − f_b`` for both the ranking and the AUC."""
    model, (x, y) = head_model(), head_data(rng)
    result = essence_check(Slice(model, "1"), (x, y), 0, 1, qoi=ClassQoI(0), ks=(1,), draws=5)
    assert result.qoi == "ClassQoI(0)"


def test_errors(rng: torch.Generator) -> None:
    model, (x, y) = head_model(), head_data(rng)
    slc = Slice(model, "1")
    with pytest.raises(ValueError, match="rankings must be one of"):
        essence_check(slc, (x, y), 0, 1, rankings="saliency")
    with pytest.raises(ValueError, match="ablation must be one of"):
        essence_check(slc, (x, y), 0, 1, ablation="noise")
    with pytest.raises(ValueError, match="k=8 is more than the 4 units"):
        essence_check(slc, (x, y), 0, 1, ks=(8,))
    with pytest.raises(ValueError, match="class a=5 has no points"):
        essence_check(slc, (x, y), 5, 1)
    with pytest.raises(ValueError, match="needs a slice at a layer"):
        essence_check(Slice.input(model), (x, y), 0, 1)
    with pytest.raises(TypeError, match="pair of tensors"):
        essence_check(slc, x, 0, 1)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        essence_check(slc, (x, y), 0, 1, draws=0)
    with pytest.raises(ValueError, match="must read the model's output"):
        essence_check(slc, (x, y), 0, 1, qoi=NeuronQoI("2", 0))
