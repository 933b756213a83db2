"""Quantities of interest: class scores and comparisons, structured outputs and
selectors, linear combinations, coercion, neurons of recorded activations, and the
anchor's predicted class."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from conftest import tolerance
from doi import LineDoI, PointDoI
from influence import input_influence, internal_influence
from models import mlp
from qoi import ClassQoI, ComparativeQoI, FunctionQoI, LinearQoI, MaxClassQoI, NeuronQoI, QoIContext, as_qoi
from slices import Slice

F64 = torch.float64


# ---------------------------------------------------------------- class scores


def test_class_and_comparative_values(rng: torch.Generator) -> None:
    """``ClassQoI(c)(out) = out[:, c]``; ``ComparativeQoI(a, b)(out) = out[:, a] − out[:, b]``."""
    out = torch.randn(5, 4, generator=rng, dtype=F64)
    for c in range(4):
        assert torch.equal(ClassQoI(c)(out), out[:, c])
    assert torch.equal(ComparativeQoI(3, 1)(out), out[:, 3] - out[:, 1])


def test_trailing_dims_are_summed(rng: torch.Generator) -> None:
    """A segmentation-like output ``(B, C, H, W)``: ``f_c = Σ_{h,w} out[:, c, h, w]``."""
    out = torch.randn(2, 3, 4, 5, generator=rng, dtype=F64)
    for c in range(3):
        torch.testing.assert_close(ClassQoI(c)(out), out[:, c].sum((1, 2)), **tolerance(F64))
    torch.testing.assert_close(ComparativeQoI(0, 2)(out), out[:, 0].sum((1, 2)) - out[:, 2].sum((1, 2)), **tolerance(F64))
    torch.testing.assert_close(MaxClassQoI()(out), out.sum((2, 3)).max(1).values, **tolerance(F64))


def test_class_index_checks(rng: torch.Generator) -> None:
    out = torch.randn(2, 3, generator=rng, dtype=F64)
    with pytest.raises(ValueError, match="class 3 is out of range for an output with 3 classes"):
        ClassQoI(3)(out)
    with pytest.raises(ValueError, match=r"b 5 is out of range"):
        ComparativeQoI(0, 5)(out)
    with pytest.raises(ValueError, match=">= 0"):
        ClassQoI(-1)
    with pytest.raises(TypeError, match="int class index"):
        ClassQoI(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(batch, classes, ...\); got \(2,\)"):
        ClassQoI(0)(out[:, 0])


# ---------------------------------------------------------------- structured outputs


def test_output_selector_int_on_tuple(rng: torch.Generator) -> None:
    aux, logits = torch.randn(3, 2, generator=rng), torch.randn(3, 4, generator=rng)
    assert torch.equal(ClassQoI(2, output=1)((aux, logits)), logits[:, 2])
    assert torch.equal(ComparativeQoI(0, 1, output=0)((aux, logits)), aux[:, 0] - aux[:, 1])


def test_output_selector_str_on_dict(rng: torch.Generator) -> None:
    out = {"logits": torch.randn(3, 4, generator=rng), "aux": torch.randn(3, 2, generator=rng)}
    assert torch.equal(ClassQoI(3, output="logits")(out), out["logits"][:, 3])
    assert torch.equal(MaxClassQoI(output="aux")(out), out["aux"].max(1).values)


def test_output_selector_callable(rng: torch.Generator) -> None:
    out = {"heads": [torch.randn(3, 4, generator=rng), torch.randn(3, 5, generator=rng)]}
    assert torch.equal(ClassQoI(4, output=lambda o: o["heads"][1])(out), out["heads"][1][:, 4])


def test_structured_output_without_selector_is_refused(rng: torch.Generator) -> None:
    out = (torch.randn(3, 2, generator=rng), torch.randn(3, 4, generator=rng))
    for q in (ClassQoI(0), ComparativeQoI(0, 1), MaxClassQoI()):
        with pytest.raises(TypeError, match=r"returns a tuple; pass output=<index, key or callable>"):
            q(out)
    with pytest.raises(TypeError, match="returns a dict; pass output="):
        ClassQoI(0)({"logits": out[1]})


def test_bad_selectors(rng: torch.Generator) -> None:
    out = (torch.randn(3, 2, generator=rng), torch.randn(3, 4, generator=rng))
    with pytest.raises(ValueError, match="output=5 does not select anything from a tuple"):
        ClassQoI(0, output=5)(out)
    with pytest.raises(ValueError, match="output='logits' does not select anything from a tuple"):
        ClassQoI(0, output="logits")(out)
    with pytest.raises(TypeError, match="output must be None, an int index, a str key or a callable"):
        ClassQoI(0, output=1.5)


def test_function_qoi_sees_the_whole_structured_output(rng: torch.Generator) -> None:
    """A plain callable gets the output as the model returns it (no selector needed)."""
    out = (torch.randn(3, 2, generator=rng), torch.randn(3, 4, generator=rng))
    q = as_qoi(lambda o: o[0][:, 1] * o[1][:, 0])
    assert isinstance(q, FunctionQoI)
    assert torch.equal(q(out), out[0][:, 1] * out[1][:, 0])
    assert torch.equal(FunctionQoI(lambda t: t.sum(1), output=1)(out), out[1].sum(1))


def test_qoi_must_give_one_scalar_per_sample(rng: torch.Generator) -> None:
    out = torch.randn(3, 4, generator=rng)
    with pytest.raises(ValueError, match=r"one scalar per sample, shape \(3,\); got \(3, 4\)"):
        FunctionQoI(lambda o: o)(out)
    with pytest.raises(ValueError, match=r"got \(\)"):
        FunctionQoI(lambda o: o.sum())(out)


# ---------------------------------------------------------------- linear combinations and coercion


def test_linear_qoi_flattening_values_and_repr(rng: torch.Generator) -> None:
    """``2·(f_0 − f_1) − (−f_3)`` flattens into one LinearQoI of three terms
    ``2 f_0 − 2 f_1 + f_3`` (no nested LinearQoI), with the matching value and repr."""
    out = torch.randn(4, 5, generator=rng, dtype=F64)
    q = 2 * (ClassQoI(0) - ClassQoI(1)) - (-ClassQoI(3))
    assert isinstance(q, LinearQoI)
    assert [c for c, _ in q.terms] == [2.0, -2.0, 1.0]
    assert not any(isinstance(t, LinearQoI) for _, t in q.terms)
    assert repr(q) == "2*ClassQoI(0) + -2*ClassQoI(1) + 1*ClassQoI(3)"
    torch.testing.assert_close(q(out), 2 * out[:, 0] - 2 * out[:, 1] + out[:, 3], **tolerance(F64))


def test_linear_qoi_coerces_ints_and_callables(rng: torch.Generator) -> None:
    out = torch.randn(4, 5, generator=rng, dtype=F64)
    q = ClassQoI(0) + 2 - (lambda o: o[:, 4] ** 2)
    assert [type(t).__name__ for _, t in q.terms] == ["ClassQoI", "ClassQoI", "FunctionQoI"]
    torch.testing.assert_close(q(out), out[:, 0] + out[:, 2] - out[:, 4] ** 2, **tolerance(F64))
    assert (ClassQoI(0) * 0.5).terms[0][0] == 0.5
    with pytest.raises(TypeError):
        ClassQoI(0) * "a"  # type: ignore[operator]
    with pytest.raises(TypeError):
        ClassQoI(0) * True  # type: ignore[operator]


def test_linear_qoi_collects_layers_and_anchor_needs() -> None:
    q = NeuronQoI("a", 0) + 2 * NeuronQoI("b", 1) - NeuronQoI("a", 2) + MaxClassQoI()
    assert q.layers == ("a", "b")
    assert q.needs_anchor_output
    assert not (ClassQoI(0) - ClassQoI(1)).needs_anchor_output


def test_as_qoi() -> None:
    """``as_qoi``: a QoI is itself, an int ``c`` is ``ClassQoI(c)``, a callable is a
    FunctionQoI; anything else is a TypeError listing the accepted forms."""
    q = ComparativeQoI(0, 1)
    assert as_qoi(q) is q
    c = as_qoi(3)
    assert isinstance(c, ClassQoI) and c.c == 3
    assert isinstance(as_qoi(lambda o: o[:, 0]), FunctionQoI)
    for bad in ("logits", 1.0, None, True):
        with pytest.raises(TypeError, match="QuantityOfInterest, an int class index or a callable output -> \\(batch,\\)"):
            as_qoi(bad)


# ---------------------------------------------------------------- NeuronQoI


def test_neuron_qoi_channel_unit_and_1d(rng: torch.Generator) -> None:
    """On ``a`` of shape ``(B, C, H, W)``: an int ``c`` is the channel ``Σ_{h,w} a[:, c]``,
    a tuple ``(c, i, j)`` the unit ``a[:, c, i, j]``; on ``(B, F)`` an int is ``a[:, i]``."""
    conv = torch.randn(3, 4, 5, 6, generator=rng, dtype=F64)
    fc = torch.randn(3, 7, generator=rng, dtype=F64)
    ctx = QoIContext(activations={"conv": conv, "fc": fc})
    torch.testing.assert_close(NeuronQoI("conv", 2)(None, ctx), conv[:, 2].sum((1, 2)), **tolerance(F64))
    assert torch.equal(NeuronQoI("conv", (2, 4, 5))(None, ctx), conv[:, 2, 4, 5])
    assert torch.equal(NeuronQoI("conv", [1, 0, 3])(None, ctx), conv[:, 1, 0, 3])
    assert torch.equal(NeuronQoI("fc", 6)(None, ctx), fc[:, 6])
    assert torch.equal(NeuronQoI("fc", (6,))(None, ctx), fc[:, 6])
    assert NeuronQoI("conv", 0).layers == ("conv",)


def test_neuron_qoi_refusals(rng: torch.Generator) -> None:
    ctx = QoIContext(activations={"conv": torch.randn(3, 4, 5, 6, generator=rng), "fc": torch.randn(3, 7, generator=rng)})
    with pytest.raises(ValueError, match=r"index \(1, 2\) does not fit activations of shape \(4, 5, 6\)"):
        NeuronQoI("conv", (1, 2))(None, ctx)
    with pytest.raises(ValueError, match=r"out of range in dim 1 \(size 5\)"):
        NeuronQoI("conv", (1, 5, 0))(None, ctx)
    with pytest.raises(ValueError, match=r"out of range in dim 0 \(size 7\)"):
        NeuronQoI("fc", 7)(None, ctx)
    with pytest.raises(ValueError, match="no activation recorded for layer 'other'"):
        NeuronQoI("other", 0)(None, ctx)
    with pytest.raises(ValueError, match="non-negative"):
        NeuronQoI("fc", -1)
    with pytest.raises(TypeError, match="int or a tuple of ints"):
        NeuronQoI("fc", 1.0)  # type: ignore[arg-type]


def test_neuron_qoi_in_a_query(rng: torch.Generator) -> None:
    """``NeuronQoI("2", j)`` at the slice ``"1"`` of an MLP: the gradient of unit ``j``
    of ``W x + b`` w.r.t. the activations is row ``j`` of ``W``."""
    model = mlp().double()
    x = torch.randn(3, 6, generator=rng, dtype=F64)
    res = internal_influence(Slice(model, "1"), NeuronQoI("2", 5), PointDoI(), x)
    torch.testing.assert_close(res.values, model[2].weight[5].detach().expand(3, -1), **tolerance(F64))


# ---------------------------------------------------------------- MaxClassQoI


def test_max_class_uses_the_anchor_argmax(rng: torch.Generator) -> None:
    """``MaxClassQoI(out; ctx) = out[:, argmax(ctx.anchor_output)]``, not the row's own
    argmax; without an anchor output the row's own argmax."""
    out = torch.tensor([[5.0, 1.0, 0.0], [0.0, 1.0, 9.0]])
    anchor = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert torch.equal(MaxClassQoI()(out, QoIContext(anchor_output=anchor)), torch.tensor([1.0, 0.0]))
    assert torch.equal(MaxClassQoI()(out), torch.tensor([5.0, 9.0]))
    assert MaxClassQoI.needs_anchor_output


