"""Deletion and insertion curves.

For a linear model ``f_c(x) = Σ W_c ⊙ x + b_c`` with a black baseline, the logit after
removing a set ``S`` of pixels is ``b_c + Σ_{p∉S} a_p`` where ``a_p = Σ_channels W_c,p x_p``
is the pixel's contribution (which is also its integrated gradient). So, with pixels in
attribution order and ``n_j = round(j/S · H·W)``,

    deletion_j  = b_c + Σ_{rank(p) ≥ n_j} a_p,      insertion_j = b_c + Σ_{rank(p) < n_j} a_p,

and since removing the largest contributions first leaves the smallest possible sum, the
deletion curve lies on or below the curve of any other order at every step (insertion on
or above). Areas are trapezoid sums over ``t ∈ [0, 1]``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from influence import deletion_insertion, input_influence
from influence.workflows.curves import _gaussian_blur, trapezoid_area
from doi import LineDoI
from qoi import ClassQoI

C, H, W_ = 3, 4, 5


def linear_model(rng: torch.Generator) -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W_, 3)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, C * H * W_, generator=rng, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(3, generator=rng, dtype=torch.float64))
    return model


def contributions(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``a_p`` per image: ``(N, H·W)``."""
    w = model[1].weight.detach().view(3, C, H, W_)[target]
    return (w * x).sum(1).flatten(1)


def test_trapezoid_area() -> None:
    t = np.linspace(0, 1, 9)
    v = np.random.default_rng(0).normal(size=(4, 9))
    np.testing.assert_allclose(trapezoid_area(t, v), np.trapezoid(v, t, axis=-1), atol=1e-14)
    assert trapezoid_area(np.array([0.0, 1.0]), np.array([1.0, 3.0])) == 2.0


@pytest.mark.parametrize("steps", [4, 7, 20])
def test_closed_form_for_a_linear_model(rng: torch.Generator, steps: int) -> None:
    model = linear_model(rng)
    x = torch.rand(5, C, H, W_, generator=rng, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1])
    a = contributions(model, x, target)
    curves = deletion_insertion(model, x, a.view(5, H, W_), target, steps=steps, score="logit")
    order = a.argsort(dim=1, descending=True, stable=True)
    bias = model[1].bias.detach()[target]
    counts = np.rint(np.arange(steps + 1) / steps * H * W_).astype(int)
    for i in range(5):
        sorted_a = a[i, order[i]]
        for j, n in enumerate(counts):
            assert curves.deletion[i, j] == pytest.approx(float(bias[i] + sorted_a[n:].sum()), abs=1e-10)
            assert curves.insertion[i, j] == pytest.approx(float(bias[i] + sorted_a[:n].sum()), abs=1e-10)
    np.testing.assert_allclose(curves.fractions, np.arange(steps + 1) / steps)
    # attribution order is the best order: pointwise below (deletion) / above (insertion) random
    assert (curves.deletion <= curves.random_deletion + 1e-10).all()
    assert (curves.insertion >= curves.random_insertion - 1e-10).all()
    assert curves.faithful
    mean, err = curves.area("deletion")
    per_image = trapezoid_area(curves.fractions, curves.deletion)
    assert mean == pytest.approx(per_image.mean()) and err == pytest.approx(per_image.std(ddof=1) / np.sqrt(5))


def test_integrated_gradients_of_a_linear_model_give_the_same_curves(rng: torch.Generator) -> None:
    """IG from black equals the contributions, so the engine's attributions give the closed form."""
    model = linear_model(rng)
    x = torch.rand(4, C, H, W_, generator=rng, dtype=torch.float64)
    target = torch.tensor([2, 2, 0, 1])
    ig = torch.cat([input_influence(model, ClassQoI(int(t)), LineDoI(0.0, steps=4), x[i : i + 1], multiply_activation=True).values for i, t in enumerate(target)])
    from_ig = deletion_insertion(model, x, ig, target, score="logit")
    exact = deletion_insertion(model, x, contributions(model, x, target).view(4, H, W_), target, score="logit")
    np.testing.assert_allclose(from_ig.deletion, exact.deletion, atol=1e-9)
    np.testing.assert_allclose(from_ig.insertion, exact.insertion, atol=1e-9)


