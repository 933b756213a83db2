"""In-place ops (issue acceptance): "The in-place cases agree with the same model without
in-place ops to 1e-10 in float64, for NeuronQoI (unit and channel), the workflows that
record layers, and cuts before in-place ops. The model comes back unchanged."

Every comparison runs the library on a model with torchvision's in-place ops
(``nn.ReLU(inplace=True)``, ``ReLU6(inplace=True)``, ``out += identity``,
``F.relu(x, inplace=True)``, ``x.relu_()``) and on its twin without them (same weights and
batch-norm statistics, :func:`zoo.twins`): the two compute the same function, so every
influence must agree to the float64 tolerance. Where the plain twin's answer is itself in
question it is checked against a hand computation with ``torch.autograd`` (a forward hook
that keeps the layer's output, then ``autograd.grad``), with Gauss–Legendre nodes from
numpy for lines. Monte Carlo DoIs run with one seed on both twins: the same draws, so
the same numbers.

"Unchanged" (:func:`unchanged`): the ``state_dict`` bitwise equal (parameters and
batch-norm statistics), no hook of any kind left on any module (nor global ones), every
parameter's ``requires_grad`` and ``.grad`` and every module's ``training`` flag as
before. The in-place model starts in a mixed state (train mode, one block in eval, one
parameter frozen) so that restoring is not a no-op; the library evaluates in eval mode,
so its answers are those of the plain twin in eval mode.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import pytest
import torch
import zoo
from conftest import tolerance
from torch import Tensor, nn
from torch.nn.modules import module as module_globals
from torch.testing import assert_close

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import essence_check, explain_neurons, input_influence, internal_influence, top_neurons
from qoi import ClassQoI, ComparativeQoI, NeuronQoI
from slices import Cut, Slice

TOL = tolerance(torch.float64)  # rtol = atol = 1e-10
REALISATIONS = ("sequential", "graph", "hook")

# --- the model comes back unchanged ---------------------------------------------------------

_MODULE_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
)


def _hooks_left(model: nn.Module) -> list[str]:
    found = [f"{name or '<root>'}.{d}" for name, m in model.named_modules() for d in _MODULE_HOOKS if getattr(m, d, None)]
    found += [d for d in _GLOBAL_HOOKS if getattr(module_globals, d, None)]
    return found


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: p.grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


@contextmanager
def unchanged(*models: nn.Module) -> Iterator[None]:
    """Assert that the block gives ``models`` back exactly as it found them (checked
    after the block, also when the block is a ``pytest.raises``)."""
    for m in models:
        assert not _hooks_left(m), "the test must start from a model without hooks"
    before = [_snapshot(m) for m in models]
    yield
    for m, b in zip(models, before):
        after = _snapshot(m)
        assert after["state"].keys() == b["state"].keys()
        for k, v in b["state"].items():
            w = after["state"][k]
            assert w.dtype == v.dtype and torch.equal(w, v), f"state_dict entry {k!r} changed"
        assert after["requires_grad"] == b["requires_grad"]
        assert after["training"] == b["training"]
        assert all(after["grad"][n] is g for n, g in b["grad"].items()), ".grad written into a parameter"
        assert not _hooks_left(m), f"hooks left: {_hooks_left(m)}"


def mixed_state(model: nn.Module, eval_child: str) -> nn.Module:
    """Train mode with one submodule in eval and the first parameter frozen: a state the
    query must restore (it evaluates in eval mode with frozen weights)."""
    model.train()
    model.get_submodule(eval_child).eval()
    next(model.parameters()).requires_grad_(False)
    return model


EVAL_CHILD = {"resnet": "layer1", "mobilenet": "features.2", "densenet": "features.denseblock1"}


def pair(kind: str) -> tuple[nn.Module, nn.Module]:
    """``(in-place model in a mixed state, plain twin in eval mode)``."""
    inplace, plain = zoo.twins(kind)
    return mixed_state(inplace, EVAL_CHILD[kind]), plain


def results(r: Any) -> list[Any]:
    return r if isinstance(r, list) else [r]


def assert_same(ours: Any, theirs: Any) -> None:
    """Values and standard errors of one result (or of lists of results) agree to 1e-10."""
    ours, theirs = results(ours), results(theirs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_close(a.values, b.values, **TOL)
        assert_close(a.stderr, b.stderr, **TOL)


# --- hand computations (on a model without in-place ops) -------------------------------------


def _pick(act: Tensor, index: int | tuple[int, ...]) -> Tensor:
    """``NeuronQoI``'s definition, written out: a unit, or a channel summed over space."""
    if isinstance(index, int):
        return act[:, index].flatten(1).sum(1)
    return act[(slice(None), *index)]


