"""What a neuron sees.

For a neuron that is a linear function of the input, ``n(x) = w·x + c`` (a unit of a
``Linear`` layer straight after the flattened input), integrated gradients from black is
exactly ``w ⊙ x``, so for a population ``P``:

    pooled = mean_{x∈P} w ⊙ x,     example maps = w ⊙ x_i for the ``m`` members with the
    largest ``n(x_i)``, in decreasing order of ``n``.

For a neuron deeper in a CNN the views equal the engine's own answers for ``NeuronQoI``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from doi import DatasetDoI, LineDoI, PointDoI
from influence import explain_neurons, input_influence
from models import res_cnn
from qoi import NeuronQoI

C, H, W_ = 2, 4, 4


def linear_units(rng: torch.Generator) -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W_, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=rng, dtype=torch.float64))
    return model


def test_linear_neurons_have_closed_forms(rng: torch.Generator) -> None:
    model = linear_units(rng)
    x = torch.rand(12, C, H, W_, generator=rng, dtype=torch.float64)
    y = torch.tensor([0, 1, 2] * 4)
    views = explain_neurons(model, "1", [2, 0], (x, y), over=[0, 2], examples=3)
    members = torch.nonzero((y == 0) | (y == 2)).flatten()
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    for view, j in zip(views, (2, 0)):
        w = weight[j].view(C, H, W_)
        assert view.unit == j and view.layer == "1" and view.name == f"1[{j}]"
        torch.testing.assert_close(view.pooled, (w * x[members]).mean(0))
        act = x[members].flatten(1) @ weight[j] + bias[j]
        order = act.argsort(descending=True)[:3]
        assert view.examples.tolist() == members[order].tolist()
        torch.testing.assert_close(view.activations, act[order])
        assert bool((view.activations[:-1] >= view.activations[1:]).all())
        torch.testing.assert_close(view.images, x[view.examples])
        torch.testing.assert_close(view.maps, w * x[view.examples])
        torch.testing.assert_close(view.pooled_map(), (w * x[members]).mean(0).sum(0))
        torch.testing.assert_close(view.example_maps(), (w * x[view.examples]).sum(1))


def test_conv_neurons_equal_the_engine(rng: torch.Generator) -> None:
    """A channel (int) and a unit (tuple) of ``layer2``; ``each=PointDoI()`` without
    multiplication gives the bare class-wide influence of the neuron on the input."""
    model = res_cnn(seed=3, classes=3).double()
    x = torch.randn(9, 3, 8, 8, generator=rng, dtype=torch.float64)
    y = torch.tensor([0, 1, 2] * 3)
    units = [5, (1, 2, 3)]
    views = explain_neurons(model, "layer2", units, {"x": x, "y": y}, examples=2, each=PointDoI(), multiply_activation=False)
    for view, u in zip(views, units):
        pooled = input_influence(model, NeuronQoI("layer2", u), DatasetDoI(x), seed=0)
        torch.testing.assert_close(view.pooled, pooled.values)
        torch.testing.assert_close(view.pooled_stderr, pooled.stderr)
        local = input_influence(model, NeuronQoI("layer2", u), PointDoI(), x[view.examples], seed=0)
        torch.testing.assert_close(view.maps, local.values)
    assert views[1].name == "layer2[1, 2, 3]"
    ig = explain_neurons(model, "layer2", [5], (x, y), examples=1, each=LineDoI(0.0, steps=8))[0]
    direct = input_influence(model, NeuronQoI("layer2", 5), LineDoI(0.0, steps=8), x[ig.examples], multiply_activation=True, seed=0)
    torch.testing.assert_close(ig.maps, direct.values)


def test_errors(rng: torch.Generator) -> None:
    model = linear_units(rng)
    x = torch.rand(4, C, H, W_, generator=rng, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="units is empty"):
        explain_neurons(model, "1", [], (x, y))
    with pytest.raises(ValueError, match="examples must be >= 1"):
        explain_neurons(model, "1", [0], (x, y), examples=0)
    with pytest.raises(ValueError, match="unknown layer"):
        explain_neurons(model, "nope", [0], (x, y))