def test_end_points_and_probability_score(rng: torch.Generator) -> None:
    """At t = 0 deletion is the image's score and insertion the baseline's; at t = 1 the
    other way round. ``probability`` is the softmax of the class."""
    model = linear_model(rng)
    x = torch.rand(3, C, H, W_, generator=rng, dtype=torch.float64)
    target = torch.tensor([1, 0, 2])
    curves = deletion_insertion(model, x, torch.randn(3, H, W_, generator=rng), target, score="probability", baseline=0.25)
    with torch.no_grad():
        p_x = model(x).softmax(1)[torch.arange(3), target].numpy()
        p_b = model(torch.full_like(x, 0.25)).softmax(1)[torch.arange(3), target].numpy()
    np.testing.assert_allclose(curves.deletion[:, 0], p_x, atol=1e-12)
    np.testing.assert_allclose(curves.deletion[:, -1], p_b, atol=1e-12)
    np.testing.assert_allclose(curves.insertion[:, 0], p_b, atol=1e-12)
    np.testing.assert_allclose(curves.insertion[:, -1], p_x, atol=1e-12)
    assert curves.score == "probability" and curves.baseline == "0.25"


def test_baselines(rng: torch.Generator) -> None:
    """``mean``: each image's per-channel mean; ``blur`` of a constant image is that
    constant; a tensor is broadcast. The fully deleted image is the baseline."""
    model = linear_model(rng)
    x = torch.rand(2, C, H, W_, generator=rng, dtype=torch.float64)
    target = torch.tensor([0, 1])
    maps = torch.randn(2, H, W_, generator=rng)
    mean = deletion_insertion(model, x, maps, target, baseline="mean")
    with torch.no_grad():
        expect = model(x.mean((2, 3), keepdim=True).expand_as(x))[torch.arange(2), target].numpy()
    np.testing.assert_allclose(mean.deletion[:, -1], expect, atol=1e-12)
    constant = torch.full((1, C, 9, 9), 0.3, dtype=torch.float64)
    torch.testing.assert_close(_gaussian_blur(constant, 1.5), constant)
    blur = deletion_insertion(model, x, maps, target, baseline="blur")
    assert blur.baseline.startswith("blur")
    tensor = deletion_insertion(model, x, maps, target, baseline=torch.full((C, 1, 1), 0.5))
    with torch.no_grad():
        expect = model(torch.full_like(x, 0.5))[torch.arange(2), target].numpy()
    np.testing.assert_allclose(tensor.deletion[:, -1], expect, atol=1e-12)


def test_callable_score_int_target_and_grey_images(rng: torch.Generator) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * W_, 2)).double()
    x = torch.rand(3, H, W_, generator=rng, dtype=torch.float64)
    curves = deletion_insertion(model, x, torch.randn(3, H, W_, generator=rng), 1, score=lambda out: out[:, 1] - out[:, 0], steps=5)
    with torch.no_grad():
        out = model(x)
    np.testing.assert_allclose(curves.deletion[:, 0], (out[:, 1] - out[:, 0]).numpy(), atol=1e-12)
    assert curves.deletion.shape == (3, 6)


def test_seeded_and_batch_size_invariant(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x = torch.rand(4, C, H, W_, generator=rng, dtype=torch.float64)
    maps, target = torch.randn(4, H, W_, generator=rng), torch.tensor([0, 1, 2, 0])
    a = deletion_insertion(model, x, maps, target, batch_size=3, random_orders=3, seed=5)
    b = deletion_insertion(model, x, maps, target, batch_size=1000, random_orders=3, seed=5)
    for k in ("deletion", "insertion", "random_deletion", "random_insertion"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=1e-12)
    c = deletion_insertion(model, x, maps, target, random_orders=3, seed=6)
    assert not np.allclose(a.random_deletion, c.random_deletion)


def test_table_and_json(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x = torch.rand(3, C, H, W_, generator=rng, dtype=torch.float64)
    curves = deletion_insertion(model, x, torch.randn(3, H, W_, generator=rng), torch.tensor([0, 1, 2]), steps=4)
    loaded = json.loads(curves.to_json())
    assert loaded["deletion"]["auc"] == pytest.approx(curves.area("deletion")[0])
    assert len(loaded["insertion"]["curve"]) == 5 and loaded["images"] == 3
    assert set(curves.areas) == {"deletion", "insertion", "random_deletion", "random_insertion"}
    assert "random_insertion" in curves.to_table()


def test_errors(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x = torch.rand(2, C, H, W_, generator=rng, dtype=torch.float64)
    target = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="do not fit images"):
        deletion_insertion(model, x, torch.zeros(2, H, H), target)
    with pytest.raises(ValueError, match="target must be an int or a tensor of 2"):
        deletion_insertion(model, x, torch.zeros(2, H, W_), torch.tensor([0]))
    with pytest.raises(ValueError, match="score must be"):
        deletion_insertion(model, x, torch.zeros(2, H, W_), target, score="softmax")
    with pytest.raises(TypeError, match="baseline must be"):
        deletion_insertion(model, x, torch.zeros(2, H, W_), target, baseline="grey")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        deletion_insertion(model, x, torch.zeros(2, H, W_), target, steps=0)
