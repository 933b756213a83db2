"""Slices ``f = g ∘ h``: which realisation ``"auto"`` picks, that ``h`` and ``g`` compose
to the model, what a cut at a module's input is, the gradient at the cut, the hook
semantics on a cut that a skip connection jumps over, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from conftest import tolerance
from influence import internal_influence
from doi import PointDoI
from models import control_flow_net, mlp, res_cnn
from qoi import ClassQoI
from slices import Cut, Slice

F64 = torch.float64


def _images(rng: torch.Generator, n: int = 3) -> Tensor:
    return torch.randn(n, 3, 8, 8, generator=rng, dtype=F64)


def _compose(slc: Slice, x: Tensor) -> Tensor:
    """``g(h(x))`` (``g(h(x), x)`` for a slice that is not a split)."""
    z = slc.h(x)
    return slc.g(z) if slc.is_split else slc.g(z, x)


# ---------------------------------------------------------------- auto realisation


def test_auto_picks_sequential_for_a_sequential_model() -> None:
    slc = Slice(mlp(), "1")
    assert slc.realisation == "sequential" and slc.is_split


def test_auto_picks_graph_for_a_separating_cut_of_a_traceable_model() -> None:
    """``layer2`` is on every path from input to output of ResCNN: fx can split there."""
    slc = Slice(res_cnn(), "layer2")
    assert slc.realisation == "graph" and slc.is_split


def test_auto_picks_hook_when_a_skip_connection_jumps_over_the_cut() -> None:
    """In ``layer1 = out(x + conv2(act(conv1(x))))`` the skip ``x`` bypasses ``conv1``,
    so no graph split exists at ``layer1.conv1``: hooks, and ``g`` needs ``x``."""
    slc = Slice(res_cnn(), "layer1.conv1")
    assert slc.realisation == "hook"
    assert slc.is_split is False


def test_auto_picks_hook_when_fx_cannot_trace() -> None:
    slc = Slice(control_flow_net(), "act1")
    assert slc.realisation == "hook"


def test_forced_realisation_that_does_not_apply_is_refused() -> None:
    with pytest.raises(ValueError, match="sequential"):
        Slice(res_cnn(), "layer2", realisation="sequential")
    with pytest.raises(ValueError, match="graph"):
        Slice(res_cnn(), "layer1.conv1", realisation="graph")


# ---------------------------------------------------------------- h and g compose to f


@pytest.mark.parametrize(
    "layer, realisation",
    [
        ("layer2", "graph"),
        ("layer1", "graph"),
        ("stem", "graph"),
        ("fc", "graph"),
        (Cut("fc", at="input"), "graph"),
        ("layer1.conv1", "hook"),
        ("layer2.act", "hook"),
    ],
)
def test_g_of_h_is_the_model_res_cnn(rng: torch.Generator, layer: str | Cut, realisation: str) -> None:
    """``g(h(x)) = f(x)`` (``g(h(x), x)`` for the hook realisation)."""
    model = res_cnn().double()
    slc = Slice(model, layer)
    assert slc.realisation == realisation
    x = _images(rng)
    with torch.no_grad():
        torch.testing.assert_close(_compose(slc, x), model(x), **tolerance(F64))


@pytest.mark.parametrize("realisation", ["graph", "hook"])
def test_every_realisation_that_applies_agrees(rng: torch.Generator, realisation: str) -> None:
    """Forcing ``graph`` or ``hook`` at a separating cut gives the same ``h`` and ``g``
    (the hook ``g`` then does not depend on ``x``)."""
    model = res_cnn().double()
    ref = Slice(model, "layer2")
    slc = Slice(model, "layer2", realisation=realisation)
    x, other = _images(rng), _images(rng)
    with torch.no_grad():
        z = ref.h(x)
        torch.testing.assert_close(slc.h(x), z, **tolerance(F64))
        g = slc.g(z) if slc.is_split else slc.g(z, other)  # hook: x only runs the model up to the cut
        torch.testing.assert_close(g, ref.g(z), **tolerance(F64))


@pytest.mark.parametrize("model_fn, layer", [(mlp, "0"), (mlp, "3"), (mlp, "4"), (control_flow_net, "fc1"), (control_flow_net, "act1")])
def test_g_of_h_is_the_model_mlps(rng: torch.Generator, model_fn, layer: str) -> None:
    model = model_fn().double()
    slc = Slice(model, layer)
    x = torch.randn(5, 6, generator=rng, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(_compose(slc, x), model(x), **tolerance(F64))


def test_sequential_h_is_the_prefix(rng: torch.Generator) -> None:
    """For ``Sequential(m0..m4)`` cut at ``"2"``: ``h = m2∘m1∘m0``; at ``"2"@input``: ``h = m1∘m0``."""
    model = mlp().double()
    x = torch.randn(4, 6, generator=rng, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(Slice(model, "2").h(x), model[2](model[1](model[0](x))), **tolerance(F64))
        torch.testing.assert_close(Slice(model, Cut("2", at="input")).h(x), model[1](model[0](x)), **tolerance(F64))


def test_input_slice_is_identity_and_model(rng: torch.Generator) -> None:
    model = mlp().double()
    slc = Slice.input(model)
    x = torch.randn(4, 6, generator=rng, dtype=F64)
    assert slc.is_input and slc.is_split
    assert torch.equal(slc.h(x), x)
    with torch.no_grad():
        torch.testing.assert_close(slc.g(x), model(x), **tolerance(F64))


# ---------------------------------------------------------------- Cut(layer, at="input")


def test_cut_at_input_of_fc_is_the_flattened_pooled_features(rng: torch.Generator) -> None:
    """ResCNN makes ``flatten(pool(layer2(...)), 1)`` with a functional call; the cut at
    the input of ``fc`` is that tensor, and ``g`` is ``fc``."""
    model = res_cnn().double()
    slc = Slice(model, Cut("fc", at="input"))
    x = _images(rng)
    with torch.no_grad():
        features = model.layer2(model.down(model.layer1(model.stem_act(model.stem(x)))))
        expected = torch.flatten(model.pool(features), 1)
        z = slc.h(x)
        assert z.shape == (3, 8)
        torch.testing.assert_close(z, expected, **tolerance(F64))
        torch.testing.assert_close(slc.g(z), model.fc(z), **tolerance(F64))


def test_cut_at_input_with_hooks_equals_the_module_input(rng: torch.Generator) -> None:
    """Same cut through the hook realisation (a forward pre-hook)."""
    model = res_cnn().double()
    slc = Slice(model, Cut("fc", at="input"), realisation="hook")
    x = _images(rng)
    with torch.no_grad():
        expected = torch.flatten(model.pool(model.layer2(model.down(model.layer1(model.stem_act(model.stem(x)))))), 1)
        torch.testing.assert_close(slc.h(x), expected, **tolerance(F64))
        torch.testing.assert_close(slc.g(expected, x), model(x), **tolerance(F64))


def test_cut_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="at must be"):
        Cut("fc", at="middle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty"):
        Cut("")
    assert str(Cut("fc", at="input")) == "fc@input" and str(Cut("fc")) == "fc"


def test_unknown_layer_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean 'layer2'"):
        Slice(res_cnn(), "layer3")


# ---------------------------------------------------------------- nested Sequential


def _nested(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Linear(5, 7), nn.Tanh()),
        nn.Sequential(nn.Linear(7, 6), nn.Softplus(), nn.Linear(6, 3)),
    ).double()


@pytest.mark.parametrize("layer", ["0.0", "0.1", "1.0", "1.1", "0", "1.2"])
def test_nested_sequential_paths(rng: torch.Generator, layer: str) -> None:
    """A dotted path into a Sequential of Sequentials splits the inner one; ``h`` is the
    prefix up to that module: e.g. ``"0.1"`` gives ``h(x) = tanh(W x + b)``."""
    model = _nested()
    slc = Slice(model, layer)
    assert slc.realisation == "sequential"
    x = torch.randn(4, 5, generator=rng, dtype=F64)
    captured: list[Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        handle.remove()
    with torch.no_grad():
        z = slc.h(x)
        torch.testing.assert_close(z, captured[0], **tolerance(F64))
        torch.testing.assert_close(slc.g(z), y, **tolerance(F64))


def test_nested_sequential_inner_input_cut(rng: torch.Generator) -> None:
    """``Cut("1.2", at="input")``: ``h(x) = softplus(W_{1.0} tanh(W_{0.0} x + b) + b)``."""
    model = _nested()
    x = torch.randn(4, 5, generator=rng, dtype=F64)
    slc = Slice(model, Cut("1.2", at="input"))
    with torch.no_grad():
        expected = model[1][1](model[1][0](model[0](x)))
        torch.testing.assert_close(slc.h(x), expected, **tolerance(F64))
        torch.testing.assert_close(slc.g(expected), model(x), **tolerance(F64))


# ---------------------------------------------------------------- forward_cut and gradients


def _gradient_through_whole_model(model: nn.Module, layer: str, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """``∂ Σ w·f(x) / ∂ a`` where ``a`` is ``layer``'s output in an ordinary forward pass
    of the whole model (``retain_grad`` on the recorded activation)."""
    seen: list[Tensor] = []

    def keep(m: nn.Module, args: object, out: Tensor) -> None:
        out.retain_grad()
        seen.append(out)

    handle = dict(model.named_modules())[layer].register_forward_hook(keep)
    try:
        x = x.clone().requires_grad_(True)
        out = model(x)
        (out * weights).sum().backward()
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].grad is not None
    return seen[0].detach(), seen[0].grad


@pytest.mark.parametrize(
    "model_fn, layer, shape, realisation",
    [
        (mlp, "1", (6,), "sequential"),
        (res_cnn, "layer2", (3, 8, 8), "graph"),
        (res_cnn, "layer1.conv1", (3, 8, 8), "hook"),
        (res_cnn, "stem_act", (3, 8, 8), "graph"),
        (control_flow_net, "act1", (6,), "hook"),
    ],
)
def test_forward_cut_leaf_and_gradient(rng: torch.Generator, model_fn, layer: str, shape: tuple[int, ...], realisation: str) -> None:
    """``forward_cut(x) = (z, f(x))`` with ``z = h(x)`` a fresh leaf requiring grad, and
    ``∂ q(out)/∂z`` equal to the gradient at that layer's output computed by autograd
    through the whole (unsplit) model, for ``q = Σ w·f``."""
    model = model_fn().double()
    slc = Slice(model, layer)
    assert slc.realisation == realisation
    x = torch.randn(3, *shape, generator=rng, dtype=F64)
    with torch.no_grad():
        y = model(x)
    weights = torch.randn(y.shape, generator=rng, dtype=F64)
    activation, expected = _gradient_through_whole_model(model, layer, x, weights)

    z, out = slc.forward_cut(x)
    assert z.is_leaf and z.requires_grad and z.grad_fn is None
    torch.testing.assert_close(z.detach(), activation, **tolerance(F64))
    torch.testing.assert_close(out.detach(), y, **tolerance(F64))
    (grad,) = torch.autograd.grad((out * weights).sum(), z)
    torch.testing.assert_close(grad, expected, **tolerance(F64))


def test_forward_cut_keeps_no_graph_before_the_cut(rng: torch.Generator) -> None:
    """At a separating cut, with the input requiring grad, nothing flows back past the
    cut: the output's gradient w.r.t. ``x`` is not connected (graph and hook alike). (At
    a non-separating hook cut the skip path legitimately still depends on ``x``.)"""
    model = res_cnn().double()
    x = _images(rng).requires_grad_(True)
    for realisation in ("graph", "hook"):
        z, out = Slice(model, "layer2", realisation=realisation).forward_cut(x)
        (gx,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
        assert gx is None


# ---------------------------------------------------------------- hook semantics on a non-separating cut


class TinyResidual(nn.Module):
    """``y = W2 relu(W1 x) + x`` (no biases)."""

    def __init__(self, d: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d, d, bias=False)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x))) + x


def test_hook_on_non_separating_cut_holds_other_activations_at_x(rng: torch.Generator) -> None:
    """Cut at ``act`` (``z = relu(W1 x)``): the skip ``x`` jumps over it, so ``g`` holds
    it at its value for ``x``: ``g(z; x) = W2 z + x`` for any ``z`` (not only ``h(x)``);
    cut at ``fc1``: ``g(z; x) = W2 relu(z) + x``. Gradients: ``∂Σ(w·y)/∂z = w W2``
    (cut at ``act``)."""
    model = TinyResidual().double()
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    x = torch.randn(5, 4, generator=rng, dtype=F64)
    z = torch.randn(5, 4, generator=rng, dtype=F64)

    at_act = Slice(model, "act")
    assert at_act.realisation == "hook" and not at_act.is_split
    with torch.no_grad():
        torch.testing.assert_close(at_act.h(x), torch.relu(x @ w1.T), **tolerance(F64))
        torch.testing.assert_close(at_act.g(z, x), z @ w2.T + x, **tolerance(F64))

    at_fc1 = Slice(model, "fc1")
    assert at_fc1.realisation == "hook"
    with torch.no_grad():
        torch.testing.assert_close(at_fc1.h(x), x @ w1.T, **tolerance(F64))
        torch.testing.assert_close(at_fc1.g(z, x), torch.relu(z) @ w2.T + x, **tolerance(F64))

    weights = torch.randn(5, 4, generator=rng, dtype=F64)
    leaf, out = at_act.forward_cut(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    torch.testing.assert_close(grad, weights @ w2, **tolerance(F64))


def test_hook_g_shape_mismatch_is_refused(rng: torch.Generator) -> None:
    model = TinyResidual().double()
    slc = Slice(model, "act")
    x = torch.randn(5, 4, generator=rng, dtype=F64)
    with pytest.raises(ValueError, match=r"z has shape \(3, 4\)"):
        slc.g(torch.zeros(3, 4, dtype=F64), x)


# ---------------------------------------------------------------- refusals


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fc(self.fc(x)))


def test_module_called_twice_is_refused(rng: torch.Generator) -> None:
    """A cut at a module that runs twice in one forward pass has no single value: ``g``,
    ``forward_cut`` and a query refuse with an error saying so."""
    model = CalledTwice().double()
    slc = Slice(model, "fc")
    x = torch.randn(3, 4, generator=rng, dtype=F64)
    with pytest.raises(ValueError, match="'fc' runs more than once"):
        slc.forward_cut(x)
    with pytest.raises(ValueError, match="'fc' runs more than once"):
        slc.g(torch.zeros(3, 4, dtype=F64), x)
    with pytest.raises(ValueError, match="'fc' runs more than once"):
        internal_influence(slc, ClassQoI(0), PointDoI(), x)


class Halves(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, :3], x[:, 3:]


class TupleLayer(nn.Module):
    """``split`` returns a tuple; ``fc`` is applied to both halves."""

    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.split = Halves()
        self.fc = nn.Linear(3, 2)
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.split(x)
        if self.branch and x.sum() < -1e30:  # untraceable: forces hooks
            return self.fc(b)
        return self.fc(a) + self.fc(b)


@pytest.mark.parametrize("branch", [False, True], ids=["graph", "hook"])
def test_layer_with_tuple_output_is_refused(rng: torch.Generator, branch: bool) -> None:
    """The units of a slice are one tensor: a layer returning a tuple is refused with a
    TypeError naming the layer, whatever the realisation."""
    model = TupleLayer(branch).double()
    slc = Slice(model, "split")
    assert slc.realisation == ("hook" if branch else "graph")
    x = torch.randn(3, 6, generator=rng, dtype=F64)
    with pytest.raises(TypeError, match="'split' is a tuple"):
        slc.forward_cut(x)
    with pytest.raises(TypeError, match="'split' is a tuple"):
        slc.h(x)
    with pytest.raises(TypeError, match="'split' is a tuple"):
        internal_influence(slc, ClassQoI(0), PointDoI(), x)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def test_layer_never_run_is_refused(rng: torch.Generator) -> None:
    model = Unused().double()
    slc = Slice(model, "spare")
    x = torch.randn(3, 4, generator=rng, dtype=F64)
    for call in (lambda: slc.h(x), lambda: slc.forward_cut(x), lambda: slc.g(torch.zeros(3, 4, dtype=F64), x)):
        with pytest.raises(ValueError, match="'spare' never ran"):
            call()


def test_hook_g_without_x_is_refused(rng: torch.Generator) -> None:
    slc = Slice(res_cnn().double(), "layer1.conv1")
    z = slc.h(_images(rng))
    with pytest.raises(ValueError, match=r"needs the inputs x .*g\(z, x\)"):
        slc.g(z)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Slice(lambda x: x, "fc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="realisation must be one of"):
        Slice(mlp(), "1", realisation="magic")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callables"):
        Slice.from_functions(1, 2)  # type: ignore[arg-type]


# ---------------------------------------------------------------- from_functions, moved


def test_from_functions(rng: torch.Generator) -> None:
    model = mlp().double()
    h, g = nn.Sequential(model[0], model[1]), nn.Sequential(model[2], model[3], model[4])
    slc = Slice.from_functions(h, g, model=model)
    assert slc.realisation == "functions" and slc.is_split and slc.layer is None
    x = torch.randn(3, 6, generator=rng, dtype=F64)
    z, out = slc.forward_cut(x)
    assert z.is_leaf and z.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), **tolerance(F64))


@pytest.mark.parametrize("layer", ["1", None])
def test_moved_copies_model_when_dtype_differs(rng: torch.Generator, layer: str | None) -> None:
    """``moved(cpu, float64)`` of a float32 model gives a slice over a float64 copy with
    the same cut and realisation; the user's model stays float32 and untouched; moving
    to where the model already is returns the slice itself."""
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slc = Slice(model, layer)
    cpu = torch.device("cpu")
    assert slc.moved(cpu, torch.float32) is slc

    moved = slc.moved(cpu, torch.float64)
    assert moved is not slc and moved.model is not model
    assert moved.realisation == slc.realisation and moved.cut == slc.cut
    assert all(p.dtype == torch.float64 for p in moved.model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
        torch.testing.assert_close(moved.model.state_dict()[k], v.double(), rtol=0, atol=0)

    x = torch.randn(3, 6, generator=rng, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(_compose(moved, x), copy.deepcopy(model).double()(x), **tolerance(F64))


def test_moved_keeps_hook_realisation() -> None:
    slc = Slice(res_cnn(), "layer1.conv1")
    moved = slc.moved(torch.device("cpu"), torch.float64)
    assert moved.realisation == "hook" and moved.layer == "layer1.conv1"
    assert next(slc.model.parameters()).dtype == torch.float32
