"""Top neurons for a class contrast.

On ``x -> h = relu(Wx + c) -> [v·h + b₀, 0, 0]`` (a linear head after the cut) the quantity
``q = f_0 − f_1 = v·h + b₀`` has gradient ``v`` at every point, so over the points ``P`` of
class 0, with ``μ`` the mean activation of class 1 and ``n = |P|``:

* influence: value ``v``, standard error 0 (every point gives the same gradient; up to
  the rounding of the engine's streaming sums);
* gradient × activation: value ``mean_P(v ⊙ h)``, stderr ``sd_P(v ⊙ h) / √n``;
* contrast: value ``mean_P(v ⊙ (h − μ))``, stderr ``sd_P(v ⊙ (h − μ)) / √n``;

and an entry is separated when ``|value| > 3 · stderr``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from influence import internal_influence, top_neurons
from doi import ClassDoI, DatasetDoI
from models import res_cnn
from qoi import ComparativeQoI
from slices import Slice
from test_essence import V, head_data, head_model


def activations(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model[1](model[0](x))


def test_influence_is_the_head_weights_with_zero_error(rng: torch.Generator) -> None:
    model, data = head_model(), head_data(rng)
    top = top_neurons(Slice(model, "1"), data, 0, 1, k=4)
    assert top.ranking == "influence" and top.by == "unit"  # a 1-D layer: units
    assert [e.index for e in top.entries] == [1, 2, 0, 3]  # by value: 10, 0.5, 0.1, -0.3
    eps = torch.finfo(torch.float64).eps
    for e in top.entries:
        assert e.value == pytest.approx(float(V[e.index]), abs=1e-12)
        # zero up to the rounding of the streaming sums: the engine forms the variance as
        # (Σv² − (Σv)²/n)/(n − 1), whose rounding error is about eps·v², i.e. sqrt(eps)·|v| in the stderr
        assert e.stderr <= math.sqrt(eps) * abs(e.value)
        assert e.separated and abs(e.z) > 1e6
    assert top.separated == (1, 2, 0, 3)


@pytest.mark.parametrize("ranking", ["contrast", "gradient_x_activation"])
def test_attribution_rankings_have_their_closed_forms(rng: torch.Generator, ranking: str) -> None:
    model, (x, y) = head_model(), head_data(rng)
    top = top_neurons(Slice(model, "1"), (x, y), 0, 1, k=4, ranking=ranking)
    h = activations(model, x)
    mu = h[y == 1].mean(0)
    per_point = V * (h[y == 0] - mu) if ranking == "contrast" else V * h[y == 0]
    mean, stderr = per_point.mean(0), per_point.std(0) / math.sqrt(per_point.shape[0])
    assert [e.index for e in top.entries] == mean.argsort(descending=True).tolist()
    for e in top.entries:
        assert e.value == pytest.approx(float(mean[e.index]), rel=1e-10, abs=1e-12)
        assert e.stderr == pytest.approx(float(stderr[e.index]), rel=1e-10, abs=1e-12)
        assert e.separated == (abs(e.value) > 3 * e.stderr)
        assert e.z == pytest.approx(e.value / e.stderr if e.stderr > 0 else e.z)
    # contrast: the unit that fires for class 0 only; gradient × activation: the noise unit 2,
    # active in every class (mean 0.5 · 0.5 > 0.1 · 1.5), which does not tell the classes apart
    assert top.entries[0].index == (0 if ranking == "contrast" else 2)
    assert top.result.anchors == 12


def test_union_population_and_threshold(rng: torch.Generator) -> None:
    """``over=[0, 2]`` pools over both classes (a DatasetDoI over their points)."""
    model, (x, y) = head_model(), head_data(rng)
    top = top_neurons(Slice(model, "1"), (x, y), 0, 1, over=[0, 2], k=4, ranking="gradient_x_activation", threshold=1e9)
    keep = (y == 0) | (y == 2)
    h = activations(model, x[keep])
    for e in top.entries:
        assert e.value == pytest.approx(float((V * h).mean(0)[e.index]), rel=1e-10)
        assert not e.separated  # nothing is 1e9 standard errors away
    assert top.population == (0, 2) and top.result.anchors == 24


def test_channels_of_a_conv_layer(rng: torch.Generator) -> None:
    """``by="channel"``: channel sums of the pooled result, with its channel standard errors;
    the same numbers as ``internal_influence(...).top(k, by="channel")``."""
    model = res_cnn(seed=2, classes=3).double()
    x = torch.randn(18, 3, 8, 8, generator=rng, dtype=torch.float64)
    y = torch.arange(3).repeat(6)
    top = top_neurons(Slice(model, "layer1"), (x, y), 2, 0, k=3, by="channel", absolute=True)
    direct = internal_influence(Slice(model, "layer1"), ComparativeQoI(2, 0), ClassDoI((x, y), 2), seed=0)
    ranked = direct.top(3, by="channel", absolute=True)
    assert [(e.index, e.value, e.stderr) for e in top.entries] == [(r.index, r.value, r.stderr) for r in ranked]
    union = top_neurons(Slice(model, "layer1"), (x, y), 2, 0, k=2, by="unit", over=(1, 2))
    both = internal_influence(Slice(model, "layer1"), ComparativeQoI(2, 0), DatasetDoI(x[(y == 1) | (y == 2)]), seed=0)
    assert [(e.index, e.value) for e in union.entries] == [(r.index, r.value) for r in both.top(2)]


def test_table_and_json(rng: torch.Generator) -> None:
    model, data = head_model(), head_data(rng)
    top = top_neurons(Slice(model, "1"), {"x": data[0], "y": data[1]}, 0, 1, k=3, ranking="contrast")
    loaded = json.loads(top.to_json())
    assert [e["index"] for e in loaded["entries"]] == list(top.indices)
    assert loaded["ranking"] == "contrast" and loaded["a"] == 0 and loaded["b"] == 1
    lines = top.to_table().splitlines()
    assert len(lines) == 2 + 3 and "separated" in lines[0]
    assert [line.rstrip().endswith("*") for line in lines[2:]] == [e.separated for e in top.entries]


def test_errors(rng: torch.Generator) -> None:
    model, data = head_model(), head_data(rng)
    slc = Slice(model, "1")
    with pytest.raises(ValueError, match="ranking must be one of"):
        top_neurons(slc, data, 0, 1, ranking="saliency")
    with pytest.raises(ValueError, match=r"b \[7\] not in the data's labels"):
        top_neurons(slc, data, 0, 7)
    with pytest.raises(ValueError, match=r"over \[9\] not in the data's labels"):
        top_neurons(slc, data, 0, 1, over=9)
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_neurons(slc, data, 0, 1, k=0)
    with pytest.raises(ValueError, match="threshold must be a number >= 0"):
        top_neurons(slc, data, 0, 1, threshold=-1)