def hand_neuron_gradient(model: nn.Module, layer: str, index: int | tuple[int, ...], x: Tensor) -> Tensor:
    """``∂ neuron / ∂x`` by autograd through a forward hook that keeps the layer's output."""
    x = x.detach().clone().requires_grad_(True)
    kept: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(_pick(kept[0], index).sum(), x)
    return grad


def hand_layer_gradient(model: nn.Module, layer: str, q: Any, x: Tensor) -> Tensor:
    """``∂q(f(x)) / ∂h(x)`` with ``h`` the output of ``layer`` (all of its uses)."""
    kept: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        out = model(x.detach())
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(q(out).sum(), kept[0])
    return grad


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """Nodes and weights on ``[0, 1]`` from numpy (not the library's quadrature)."""
    t, w = np.polynomial.legendre.leggauss(steps)
    return [float(a) for a in (t + 1) / 2], [float(b) for b in w / 2]


def hand_neuron_ig(model: nn.Module, layer: str, index: Any, x: Tensor, b: Tensor, steps: int) -> Tensor:
    """``(x − b) ⊙ Σ_k w_k ∇ neuron(b + α_k (x − b))``."""
    alpha, weight = gauss_legendre(steps)
    total = sum(w * hand_neuron_gradient(model, layer, index, b + a * (x - b)) for a, w in zip(alpha, weight))
    return (x - b) * total


# --- 1. the minimal case -------------------------------------------------------------------