def _two_class_linear() -> nn.Linear:
    """``f_0 = x_1 + x_2``, ``f_1 = 1 − x_1 − x_2``: class 1 wins at the zero baseline,
    class 0 at ``x = (2, 2)``; along the line the argmax switches at ``α = ¼``."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
        model.bias.copy_(torch.tensor([0.0, 1.0]))
    return model


def test_max_class_explains_the_anchor_class_along_the_line() -> None:
    """Integrated gradients of MaxClassQoI from a baseline where another class wins
    equal those of the anchor's class: ``IG = (x − b)·∇f_0 = (2, 2)``, summing to
    ``f_0(x) − f_0(b) = 4`` (a sample-wise argmax would mix in ``∇f_1`` for α < ¼)."""
    model = _two_class_linear()
    x = torch.tensor([[2.0, 2.0]], dtype=F64)
    with torch.no_grad():
        assert model(torch.zeros_like(x)).argmax(1).item() == 1 and model(x).argmax(1).item() == 0
    res = input_influence(model, MaxClassQoI(), LineDoI(baseline=0.0, steps=16, rule="midpoint"), x, multiply_activation=True)
    torch.testing.assert_close(res.values, torch.tensor([[2.0, 2.0]], dtype=F64), **tolerance(F64))


def test_max_class_equals_class_of_each_anchor_prediction(rng: torch.Generator) -> None:
    """On an MLP with several anchors predicting different classes, MaxClassQoI's
    attribution at anchor ``i`` equals ClassQoI(argmax f(x_i))'s, batches mixing anchors."""
    model = mlp().double()
    x = torch.randn(8, 6, generator=rng, dtype=F64) * 3
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert predicted.unique().numel() > 1
    doi = LineDoI(baseline=0.0, steps=5)
    res = input_influence(model, MaxClassQoI(), doi, x, batch_size=7)
    per_class = input_influence(model, [ClassQoI(c) for c in range(4)], doi, x, batch_size=7)
    for i in range(8):
        torch.testing.assert_close(res.values[i], per_class[int(predicted[i])].values[i], **tolerance(F64))


