"""A query gives the user's model back exactly as it found it.

During a query the engine puts the model in eval mode, turns ``requires_grad`` off on
its parameters and (for NeuronQoIs and the hook realisation) registers forward hooks.
All of that must be undone on every exit: after a successful run, after an exception
raised midway (by the QoI, by the model's own forward) and after a
``KeyboardInterrupt``. "Unchanged" means: every entry of the ``state_dict`` bitwise
equal (parameters and BatchNorm running statistics / batch counter), every parameter's
``requires_grad`` flag and dtype, every submodule's ``training`` flag (the model starts
in train mode with one submodule in eval mode), no hooks of any kind left on any
submodule, no ``.grad`` written into parameters. Checked for every Slice realisation
(sequential, fx graph, hooks, user functions, input) and for input- and slice-space
DoIs.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

from doi import DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from qoi import ClassQoI, NeuronQoI
from slices import Slice


class Boom(Exception):
    """The failure injected into a query."""


class Tripwire(nn.Module):
    """Identity that raises ``Boom`` on its ``armed``-th call (after the cut, so it runs
    once per batch of samples)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: int | None = None
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.armed is not None and self.calls == self.armed:
            raise Boom(f"forward failed on call {self.calls}")
        return x


def _layers() -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        fc1=nn.Linear(5, 8),
        bn=nn.BatchNorm1d(8),
        act=nn.Softplus(),
        drop=nn.Dropout(0.5),
        fc2=nn.Linear(8, 8),
        act2=nn.Softplus(),
        trip=Tripwire(),
        fc3=nn.Linear(8, 3),
    )


class Custom(nn.Module):
    """The same network as a plain module with a functional op (fx traces it, and it is
    not an ``nn.Sequential``)."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _layers().items():
            self.add_module(name, layer)

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(self.act(self.bn(self.fc1(x))))
        h = self.trip(F.softplus(self.fc2(h)) - 0.5)
        return self.fc3(h)


def _prepare(model: nn.Module) -> nn.Module:
    """Train mode with the dropout in eval mode; a mix of ``requires_grad`` flags;
    non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.bn.running_mean.copy_(torch.randn(8, generator=g))
        model.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
        model.bn.num_batches_tracked.fill_(7)
    model.train()
    model.drop.eval()
    model.fc1.weight.requires_grad_(False)
    model.fc2.bias.requires_grad_(False)
    return model


def make_slice(realisation: str) -> tuple[nn.Module, Slice]:
    """A prepared model and a slice of it at the dropout's output."""
    torch.manual_seed(0)
    if realisation in ("sequential", "functions"):
        model = _prepare(nn.Sequential(_layers()))
    else:
        model = _prepare(Custom())
    if realisation == "sequential":
        slc = Slice(model, "drop")
    elif realisation == "graph":
        slc = Slice(model, "drop")
    elif realisation == "hook":
        slc = Slice(model, "drop", realisation="hook")
    elif realisation == "functions":
        slc = Slice.from_functions(model[:4], model[4:], model=model)
    else:
        slc = Slice.input(model)
    expected = {"functions": "functions", "input": "identity"}.get(realisation, realisation)
    assert slc.realisation == expected
    return model, slc


REALISATIONS = ["sequential", "graph", "hook", "functions", "input"]
SPACES = ["input", "slice"]