def test_neuron_before_an_inplace_relu_is_the_weight_row() -> None:
    """``Sequential(linear1, ReLU(inplace=True), Linear)``, ``NeuronQoI("linear1", (i,))`` at
    ``x = [0, 5, 4]``: the unit is ``w_i·x + b_i`` (negative for some ``i``: the ReLU
    zeroes it in place), so its gradient is row ``i`` of the weight, whatever the ReLU
    does afterwards (it once came out ``[0, 0, 0]``)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(linear1=nn.Linear(3, 4), relu=nn.ReLU(inplace=True), linear2=nn.Linear(4, 2))
    ).double().eval()
    x = torch.tensor([[0.0, 5.0, 4.0]], dtype=torch.float64)
    with torch.no_grad():
        pre = model.linear1(x)[0]
    assert torch.any(pre < 0) and torch.any(pre > 0), "the ReLU must zero some units and keep others"
    w = model.linear1.weight.detach()
    with unchanged(model):
        for i in range(4):
            grad = input_influence(model, NeuronQoI("linear1", (i,)), PointDoI(), x).values
            assert_close(grad[0], w[i], **TOL)
            ig = input_influence(model, NeuronQoI("linear1", (i,)), LineDoI(0.0, 3), x, multiply_activation=True).values
            assert_close(ig[0], x[0] * w[i], **TOL)  # a linear unit: IG = (x − 0) ⊙ w_i


# --- 2. NeuronQoI at layers whose output is written in place later ------------------------

# Each is a batch norm followed by an in-place op: ReLU(inplace) (shared by the block in
# ResNet), ``out += identity`` (bn3), ReLU6(inplace), a dense layer's relu1/relu2, the
# final ``F.relu(features, inplace=True)`` (norm5).
NEURON_LAYERS = {
    "resnet": ["bn1", "layer1.0.bn1", "layer1.0.bn3", "layer1.1.bn3", "layer2.0.bn2", "layer2.0"],
    "mobilenet": ["features.0.1", "features.1.conv.0.1", "features.3.conv.0.1", "features.3.conv.1.1"],
    "densenet": ["features.norm0", "features.denseblock1.denselayer2.norm1", "features.denseblock2.denselayer1.norm2", "features.transition1.norm", "features.norm5"],
}
UNIT = (1, 1, 2)


def neuron_qois(kind: str) -> list[NeuronQoI]:
    return [NeuronQoI(layer, index) for layer in NEURON_LAYERS[kind] for index in (0, UNIT)]


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_neuron_qoi_point(kind: str, rng: torch.Generator) -> None:
    """Gradient of a unit and of a channel: the in-place model, its plain twin and autograd
    by hand agree."""
    model, plain = pair(kind)
    x = zoo.images(3, rng)
    qois = neuron_qois(kind)
    with unchanged(model):
        ours = input_influence(model, qois, PointDoI(), x)
    assert_same(ours, input_influence(plain, qois, PointDoI(), x))
    for q, r in zip(qois, ours):
        hand = hand_neuron_gradient(plain, q.layer, q.index, x)
        assert hand.abs().max() > 0, f"a vacuous comparison at {q!r}"
        assert_close(r.values, hand, **TOL)


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_neuron_qoi_line(kind: str, rng: torch.Generator) -> None:
    """Integrated gradients of the neurons (input space, per-point baselines): twins and a
    hand Gauss–Legendre sum agree."""
    model, plain = pair(kind)
    x = zoo.images(2, rng)
    b = 0.5 * zoo.images(2, rng)
    steps = 4
    qois = neuron_qois(kind)
    doi = LineDoI(b, steps=steps)
    with unchanged(model):
        ours = input_influence(model, qois, doi, x, multiply_activation=True)
    assert_same(ours, input_influence(plain, qois, doi, x, multiply_activation=True))
    for q, r in list(zip(qois, ours))[::3]:  # a third of them by hand (the twins agree on all)
        assert_close(r.values, hand_neuron_ig(plain, q.layer, q.index, x, b, steps), **TOL)


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
@pytest.mark.parametrize("sampler", ["sobol", "random"])
def test_neuron_qoi_noise(kind: str, sampler: str, rng: torch.Generator) -> None:
    """SmoothGrad of the neurons with a fixed seed: the same draws on both twins."""
    model, plain = pair(kind)
    x = zoo.images(2, rng)
    qois = neuron_qois(kind)
    doi = NoiseDoI(0.3, samples=8, sampler=sampler)
    with unchanged(model):
        ours = input_influence(model, qois, doi, x, seed=11)
    theirs = input_influence(plain, qois, doi, x, seed=11)
    assert_same(ours, theirs)
    assert all(bool(r.stderr.abs().max() > 0) for r in theirs), "the draws must differ"


# --- 3. a module that runs more than once ----------------------------------------------------


def test_shared_relu_has_no_single_output(rng: torch.Generator) -> None:
    """torchvision's Bottleneck uses one ``self.relu`` three times per forward pass: a
    NeuronQoI on it, and a cut at it, are refused with a ValueError that says so; the
    model is unchanged afterwards and the next query is right."""
    model, plain = pair("resnet")
    x = zoo.images(2, rng)
    with unchanged(model):
        with pytest.raises(ValueError, match=r"layer 'layer1\.0\.relu' runs 3 times in one forward pass"):
            input_influence(model, NeuronQoI("layer1.0.relu", 0), PointDoI(), x)
    with unchanged(model):
        with pytest.raises(ValueError, match=r"'layer1\.0\.relu' runs more than once"):
            internal_influence(Slice(model, "layer1.0.relu"), ClassQoI(0), LineDoI(0.0, 3), x)
    with unchanged(model):
        with pytest.raises(ValueError, match="runs 3 times"):  # also among other QoIs
            input_influence(model, [ClassQoI(1), NeuronQoI("layer1.0.bn1", 0), NeuronQoI("layer2.0.relu", (0, 0, 0))], PointDoI(), x)
    qois = [NeuronQoI("layer1.0.bn1", 0), NeuronQoI("relu", UNIT)]  # the stem's relu runs once
    with unchanged(model):
        ours = input_influence(model, qois, PointDoI(), x)
    assert_same(ours, input_influence(plain, qois, PointDoI(), x))


# --- 4. cuts right before in-place ops -------------------------------------------------------

# (cut, realisations that must apply, a NeuronQoI after the cut); sequential cuts are
# taken on zoo.as_sequential(model).
CUTS = {
    "resnet": [
        ("bn1", ("sequential", "graph", "hook"), NeuronQoI("layer1.0.bn3", UNIT)),
        ("layer1.0.bn1", ("hook",), NeuronQoI("layer1.1.bn1", 2)),
        ("layer1.0.bn3", ("hook",), NeuronQoI("layer2.0.bn1", UNIT)),
        ("layer1.1.conv3", ("hook",), NeuronQoI("layer2.0.bn3", 1)),  # bn3 (affine), then +=
    ],
    "mobilenet": [
        ("features.0.1", ("graph", "hook"), NeuronQoI("features.1.conv.0.1", UNIT)),
        ("features.2.conv.1.0", ("graph", "hook"), NeuronQoI("features.3.conv.0.1", 2)),  # bn, then ReLU6_
        ("features.2.conv.1.1", ("graph", "hook"), NeuronQoI("features.3.conv.1.1", UNIT)),
        ("features.3.conv.0.1", ("hook",), NeuronQoI("features.4.1", 1)),
    ],
    "densenet": [
        ("features.norm0", ("sequential", "graph", "hook"), NeuronQoI("features.denseblock1.denselayer1.norm1", UNIT)),
        ("features.denseblock1.denselayer2.norm1", ("hook",), NeuronQoI("features.transition1.norm", 3)),
        ("features.transition1.norm", ("graph", "hook"), NeuronQoI("features.denseblock2.denselayer2.norm2", UNIT)),
        ("features.norm5", ("sequential", "graph", "hook"), None),
    ],
}


def _slices(model: nn.Module, sequential: nn.Module, cut: str, expected: Sequence[str]) -> dict[str, Slice]:
    """Every realisation that applies at ``cut`` (the sequential one on the Sequential
    form); the expected ones must be among them."""
    found = {}
    for realisation in REALISATIONS:
        try:
            found[realisation] = Slice(sequential if realisation == "sequential" else model, cut, realisation=realisation)
        except ValueError:
            continue
    assert set(expected) <= set(found), (cut, sorted(found))
    return found


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_cuts_before_inplace_ops(kind: str, rng: torch.Generator) -> None:
    """At a batch norm (or conv) whose output an in-place op overwrites next: every
    realisation on the in-place model equals the plain twin (hooks), for point, input- and
    slice-space lines, input- and slice-space noise, class and neuron QoIs, with and without
    the affine prefix; ``h`` is the plain twin's activation."""
    model, plain = pair(kind)
    in_eval, _ = zoo.twins(kind)  # Slice.h called directly runs the model as it is
    x = zoo.images(2, rng)
    b = 0.4 * zoo.images(2, rng)
    sequential = zoo.as_sequential(model)
    for cut, expected, neuron in CUTS[kind]:
        theirs_slice = Slice(plain, cut, realisation="hook")
        with torch.no_grad():
            hx, hb = theirs_slice.h(x), theirs_slice.h(b)
            for realisation, slc in _slices(in_eval, zoo.as_sequential(in_eval), cut, expected).items():
                assert_close(slc.h(x), hx, **TOL)
                if slc.is_split:
                    assert_close(slc.g(hx.clone()), plain(x), **TOL)
        qois = [ClassQoI(1), ComparativeQoI(0, 3)] + ([neuron] if neuron is not None else [])
        dois = [
            (PointDoI(), True),
            (LineDoI(b, steps=4), False),
            (LineDoI(hb, steps=4, space="slice"), True),
            (NoiseDoI(0.2, samples=4, sampler="random"), False),
            (NoiseDoI(0.2, samples=4, space="slice"), True),
        ]
        for doi, multiply in dois:
            theirs = internal_influence(theirs_slice, qois, doi, x, multiply_activation=multiply, seed=5)
            for realisation, slc in _slices(model, sequential, cut, expected).items():
                for prefix in (True, False):
                    with unchanged(model):
                        ours = internal_influence(slc, qois, doi, x, multiply_activation=multiply, seed=5, affine_prefix=prefix)
                    assert_same(ours, theirs)


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_cut_gradient_by_hand(kind: str, rng: torch.Generator) -> None:
    """The plain twin's gradient at each cut is autograd's ``∂q/∂h`` (so the twins do not
    agree on a wrong answer)."""
    _, plain = pair(kind)
    x = zoo.images(2, rng)
    for cut, _, _ in CUTS[kind]:
        ours = internal_influence(Slice(plain, cut), ComparativeQoI(0, 3), PointDoI(), x).values
        hand = hand_layer_gradient(plain, cut, lambda out: out[:, 0] - out[:, 3], x)
        assert hand.abs().max() > 0
        assert_close(ours, hand, **TOL)