# ---------------------------------------------------------------- dict outputs in a query


class DictNet(nn.Module):
    """Returns ``{"logits": fc2(h), "aux": Σ h}`` with ``h = act(fc1(x))``."""

    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.Softplus()
        self.fc2 = nn.Linear(8, 3)
        self.branch = branch

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.act(self.fc1(x))
        if self.branch and h.sum() < -1e30:  # untraceable: forces hooks
            h = -h
        return {"logits": self.fc2(h), "aux": h.sum(1, keepdim=True)}


@pytest.mark.parametrize("branch", [False, True], ids=["graph", "hook"])
def test_internal_influence_on_a_dict_output(rng: torch.Generator, branch: bool) -> None:
    """``ClassQoI(c, output="logits")`` at the slice ``act``: the influence is
    ``∂ logits_c / ∂ act = W2[c]`` at every point; MaxClassQoI picks each anchor's class."""
    model = DictNet(branch).double()
    slc = Slice(model, "act")
    assert slc.realisation == ("hook" if branch else "graph")
    x = torch.randn(4, 6, generator=rng, dtype=F64)
    w2 = model.fc2.weight.detach()
    res = internal_influence(slc, ClassQoI(2, output="logits"), LineDoI(steps=3), x)
    torch.testing.assert_close(res.values, w2[2].expand(4, -1), **tolerance(F64))
    with torch.no_grad():
        predicted = model(x)["logits"].argmax(1)
    res = internal_influence(slc, MaxClassQoI(output="logits"), PointDoI(), x, batch_size=3)
    torch.testing.assert_close(res.values, w2[predicted], **tolerance(F64))
    with pytest.raises(TypeError, match="returns a dict; pass output="):
        internal_influence(slc, ClassQoI(0), PointDoI(), x)
