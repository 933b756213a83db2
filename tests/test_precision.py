"""Precision as a choice the user makes knowingly: TF32, the bfloat16 fast mode, and
``torch.compile``, each recorded in ``result.query``; the completeness gap shows what a
choice costs, because the line's two ends always run in full precision."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from doi import ClassDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from models import mlp, res_cnn
from qoi import ClassQoI, NeuronQoI
from slices import Slice


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def cnn() -> nn.Module:
    return res_cnn(seed=0, width=8)


@pytest.fixture
def images(rng: torch.Generator) -> Tensor:
    return torch.randn(6, 3, 8, 8, generator=rng)


@pytest.mark.parametrize(
    "layer, doi",
    [(None, LineDoI(steps=8)), ("layer1", LineDoI(steps=8)), ("layer1", LineDoI(steps=8, space="slice")), (None, PointDoI()), ("layer1", NoiseDoI(samples=8))],
    ids=["ig", "input-line-at-layer", "slice-line", "saliency", "smoothgrad-at-layer"],
)
def test_bfloat16_autocast_is_close_to_float32(cnn: nn.Module, images: Tensor, layer: str | None, doi: Any) -> None:
    """The fast mode is an approximation of the float32 query (bfloat16 keeps 8 bits of
    mantissa: a few percent at most on this small network), computed on the same
    samples; the model is left as it was."""
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    exact = internal_influence(Slice(cnn, layer), ClassQoI(1), doi, images, seed=0, multiply_activation=True)
    fast = internal_influence(Slice(cnn, layer), ClassQoI(1), doi, images, seed=0, multiply_activation=True, autocast=torch.bfloat16)
    assert fast.query["autocast"] == "bfloat16" and exact.query["autocast"] is None
    assert fast.values.dtype == torch.float64 and fast.values.shape == exact.values.shape
    error = _relative(fast.values, exact.values)
    assert 0 < error < 0.05, error
    assert all(torch.equal(v, state[k]) for k, v in cnn.state_dict().items())
    assert all(p.dtype == torch.float32 for p in cnn.parameters())


def test_fast_mode_gap_is_measured_in_full_precision(cnn: nn.Module, images: Tensor) -> None:
    """The completeness gap of a bfloat16 attribution is its sum against ``Δq`` from
    float32 forward passes: it shows the cost of the fast mode (larger than the float32
    query's gap, and exactly the gap computed by hand)."""
    line = LineDoI(steps=16)
    exact = input_influence(cnn, ClassQoI(2), line, images, multiply_activation=True)
    fast = input_influence(cnn, ClassQoI(2), line, images, multiply_activation=True, autocast=torch.bfloat16)
    with torch.no_grad():
        change = (cnn(images)[:, 2] - cnn(torch.zeros_like(images))[:, 2]).double()
        with torch.autocast("cpu", torch.bfloat16):
            change_bf16 = (cnn(images)[:, 2] - cnn(torch.zeros_like(images))[:, 2]).double()
    total = fast.values.flatten(1).sum(1)
    # Δq is a small difference of two logits: float32 rounding moves the gap by ~1e-4
    # here, a bfloat16 Δq by ~0.3
    torch.testing.assert_close(fast.completeness, (total - change).abs() / change.abs(), rtol=0, atol=1e-3)
    assert float(((total - change_bf16).abs() / change_bf16.abs() - fast.completeness).abs().max()) > 1e-2
    assert float(fast.completeness.median()) > float(exact.completeness.median())


def test_autocast_keeps_neuron_qois_and_pooled_queries(cnn: nn.Module, images: Tensor) -> None:
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    for qoi in (NeuronQoI("layer2.conv1", 3), ClassQoI(0)):
        exact = input_influence(cnn, qoi, ClassDoI((images, y), 1, each=LineDoI(steps=4)), multiply_activation=True)
        fast = input_influence(cnn, qoi, ClassDoI((images, y), 1, each=LineDoI(steps=4)), multiply_activation=True, autocast=torch.bfloat16)
        assert _relative(fast.values, exact.values) < 0.05


@pytest.mark.parametrize("value, kind", [(torch.float16, ValueError), (torch.float32, ValueError), ("bfloat16", ValueError)])
def test_autocast_argument(cnn: nn.Module, images: Tensor, value: Any, kind: type[Exception]) -> None:
    with pytest.raises(kind, match="autocast"):
        input_influence(cnn, 0, PointDoI(), images, autocast=value)


@pytest.mark.parametrize("choice", [True, False])
def test_tf32_is_set_for_the_query_and_restored(choice: bool, rng: torch.Generator) -> None:
    """``tf32=`` sets both TF32 switches during the query (a QoI reads them) and restores
    the user's settings after, also when the query fails."""
    seen: list[tuple[bool, bool]] = []

    def reading(out: Tensor) -> Tensor:
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return out[:, 0]

    def failing(out: Tensor) -> Tensor:
        raise KeyError("boom")

    model = mlp(6, 8, 3, seed=0)
    x = torch.randn(2, 6, generator=rng)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = (not choice, not choice)
        result = input_influence(model, reading, PointDoI(), x, tf32=choice)
        assert seen and all(s == (choice, choice) for s in seen)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (not choice, not choice)
        assert result.query["tf32"] is None  # on the CPU it has no effect
        with pytest.raises(KeyError):
            input_influence(model, failing, PointDoI(), x, tf32=choice)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (not choice, not choice)
        seen.clear()
        input_influence(model, reading, PointDoI(), x)  # None: the settings as they are
        assert all(s == (not choice, not choice) for s in seen)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_tf32_argument(rng: torch.Generator) -> None:
    with pytest.raises(TypeError, match="tf32"):
        input_influence(mlp(6, 8, 3), 0, PointDoI(), torch.randn(2, 6, generator=rng), tf32="yes")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's inductor imports it
def test_compiled_g_gives_the_same_result(rng: torch.Generator) -> None:
    """``compile=True`` runs g through torch.compile: the same numbers (float64), and it is
    recorded; a hook slice is refused with an error naming ``compile``."""
    model = mlp(6, 8, 3, seed=1).double()
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    plain = input_influence(model, ClassQoI(1), LineDoI(steps=4), x, multiply_activation=True, batch_size=8)
    compiled = input_influence(model, ClassQoI(1), LineDoI(steps=4), x, multiply_activation=True, batch_size=8, compile=True)
    torch.testing.assert_close(compiled.values, plain.values, rtol=1e-12, atol=1e-12)
    assert compiled.query["compile"] is True and plain.query["compile"] is False
    with pytest.raises(ValueError, match="compile"):
        internal_influence(Slice(model, "1", realisation="hook"), 0, PointDoI(), x, compile=True)
    with pytest.raises(TypeError, match="compile"):
        input_influence(model, 0, PointDoI(), x, compile="yes")