# --- 5. the workflows that record layers -----------------------------------------------------

WORKFLOW_LAYER = {"resnet": "layer1.0.bn3", "mobilenet": "features.2.conv.1.1", "densenet": "features.denseblock1.denselayer1.norm1"}


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_top_neurons(kind: str, rng: torch.Generator) -> None:
    """``top_neurons`` at a layer written in place, all three rankings, by channel and by
    unit: the same entries and values as on the plain twin; the influence ranking is the
    class-mean of autograd's gradient at the layer."""
    model, plain = pair(kind)
    data = zoo.labelled(3, rng)
    layer = WORKFLOW_LAYER[kind]
    for ranking in ("influence", "gradient_x_activation", "contrast"):
        for by in ("channel", "unit"):
            with unchanged(model):
                ours = top_neurons(Slice(model, layer), data, 1, 2, k=4, by=by, ranking=ranking, steps=4)
            theirs = top_neurons(Slice(plain, layer), data, 1, 2, k=4, by=by, ranking=ranking, steps=4)
            assert ours.indices == theirs.indices
            assert_same(ours.result, theirs.result)
            assert_close(torch.tensor([e.value for e in ours.entries]), torch.tensor([e.value for e in theirs.entries]), **TOL)
    x1 = data["x"][data["y"] == 1]
    hand = hand_layer_gradient(plain, layer, lambda out: out[:, 1] - out[:, 2], x1).mean(0)
    assert_close(top_neurons(Slice(model, layer), data, 1, 2, k=1).result.values, hand, **TOL)


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_explain_neurons(kind: str, rng: torch.Generator) -> None:
    """``explain_neurons`` records the layer (NeuronQoIs and its activations): pooled and
    per-image attributions, the chosen examples and their activations agree with the plain
    twin, for channels and units; one per-image map is checked by hand."""
    model, plain = pair(kind)
    data = zoo.labelled(2, rng)
    layer = WORKFLOW_LAYER[kind]
    units: list[Any] = [0, 3, UNIT]
    each = LineDoI(0.0, steps=4)
    with unchanged(model):
        ours = explain_neurons(model, layer, units, data, over=[1, 2], examples=2, each=each)
    theirs = explain_neurons(plain, layer, units, data, over=[1, 2], examples=2, each=each)
    for a, b in zip(ours, theirs):
        assert a.unit == b.unit and torch.equal(a.examples, b.examples)
        for field in ("pooled", "pooled_stderr", "activations", "images", "maps"):
            assert_close(getattr(a, field), getattr(b, field), **TOL)
    view = ours[2]
    x = view.images[:1]
    assert_close(view.maps[:1], hand_neuron_ig(plain, layer, UNIT, x, torch.zeros_like(x), 4), **TOL)
    with torch.no_grad():
        kept: list[Tensor] = []
        handle = plain.get_submodule(layer).register_forward_hook(lambda m, a, out: kept.append(out))
        plain(view.images)
        handle.remove()
    assert_close(view.activations, _pick(kept[0], UNIT), **TOL)