class Snapshot:
    """Everything about a model that a query must leave as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        self.flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.dtypes = {n: p.dtype for n, p in model.named_parameters()}
        self.modes = {n: m.training for n, m in model.named_modules()}

    def check(self, model: nn.Module) -> None:
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        for k, v in self.state.items():
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), f"{k} changed"
        assert {n: p.requires_grad for n, p in model.named_parameters()} == self.flags
        assert {n: p.dtype for n, p in model.named_parameters()} == self.dtypes
        assert {n: m.training for n, m in model.named_modules()} == self.modes
        for name, p in model.named_parameters():
            assert p.grad is None, f"{name}.grad was written"
        for name, m in model.named_modules():
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
                assert not getattr(m, kind), f"{kind} left on {name or 'the model'}"
        for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"):
            assert not getattr(module_globals, kind, {}), f"global {kind} left"


def _doi(space: str) -> Any:
    return NoiseDoI(0.3, samples=4, sampler="random", space=space)


def _inputs() -> Tensor:
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(1))


def _query(slc: Slice, qoi: Any, space: str, **options: Any) -> Any:
    # 6 anchors x 4 samples = 24 rows in batches of 8: three forward/backward passes
    return internal_influence(slc, qoi, _doi(space), _inputs(), batch_size=8, seed=0, **options)


def _raising_qoi(on_call: int, error: BaseException) -> Callable[[Tensor], Tensor]:
    calls = [0]

    def qoi(out: Tensor) -> Tensor:
        calls[0] += 1
        if calls[0] == on_call:
            raise error
        return out[:, 0]

    return qoi


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("realisation", REALISATIONS)
def test_model_unchanged_after_successful_run(realisation, space):
    """A run with a NeuronQoI (recording hooks) and a class QoI, and a run with
    ``multiply_activation``, leave the model as it was; a second run gives bitwise the
    same result (no dropout, no batch statistics: the model ran in eval mode)."""
    model, slc = make_slice(realisation)
    before = Snapshot(model)
    first = _query(slc, [NeuronQoI("fc2", 1), ClassQoI(2)], space)
    before.check(model)
    _query(slc, 1, space, multiply_activation=True)
    before.check(model)
    second = _query(slc, [NeuronQoI("fc2", 1), ClassQoI(2)], space)
    before.check(model)
    for a, b in zip(first, second):
        assert torch.equal(a.values, b.values)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("realisation", REALISATIONS)
@pytest.mark.parametrize("failure", ["qoi-raises-on-3rd-call", "forward-raises-on-2nd-batch", "keyboard-interrupt"])
def test_model_unchanged_after_failed_run(realisation, space, failure):
    """The failure propagates unchanged, the model is restored, and the next query
    (failure disarmed) gives bitwise the result of an undisturbed one."""
    model, slc = make_slice(realisation)
    before = Snapshot(model)
    expected = _query(slc, [NeuronQoI("fc2", 0), ClassQoI(1)], space)
    before.check(model)

    qois: list[Any] = [NeuronQoI("fc2", 0), ClassQoI(1)]
    error: type[BaseException] = Boom
    if failure == "qoi-raises-on-3rd-call":
        qois.append(_raising_qoi(3, Boom("qoi failed")))
    elif failure == "keyboard-interrupt":
        qois.append(_raising_qoi(2, KeyboardInterrupt()))
        error = KeyboardInterrupt
    else:
        model.trip.calls, model.trip.armed = 0, 2
    with pytest.raises(error):
        _query(slc, qois, space)
    model.trip.armed = None
    before.check(model)

    again = _query(slc, [NeuronQoI("fc2", 0), ClassQoI(1)], space)
    before.check(model)
    for a, b in zip(expected, again):
        assert torch.equal(a.values, b.values)


@pytest.mark.parametrize("realisation", REALISATIONS)
def test_model_unchanged_after_failed_population_run(realisation):
    """Population DoIs stream their anchors through the same loop; a model failing on
    its last call (after some batches went through) leaves it unchanged too."""
    model, slc = make_slice(realisation)
    before = Snapshot(model)
    doi = DatasetDoI(_inputs(), each=LineDoI(steps=4))
    for _ in range(2):  # the first run may also probe the model (once per slice)
        model.trip.calls = 0
        internal_influence(slc, 0, doi, batch_size=8)
        before.check(model)
    assert model.trip.calls >= 3  # 24 rows in batches of 8
    model.trip.calls, model.trip.armed = 0, model.trip.calls
    with pytest.raises(Boom):
        internal_influence(slc, 0, doi, batch_size=8)
    model.trip.armed = None
    before.check(model)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("realisation", ["sequential", "graph", "hook", "input"])
def test_other_dtype_leaves_the_users_model_alone(realisation, space):
    """``dtype=torch.float64`` on a float32 model computes on a converted copy: the
    user's model stays float32 and otherwise unchanged, also when the run fails
    midway; the result equals the same query on the user's own float64 copy."""
    model, slc = make_slice(realisation)
    before = Snapshot(model)
    result = _query(slc, 2, space, dtype=torch.float64)
    before.check(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.query["dtype"] == "float64"

    twin = copy.deepcopy(model).double()
    twin_slice = make_twin_slice(twin, realisation)
    expected = _query(twin_slice, 2, space)
    assert torch.equal(result.values, expected.values)

    model.trip.calls, model.trip.armed = 0, 2
    with pytest.raises(Boom):
        _query(slc, [NeuronQoI("fc2", 0), 2], space, dtype=torch.float64)
    model.trip.armed = None
    before.check(model)


def make_twin_slice(model: nn.Module, realisation: str) -> Slice:
    if realisation == "input":
        return Slice.input(model)
    return Slice(model, "drop", realisation="hook" if realisation == "hook" else "auto")


def test_function_slice_refuses_another_dtype_and_stays_untouched():
    """A slice of user functions cannot be converted: a clear ValueError, model
    untouched (still float32)."""
    model, slc = make_slice("functions")
    before = Snapshot(model)
    with pytest.raises(ValueError, match="dtype"):
        _query(slc, 2, "input", dtype=torch.float64)
    before.check(model)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("realisation", REALISATIONS)
def test_works_inside_no_grad(realisation, space):
    """Called inside ``torch.no_grad()`` a query still differentiates (the result is
    bitwise the one computed outside), leaves the model unchanged, and grad mode is
    still off afterwards."""
    model, slc = make_slice(realisation)
    before = Snapshot(model)
    outside = _query(slc, [NeuronQoI("fc2", 3), 0], space)
    with torch.no_grad():
        inside = _query(slc, [NeuronQoI("fc2", 3), 0], space)
        assert not torch.is_grad_enabled()
    before.check(model)
    for a, b in zip(outside, inside):
        assert torch.equal(a.values, b.values)
        assert bool((a.values != 0).any())


def test_input_influence_restores_model():
    """The ``input_influence`` entry point with a population DoI and a point DoI."""
    model, _ = make_slice("graph")
    before = Snapshot(model)
    input_influence(model, 1, PointDoI(), _inputs())
    input_influence(model, 1, DatasetDoI(_inputs(), each=LineDoI(steps=3)), batch_size=4)
    before.check(model)
