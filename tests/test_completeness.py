"""Every attribution along a line reports its completeness gap.

``result.completeness`` is ``|Σ attribution − Δq| / |Δq|`` per anchor, with
``Δq = q(x) − q(b)`` computed by the engine from two separate forward passes. Here the
gap is recomputed by hand from the model, and its behaviour checked: it falls with the
number of steps on a smooth network (quadrature error), it is zero on a linear one, and
it stays with the result through saving, pooling and the ``skip`` of non-finite anchors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import InfluenceResult, input_influence, internal_influence
from models import mlp, res_cnn
from qoi import ClassQoI, MaxClassQoI, NeuronQoI
from slices import Slice

F64 = torch.float64


def _hand_gap(total: Tensor, change: Tensor) -> Tensor:
    return (total - change).abs() / change.abs()


@pytest.mark.parametrize("layer, space", [(None, "input"), ("2", "slice"), ("2", "input")])
@pytest.mark.parametrize("baseline", ["zero", "per point"])
def test_reported_gap_is_the_true_gap(rng: torch.Generator, layer: str | None, space: str, baseline: str) -> None:
    """The reported gap equals the gap from a separate forward pass at both ends of each
    line, for a class logit and for the predicted class, to 1e-10."""
    model = mlp(6, 10, 4, act=nn.Tanh, seed=1).double()
    x = torch.randn(7, 6, generator=rng, dtype=F64)
    slc = Slice(model, layer)
    in_slice = space == "slice" and layer is not None
    with torch.no_grad():
        if baseline == "zero":
            b = 0.0
            start_point = torch.zeros_like(slc.h(x) if in_slice else x)
        else:
            b_input = 0.3 * torch.randn(7, 6, generator=rng, dtype=F64)
            b = start_point = slc.h(b_input) if in_slice else b_input
        f_x = model(x)
        f_b = slc.g(start_point) if in_slice else model(start_point)
    results = internal_influence(slc, [ClassQoI(2), MaxClassQoI()], LineDoI(baseline=b, steps=6, space=space), x, multiply_activation=True)
    predicted = f_x.argmax(1)
    for result, (end, start) in zip(results, [(f_x[:, 2], f_b[:, 2]), (f_x.gather(1, predicted[:, None])[:, 0], f_b.gather(1, predicted[:, None])[:, 0])]):
        assert result.completeness is not None and result.completeness.shape == (7,)
        want = _hand_gap(result.values.sum(1), end - start)
        torch.testing.assert_close(result.completeness, want, rtol=1e-10, atol=1e-14)


def test_gap_falls_with_steps_on_a_smooth_network(rng: torch.Generator) -> None:
    """Gauss–Legendre on a tanh network: the gap is a quadrature error and falls to
    float64 rounding; at the input and for a slice-space line."""
    model = mlp(6, 10, 4, act=nn.Tanh, seed=2).double()
    x = torch.randn(5, 6, generator=rng, dtype=F64)
    for layer, space in [(None, "input"), ("2", "slice")]:
        gaps = [
            float(internal_influence(Slice(model, layer), ClassQoI(1), LineDoI(steps=n, space=space), x, multiply_activation=True).completeness.max())
            for n in (1, 2, 4, 16)
        ]
        assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
        assert gaps[0] > 1e-4 and gaps[3] < 1e-12


def test_gap_is_zero_on_a_linear_model(rng: torch.Generator) -> None:
    model = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)).double()
    x = torch.randn(4, 5, generator=rng, dtype=F64)
    r = input_influence(model, ClassQoI(0), LineDoI(steps=1, rule="midpoint"), x, multiply_activation=True)
    assert float(r.completeness.max()) < 1e-13


def test_gap_through_the_affine_prefix_and_hooks(rng: torch.Generator) -> None:
    """A residual CNN: the affine prefix, the graph and the hook realisations report
    the same gap (the two ends run without the prefix)."""
    model = res_cnn(seed=0).double()
    x = torch.randn(3, 3, 8, 8, generator=rng, dtype=F64)
    got = []
    for realisation in ("graph", "hook"):
        for prefix in (True, False):
            r = internal_influence(
                Slice(model, "layer1", realisation=realisation), ClassQoI(2), LineDoI(steps=5, space="slice"), x,
                multiply_activation=True, affine_prefix=prefix,
            )  # fmt: skip
            got.append(r.completeness)
    for g in got[1:]:
        torch.testing.assert_close(g, got[0], rtol=1e-8, atol=1e-12)


def test_neuron_qoi_gap(rng: torch.Generator) -> None:
    """A NeuronQoI reads a recorded layer at both ends too."""
    model = mlp(6, 10, 4, act=nn.Softplus, seed=3).double()
    x = torch.randn(4, 6, generator=rng, dtype=F64)
    r = input_influence(model, NeuronQoI("2", (5,)), LineDoI(steps=3), x, multiply_activation=True)
    with torch.no_grad():
        change = model[:3](x)[:, 5] - model[:3](torch.zeros_like(x))[:, 5]
    torch.testing.assert_close(r.completeness, _hand_gap(r.values.sum(1), change), rtol=1e-10, atol=1e-14)


def test_only_line_attributions_carry_a_gap(rng: torch.Generator) -> None:
    model = mlp(6, 8, 3, seed=0).double()
    x = torch.randn(3, 6, generator=rng, dtype=F64)
    assert input_influence(model, 0, LineDoI(steps=4), x).completeness is None  # not an attribution
    assert input_influence(model, 0, PointDoI(), x, multiply_activation=True).completeness is None
    assert input_influence(model, 0, NoiseDoI(samples=4), x, multiply_activation=True, seed=0).completeness is None


def test_pooled_gap(rng: torch.Generator) -> None:
    """A pooled attribution's gap is its sum against the mean change of its anchors."""
    model = mlp(6, 8, 3, act=nn.Tanh, seed=4).double()
    x = torch.randn(9, 6, generator=rng, dtype=F64)
    y = torch.arange(9) % 2
    r = input_influence(model, ClassQoI(1), ClassDoI((x, y), 1, each=LineDoI(steps=3)), multiply_activation=True)
    with torch.no_grad():
        members = x[y == 1]
        change = (model(members)[:, 1] - model(torch.zeros_like(members))[:, 1]).mean()
    assert r.completeness is not None and r.completeness.shape == ()
    torch.testing.assert_close(r.completeness, _hand_gap(r.values.sum(), change), rtol=1e-10, atol=1e-14)
    # the same anchors pointwise: the pooled values are their mean
    each = input_influence(model, ClassQoI(1), LineDoI(steps=3), members, multiply_activation=True)
    torch.testing.assert_close(r.values, each.values.mean(0), rtol=1e-12, atol=1e-14)