@pytest.mark.parametrize("kind", list(zoo.FACTORIES))
def test_essence_check(kind: str, rng: torch.Generator) -> None:
    """``essence_check`` at a layer written in place (its ablation substitutes the layer's
    output): the same scores and AUCs as on the plain twin."""
    model, plain = pair(kind)
    data = zoo.labelled(3, rng)
    layer = WORKFLOW_LAYER[kind]
    options: dict[str, Any] = {"ks": (1, 2), "draws": 8, "steps": 4, "by": "channel", "rankings": ["contrast", "influence"]}
    with unchanged(model):
        ours = essence_check(Slice(model, layer), data, 1, 2, **options)
    theirs = essence_check(Slice(plain, layer), data, 1, 2, **options)
    assert ours.full_auc == theirs.full_auc
    assert [(r.ranking, r.k, r.auc, r.random_median, r.units) for r in ours.rows] == [
        (r.ranking, r.k, r.auc, r.random_median, r.units) for r in theirs.rows
    ]
    for name in theirs.scores:
        assert_close(ours.scores[name], theirs.scores[name], **TOL)


# --- 6. models that write into their input ---------------------------------------------------


class ReluFirst(nn.Module):
    """A block whose forward starts with ``x.relu_()`` (or ``x = x.relu()``)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.write_in_place = inplace  # not named "inplace": nothing static reveals the write
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        if self.write_in_place:
            x.relu_()
        else:
            x = x.relu()
        return self.fc(x)


class WritesIntoInput(nn.Module):
    """A model whose forward starts with ``x.relu_()``: ``fc2(tanh(fc(relu(x))))``."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.write_in_place = inplace
        self.fc = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.write_in_place:
            x.relu_()
        else:
            x = x.relu()
        return self.fc2(torch.tanh(self.fc(x)))


