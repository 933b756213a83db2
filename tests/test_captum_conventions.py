"""Captum's input conventions, on Captum's own test models (``BasicModel`` family).

Captum reads inputs of shape ``(N,)`` as ``N`` scalar points, and its unit tests use
them; so do we. A model of several inputs is explained here in its first input, the
others held fixed at one row that broadcasts over the batch (inputs given per point,
repeated with every sample, are the tuple inputs of the text-models issue). Every case is float64 and
compared with Captum's ``Saliency``, ``InputXGradient`` and ``IntegratedGradients``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from captum.testing.helpers import basic_models as bm
from torch import Tensor, nn

from doi import LineDoI, NoiseDoI, PointDoI
from influence import input_influence


class FirstInput(nn.Module):
    """``model(x, *fixed)``: the model as a function of its first input."""

    def __init__(self, model: nn.Module, *fixed: Any) -> None:
        super().__init__()
        self.model, self.fixed = model, fixed

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, *self.fixed)


def _scalars(seed: int, shape: tuple[int, ...]) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 6 - 3).contiguous()


# (name, model, inputs): the models as Captum's tests use them, scalar points (N,) first
CASES: list[tuple[str, nn.Module, Tensor]] = [
    ("BasicModel, (N,)", bm.BasicModel(), _scalars(0, (9,))),
    ("BasicModel, (N, 3)", bm.BasicModel(), _scalars(1, (5, 3))),
    ("BasicModel2, (N,)", FirstInput(bm.BasicModel2(), _scalars(2, (1,))), _scalars(3, (9,))),
    ("BasicModel3, (N,)", FirstInput(bm.BasicModel3(), _scalars(4, (1,))), _scalars(5, (9,))),
    ("BasicModel4_MultiArgs, (N, 3)", FirstInput(bm.BasicModel4_MultiArgs(), _scalars(6, (1, 3)), 2.0, 1), _scalars(7, (5, 3))),
    ("BasicModel5_MultiArgs, (N, 3)", FirstInput(bm.BasicModel5_MultiArgs(), _scalars(8, (1, 3)), [3, -1], 2), _scalars(9, (5, 3))),
    ("BasicModel6_MultiTensor, (N, 3)", FirstInput(bm.BasicModel6_MultiTensor(), _scalars(10, (1, 3))), _scalars(11, (5, 3))),
    ("BasicLinearModel2, (N, 4)", bm.BasicLinearModel2(4, 1), _scalars(12, (6, 4))),
    ("BasicLinearModel_Multilayer, (N, 4)", bm.BasicLinearModel_Multilayer(4, 5, 1), _scalars(13, (6, 4))),
]


def _scalar_output(out: Tensor) -> Tensor:
    """Captum's ``target=None``: one scalar per point (``(N,)`` or ``(N, 1)``)."""
    return out.reshape(out.shape[0], -1).sum(1)


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    _, model, x = request.param
    return model.double().eval(), x


def test_saliency(case: tuple[nn.Module, Tensor]) -> None:
    model, x = case
    ours = input_influence(model, _scalar_output, PointDoI(), x)
    theirs = Saliency(lambda v: _scalar_output(model(v))).attribute(x.clone().requires_grad_(True), abs=False)
    assert ours.values.shape == x.shape
    torch.testing.assert_close(ours.values, theirs, rtol=1e-10, atol=1e-10)


def test_input_x_gradient(case: tuple[nn.Module, Tensor]) -> None:
    model, x = case
    ours = input_influence(model, _scalar_output, PointDoI(), x, multiply_activation=True)
    theirs = InputXGradient(lambda v: _scalar_output(model(v))).attribute(x.clone().requires_grad_(True))
    torch.testing.assert_close(ours.values, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rule, method", [("gauss-legendre", "gausslegendre"), ("riemann-left", "riemann_left"), ("midpoint", "riemann_middle")])
def test_integrated_gradients(case: tuple[nn.Module, Tensor], rule: str, method: str) -> None:
    model, x = case
    baseline = 0.25 * x.flip(0)  # a baseline per point
    ours = input_influence(model, _scalar_output, LineDoI(baseline=baseline, steps=20, rule=rule), x, multiply_activation=True)
    theirs = IntegratedGradients(lambda v: _scalar_output(model(v))).attribute(x.clone().requires_grad_(True), baselines=baseline, n_steps=20, method=method)
    # Captum rounds its nodes and weights to float32
    torch.testing.assert_close(ours.values, theirs, rtol=1e-6, atol=1e-6)


def test_scalar_points_are_points() -> None:
    """``(N,)`` inputs are N points of shape (): the same as ``(N, 1)`` reshaped, for
    every DoI kind, and the result has one value per point."""
    model = bm.BasicModel().double()
    x = _scalars(20, (7,))
    for doi in (PointDoI(), LineDoI(steps=8), NoiseDoI(sigma=0.3, samples=16)):
        flat = input_influence(model, _scalar_output, doi, x, seed=3, multiply_activation=not isinstance(doi, NoiseDoI))
        column = input_influence(model, _scalar_output, doi, x[:, None], seed=3, multiply_activation=not isinstance(doi, NoiseDoI))
        assert flat.values.shape == (7,) and flat.stderr.shape == (7,)
        torch.testing.assert_close(flat.values, column.values[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(flat.stderr, column.stderr[:, 0], rtol=1e-12, atol=1e-12)


def test_a_zero_dimensional_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"inputs: .*0-d"):
        input_influence(bm.BasicModel().double(), _scalar_output, PointDoI(), torch.tensor(1.0, dtype=torch.float64))
