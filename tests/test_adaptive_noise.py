"""``NoiseDoI(tol=...)``: rounds of fresh samples until each anchor's standard error is at
most ``tol ×`` its estimate's norm, and what sequential stopping does to the estimate.

The bias is measured on a function whose SmoothGrad is known in closed form: for
``q(x) = Σ_j a_j sin(w_j·x + b_j)`` and ``ε ~ N(0, I)``,
``E[∇q(x + σε)] = Σ_j a_j w_j cos(w_j·x + b_j) exp(−σ²‖w_j‖²/2)``. Thousands of copies of
one anchor get independent draws (draws are keyed by the anchor's position), so the
mean of their estimates shows the bias of one estimate, against its own noise level.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from doi import ClassDoI, NoiseDoI
from influence import input_influence, internal_influence
from qoi import ClassQoI, FunctionQoI
from slices import Slice

F64 = torch.float64


class Waves(nn.Module):
    """``q(x) = Σ_j a_j sin(w_j·x + b_j)``, output ``(N, 1)``."""

    def __init__(self, dims: int = 8, waves: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(waves, dims, generator=g, dtype=F64))
        self.a = nn.Parameter(torch.randn(waves, generator=g, dtype=F64))
        self.b = nn.Parameter(torch.randn(waves, generator=g, dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return (self.a * torch.sin(x @ self.w.T + self.b)).sum(1, keepdim=True)

    def smoothgrad(self, x: Tensor, sigma: float) -> Tensor:
        with torch.no_grad():
            damp = torch.exp(-(sigma**2) * (self.w * self.w).sum(1) / 2)
            return ((self.a * torch.cos(self.w @ x + self.b) * damp)[:, None] * self.w).sum(0)


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 4)
    ).double().eval()  # fmt: skip


FIRST = FunctionQoI(lambda out: out[:, 0])


@pytest.mark.parametrize("sampler", ["sobol", "random"])
def test_every_anchor_meets_tol_and_the_first_round_is_the_fixed_estimate(sampler: str) -> None:
    model, x = cnn(), torch.randn(12, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    noise = NoiseDoI(0.3, samples=16, sampler=sampler, tol=0.1)
    result = input_influence(model, ClassQoI(0), noise, x, seed=0)
    relative = result.stderr.flatten(1).norm(dim=1) / result.values.flatten(1).norm(dim=1)
    assert bool((relative <= 0.1).all()) and result.query["tol_missed"] == 0
    assert result.steps is not None and bool((result.steps % 16 == 0).all()) and int(result.steps.sum()) == result.samples
    assert int(result.steps.max()) > 16  # some anchors needed more than one round
    # an anchor done after one round has the fixed-sample estimate, to the bit
    fixed = input_influence(model, ClassQoI(0), NoiseDoI(0.3, samples=16, sampler=sampler), x, seed=0)
    once = result.steps == 16
    assert torch.equal(result.values[once], fixed.values[once]) and torch.equal(result.stderr[once], fixed.stderr[once])
    # the draws of each anchor do not depend on the batches or on which anchors go on
    again = input_influence(model, ClassQoI(0), noise, x, seed=0, batch_size=5)
    assert torch.equal(again.values, result.values) and torch.equal(again.steps, result.steps)


def test_pooled_and_many_qois() -> None:
    """A class DoI's members are each adaptive (the pooled result is their mean, their
    steps sorted); with two QoIs an anchor goes on until both meet ``tol``."""
    model = cnn()
    x = torch.randn(10, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(10) % 2
    noise = NoiseDoI(0.3, samples=8, sampler="random", tol=0.15, space="slice")
    slc = Slice(model, "1")
    pooled = internal_influence(slc, ClassQoI(1), ClassDoI((x, y), 1, each=noise), seed=4)
    members = internal_influence(slc, ClassQoI(1), noise, x[y == 1], seed=4)
    # the class's members are anchors 0..4 of the population: the same positions as here
    torch.testing.assert_close(pooled.values, members.values.mean(0), rtol=1e-12, atol=1e-15)
    assert pooled.steps is not None and members.steps is not None
    assert pooled.steps.tolist() == sorted(members.steps.tolist())
    both = internal_influence(slc, [ClassQoI(0), ClassQoI(1)], noise, x, seed=4)
    for r in both:
        assert bool((r.stderr.flatten(1).norm(dim=1) <= 0.15 * r.values.flatten(1).norm(dim=1)).all())
    assert torch.equal(both[0].steps, both[1].steps)


def test_anchors_that_miss_tol_are_counted_once() -> None:
    model, x = cnn(), torch.randn(6, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    with pytest.warns(RuntimeWarning, match=r"influence: (\d+) of 6 anchors did not reach tol=0.001 .*max_samples=32") as caught:
        result = input_influence(model, ClassQoI(0), NoiseDoI(0.3, samples=16, sampler="random", tol=1e-3, max_samples=32), x, seed=0)
    assert len(caught) == 1 and result.query["tol_missed"] == 6 and result.steps.tolist() == [32] * 6


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"NoiseDoI: tol must be a number in \(0, 1\)"):
        NoiseDoI(0.1, tol=0.0)
    with pytest.raises(ValueError, match=r"NoiseDoI: tol needs a standard error"):
        NoiseDoI(0.1, samples=1, sampler="random", tol=0.1)
    with pytest.raises(ValueError, match=r"NoiseDoI: max_samples must be >= 32"):
        NoiseDoI(0.1, samples=32, tol=0.1, max_samples=16)


def test_the_bias_of_stopping_on_the_estimates_own_error() -> None:
    """Sequential stopping biases the estimate: an anchor stops sooner when its draws
    happen to give a larger norm (the rule compares the error with the estimate's norm).
    Measured on the closed-form SmoothGrad with 4000 independent copies of one anchor at
    ``tol = 0.1``: the mean of the adaptive estimates is 1.5 % of the norm away from the
    truth (1.1 % and 1.1 % at two other anchors), well outside its noise level (0.16 %)
    and about a seventh of ``tol``, against each estimate's own error of ~9 %; a
    fixed-sample estimate with the same mean number of samples is unbiased (its mean is
    within its noise level of the truth)."""
    model, sigma, copies = Waves(), 0.5, 4000
    x0 = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(7))
    truth = model.smoothgrad(x0, sigma)
    x = x0.expand(copies, 8).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive = input_influence(model, FIRST, NoiseDoI(sigma, samples=16, sampler="random", tol=0.1, max_samples=8192), x, seed=1, batch_size=4096)
    assert adaptive.steps is not None
    mean_samples = int(round(float(adaptive.steps.double().mean()) / 16)) * 16
    fixed = input_influence(model, FIRST, NoiseDoI(sigma, samples=mean_samples, sampler="random"), x, seed=2, batch_size=4096)

    def bias_and_noise(values: Tensor) -> tuple[float, float]:
        scale = float(truth.norm())
        return float((values.mean(0) - truth).norm()) / scale, float((values.std(0) / math.sqrt(copies)).norm()) / scale

    bias, noise = bias_and_noise(adaptive.values)
    fixed_bias, fixed_noise = bias_and_noise(fixed.values)
    assert fixed_bias < 3 * fixed_noise  # unbiased: only noise
    assert bias > 3 * noise  # the stopping rule's bias is real and measurable here
    assert bias < 0.25 * 0.1  # and small against tol
    each = float(((adaptive.values - truth).norm(dim=1) / truth.norm()).mean())
    assert bias < each / 4