def relu_first_sequential(inplace: bool) -> nn.Module:
    """``nn.ReLU(inplace=True)`` as the first layer of a Sequential."""
    torch.manual_seed(0)
    layers = OrderedDict(act=nn.ReLU(inplace=inplace), fc1=nn.Linear(4, 4), tanh=nn.Tanh(), fc2=nn.Linear(4, 3))
    return nn.Sequential(layers).double().eval()


def relu_first_block(inplace: bool) -> nn.Module:
    """A ``x.relu_()`` block after a linear layer ``fc0`` (cut before it at ``fc0``)."""
    torch.manual_seed(0)
    layers = OrderedDict(fc0=nn.Linear(4, 4), block=ReluFirst(inplace), tanh=nn.Tanh(), fc2=nn.Linear(4, 3))
    return nn.Sequential(layers).double().eval()


class ReluFirstNet(nn.Module):
    """The same as :func:`relu_first_block`, not a Sequential (fx splits it)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc0 = nn.Linear(4, 4)
        self.block = ReluFirst(inplace)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.block(self.fc0(x))))


def input_writers() -> dict[str, Any]:
    return {
        "relu_first_sequential": relu_first_sequential,
        "relu_first_block": relu_first_block,
        "relu_first_net": lambda inplace: ReluFirstNet(inplace).double().eval(),
        "relu_first_model": lambda inplace: _seeded(WritesIntoInput, inplace),
    }


def _seeded(cls: Any, inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return cls(inplace).double().eval()


def _writer_dois(x: Tensor, y: Tensor) -> list[tuple[Any, bool, bool]]:
    """(doi, multiply, takes inputs)."""
    return [
        (PointDoI(), True, True),
        (LineDoI(0.3, steps=4), True, True),
        (NoiseDoI(0.4, samples=8), False, True),
        (ClassDoI((x, y), 1, each=LineDoI(0.2, steps=4)), True, False),
        (DatasetDoI(x, each=PointDoI()), False, False),
        (DatasetDoI((x, y), each=NoiseDoI(0.4, samples=4, sampler="random")), False, False),
    ]


def _run_on_copies(slc: Slice, doi_of: Any, x: Tensor, y: Tensor, i: int, multiply: bool, takes_inputs: bool) -> tuple[Any, bool]:
    """Run the ``i``-th DoI on fresh copies of the data; also say whether they came back
    unchanged."""
    xc, yc = x.clone(), y.clone()
    doi, _, _ = doi_of(xc, yc)[i]
    result = internal_influence(slc, ClassQoI(1), doi, xc if takes_inputs else None, multiply_activation=multiply, seed=3)
    return result, torch.equal(xc, x)


@pytest.mark.parametrize("name", ["relu_first_sequential", "relu_first_model"])
def test_model_writing_into_its_input_at_the_input_slice(name: str, rng: torch.Generator) -> None:
    """A model whose first op writes into its input: input influence under every DoI
    equals the plain model's, and the caller's inputs and data are left as they were."""
    make = input_writers()[name]
    model, plain = make(True), make(False)
    x = torch.randn(9, 4, generator=rng, dtype=torch.float64)
    y = torch.arange(9) % 3
    assert torch.any(x < 0)
    for i, (_, multiply, takes_inputs) in enumerate(_writer_dois(x, y)):
        with unchanged(model):
            ours, kept = _run_on_copies(Slice(model, None), _writer_dois, x, y, i, multiply, takes_inputs)
        theirs, _ = _run_on_copies(Slice(plain, None), _writer_dois, x, y, i, multiply, takes_inputs)
        assert kept, f"the inputs were written into ({_writer_dois(x, y)[i][0]!r})"
        assert_same(ours, theirs)
        assert theirs.values.abs().max() > 0


@pytest.mark.parametrize("name", ["relu_first_block", "relu_first_net"])
def test_model_writing_into_its_input_at_a_cut_before_the_write(name: str, rng: torch.Generator) -> None:
    """``x.relu_()`` first thing in the block after the cut (it writes into ``z``): every
    realisation, both halves, every DoI (also in slice space) equal the plain model's."""
    make = input_writers()[name]
    model, plain = make(True), make(False)
    x = torch.randn(9, 4, generator=rng, dtype=torch.float64)
    y = torch.arange(9) % 3
    found = _slices(model, model, "fc0", ("graph", "hook") if name == "relu_first_net" else ("sequential", "graph", "hook"))
    theirs_slice = Slice(plain, "fc0", realisation="hook")
    with torch.no_grad():
        z = theirs_slice.h(x)
    for realisation, slc in found.items():
        with torch.no_grad():
            assert_close(slc.h(x.clone()), z, **TOL)
            assert_close(slc.g(z.clone(), x.clone()), plain(x), **TOL)  # g's argument is the model's to write into
        for i, (_, multiply, takes_inputs) in enumerate(_writer_dois(x, y)):
            with unchanged(model):
                ours, kept = _run_on_copies(slc, _writer_dois, x, y, i, multiply, takes_inputs)
            theirs, _ = _run_on_copies(theirs_slice, _writer_dois, x, y, i, multiply, takes_inputs)
            assert kept
            assert_same(ours, theirs)
        slice_line = LineDoI(torch.zeros(4, dtype=torch.float64), steps=4, space="slice")
        with unchanged(model):
            ours_line = internal_influence(slc, ClassQoI(2), slice_line, x, multiply_activation=True)
        assert_same(ours_line, internal_influence(theirs_slice, ClassQoI(2), slice_line, x, multiply_activation=True))
        # the essence check runs g on ablated activations (and on z itself)
        options: dict[str, Any] = {"ks": (1, 2), "draws": 6, "rankings": ["contrast", "gradient_x_activation"]}
        with unchanged(model):
            ours_essence = essence_check(slc, (x, y), 1, 2, **options)
        theirs_essence = essence_check(theirs_slice, (x, y), 1, 2, **options)
        assert ours_essence.full_auc == theirs_essence.full_auc
        assert [(r.auc, r.random_median) for r in ours_essence.rows] == [(r.auc, r.random_median) for r in theirs_essence.rows]
        for key, value in theirs_essence.scores.items():
            assert_close(ours_essence.scores[key], value, **TOL)