def test_skipped_anchors_have_nan_gaps(rng: torch.Generator) -> None:
    """``nonfinite='skip'``: the skipped anchor's gap is NaN, the others' are finite."""

    class Spiky(nn.Module):
        def forward(self, v: Tensor) -> Tensor:
            out = torch.stack([v.sum(1), (v ** 2).sum(1)], 1)
            return torch.where(v[:, :1] > 100, torch.full_like(out, math.inf), out)

    x = torch.randn(3, 4, generator=rng, dtype=F64)
    x[1] += 1000
    with pytest.warns(RuntimeWarning, match="skipped 1"):
        r = input_influence(Spiky(), ClassQoI(1), LineDoI(steps=4), x, multiply_activation=True, nonfinite="skip")
    assert torch.isnan(r.completeness[1]) and bool(torch.isfinite(r.completeness[[0, 2]]).all())


def test_gap_is_saved_and_loaded(tmp_path, rng: torch.Generator) -> None:  # type: ignore[no-untyped-def]
    model = mlp(6, 8, 3, seed=0).double()
    x = torch.randn(3, 6, generator=rng, dtype=F64)
    r = input_influence(model, 0, LineDoI(steps=4), x, multiply_activation=True)
    r.save(tmp_path / "r.pt")
    back = InfluenceResult.load(tmp_path / "r.pt")
    assert back.completeness is not None and torch.equal(back.completeness, r.completeness)


def test_dataset_gap_matches_pointwise_mean(rng: torch.Generator) -> None:
    model = mlp(6, 8, 3, act=nn.Softplus, seed=5).double()
    x = torch.randn(6, 6, generator=rng, dtype=F64)
    pooled = input_influence(model, 2, DatasetDoI(x, each=LineDoI(steps=2)), multiply_activation=True, batch_size=4)
    each = input_influence(model, 2, LineDoI(steps=2), x, multiply_activation=True)
    with torch.no_grad():
        change = (model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]).mean()
    torch.testing.assert_close(pooled.completeness, _hand_gap(each.values.sum(1).mean(), change), rtol=1e-10, atol=1e-14)