@pytest.mark.parametrize("name", ["relu_first_sequential", "relu_first_model"])
def test_model_writing_into_its_input_at_a_cut_after_the_write(name: str, rng: torch.Generator) -> None:
    """The model writes into its own input (first layer ``ReLU(inplace=True)`` / first line
    ``x.relu_()``) and the cut is after that write (``fc1`` / ``fc``): the caller's inputs
    and data must come back unchanged, and input-space lines and noise at the cut must
    equal the plain model's (the line runs from the baseline to the *original* point)."""
    make = input_writers()[name]
    model, plain = make(True), make(False)
    cut = "fc1" if name == "relu_first_sequential" else "fc"
    x = torch.randn(9, 4, generator=rng, dtype=torch.float64)
    y = torch.arange(9) % 3
    assert torch.any(x < 0)
    wrong: list[str] = []
    for realisation in REALISATIONS:
        try:
            slc = Slice(model, cut, realisation=realisation)
        except ValueError:
            assert realisation != "hook"
            continue
        theirs_slice = Slice(plain, cut, realisation="hook")
        for i, (doi, multiply, takes_inputs) in enumerate(_writer_dois(x, y)):
            with unchanged(model):
                ours, kept = _run_on_copies(slc, _writer_dois, x, y, i, multiply, takes_inputs)
            theirs, _ = _run_on_copies(theirs_slice, _writer_dois, x, y, i, multiply, takes_inputs)
            gap = float((ours.values - theirs.values).abs().max())
            if not kept or gap > TOL["atol"] + TOL["rtol"] * float(theirs.values.abs().max()):
                wrong.append(f"{realisation}, {doi!r}: inputs {'kept' if kept else 'WRITTEN INTO'}, max |ours - plain| = {gap:.3g}")
    assert not wrong, "\n".join(wrong)


# --- 7. fx: in-place writes whose result is unused -----------------------------------------


class UnusedInplace(nn.Module):
    """``z = a(pre(x)); z.relu_(); return c(z)`` (mode ``"method"``), the same with
    ``self.r(z)``, ``r = ReLU(inplace=True)``, its result unused (``"module"``), or with
    ``z = torch.relu(z)`` (``"plain"``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.pre = nn.Linear(4, 5)
        self.a = nn.Linear(5, 5)
        self.r = nn.ReLU(inplace=mode == "module")
        self.c = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        z = self.a(self.pre(x))
        if self.mode == "method":
            z.relu_()
        elif self.mode == "module":
            self.r(z)
        else:
            z = torch.relu(z)
        return self.c(z)


def unused_inplace(mode: str) -> nn.Module:
    return UnusedInplace(mode).double().eval()


@pytest.mark.parametrize("mode", ["method", "module"])
def test_unused_inplace_result_graph_equals_hook(mode: str, rng: torch.Generator) -> None:
    """fx drops nodes whose result is unused; an in-place write is not dead code. At cuts
    before it (``pre``: ``a`` is an affine prefix whose output the write changes; ``a``:
    the write is on ``z`` itself) the graph realisation (it must apply), the hooks and the
    plain model agree, with and without the affine prefix, for class and neuron QoIs;
    and input influence too."""
    model, plain = unused_inplace(mode), unused_inplace("plain")
    x = torch.randn(6, 4, generator=rng, dtype=torch.float64)
    qois = [ClassQoI(1), NeuronQoI("a", 2), NeuronQoI("c", 0)]
    dois = [(PointDoI(), True), (LineDoI(0.2, steps=5), True), (NoiseDoI(0.5, samples=8), False)]
    for doi, multiply in dois:
        with unchanged(model):
            ours = input_influence(model, qois, doi, x, multiply_activation=multiply, seed=2)
        assert_same(ours, input_influence(plain, qois, doi, x, multiply_activation=multiply, seed=2))
    for cut, cut_qois in (("pre", qois), ("a", qois[:1] + qois[2:])):
        found = _slices(model, model, cut, ("graph", "hook"))
        theirs_slice = Slice(plain, cut, realisation="hook")
        with torch.no_grad():
            hb = theirs_slice.h(torch.zeros_like(x))
        for doi, multiply in [*dois, (LineDoI(hb, steps=5, space="slice"), True)]:
            theirs = internal_influence(theirs_slice, cut_qois, doi, x, multiply_activation=multiply, seed=2)
            for realisation, slc in found.items():
                for prefix in (True, False):
                    with unchanged(model):
                        ours = internal_influence(slc, cut_qois, doi, x, multiply_activation=multiply, seed=2, affine_prefix=prefix)
                    assert_same(ours, theirs)
    # not vacuous: the write matters (without it the class influence differs)
    bare = UnusedInplace("plain").double().eval()
    bare.forward = lambda x: bare.c(bare.a(bare.pre(x)))  # type: ignore[method-assign]
    no_relu = input_influence(bare, ClassQoI(1), LineDoI(0.2, steps=5), x, multiply_activation=True).values
    assert (no_relu - input_influence(plain, ClassQoI(1), LineDoI(0.2, steps=5), x, multiply_activation=True).values).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["method", "module"])
def test_cut_at_the_input_of_a_layer_after_an_unused_inplace_write(mode: str, rng: torch.Generator) -> None:
    """``Cut("c", at="input")``: the value ``c`` receives is ``z`` *after* ``z.relu_()``
    (or ``self.r(z)``). Every realisation that builds must give that ``h`` and the plain
    model's influence; the graph one must not split at ``a``'s output instead."""
    model, plain = unused_inplace(mode), unused_inplace("plain")
    x = torch.randn(6, 4, generator=rng, dtype=torch.float64)
    cut = Cut("c", at="input")
    theirs_slice = Slice(plain, cut, realisation="hook")
    with torch.no_grad():
        hx = theirs_slice.h(x)
    assert torch.all(hx >= 0) and torch.any(hx == 0), "c's input is a ReLU's output"
    theirs = {
        name: internal_influence(theirs_slice, ClassQoI(1), doi, x, multiply_activation=True, seed=2)
        for name, doi in (("line", LineDoI(0.2, steps=5)), ("noise", NoiseDoI(0.5, samples=8, sampler="random")))
    }
    for realisation in ("graph", "hook"):
        try:
            slc = Slice(model, cut, realisation=realisation)
        except ValueError:
            continue  # refusing is fine; a wrong split is not
        with torch.no_grad():
            assert_close(slc.h(x), hx, **TOL, msg=lambda m: f"{realisation}: h(x) is not c's input\n{m}")
        for name, doi in (("line", LineDoI(0.2, steps=5)), ("noise", NoiseDoI(0.5, samples=8, sampler="random"))):
            with unchanged(model):
                ours = internal_influence(slc, ClassQoI(1), doi, x, multiply_activation=True, seed=2)
            assert_same(ours, theirs[name])
