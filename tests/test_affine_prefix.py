"""The affine prefix (slices._affine): lines through the affine layers after the cut are
lines, and gradients pull back through them linearly, so running those layers once per
anchor gives the same influence as running them per sample. Every test compares
``affine_prefix=True`` (the default) with ``affine_prefix=False`` (all of ``g`` per
sample) in float64, and checks where the prefix is, or why there is none."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from models import control_flow_net, mlp, res_cnn
from torch import Tensor, nn

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI
from influence import input_influence, internal_influence
from qoi import ClassQoI, ComparativeQoI, MaxClassQoI
from slices import Slice

TOL = {"rtol": 1e-10, "atol": 1e-12}


def both(fn: Any) -> tuple[Any, Any]:
    """``fn(affine_prefix=True)`` and ``fn(affine_prefix=False)``, as lists of results."""
    on, off = fn(affine_prefix=True), fn(affine_prefix=False)
    return (on if isinstance(on, list) else [on]), (off if isinstance(off, list) else [off])


def assert_same(fn: Any) -> None:
    on, off = both(fn)
    for a, b in zip(on, off):
        torch.testing.assert_close(a.values, b.values, **TOL)
        torch.testing.assert_close(a.stderr, b.stderr, **TOL)


def prefix_of(slc: Slice, z: Tensor, of: str = "g") -> Any:
    return slc.g_affine_prefix(z) if of == "g" else slc.h_affine_prefix(z)


class Bottleneck(nn.Module):
    """A torchvision-style block: batch norm, an in-place ReLU right after it, and a
    projection shortcut that is affine too."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, 2), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        out += self.down(x)
        return self.relu(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus())
        self.block = Bottleneck(4, 6)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(self.stem(x))
        return self.head(x.view(x.size(0), -1))


def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


@pytest.fixture
def images(rng: torch.Generator) -> Tensor:
    return torch.randn(5, 3, 8, 8, generator=rng, dtype=torch.float64)


# --- the same influence, with and without the prefix ----------------------------------------


@pytest.mark.parametrize("multiply", [False, True])
@pytest.mark.parametrize("rule", ["gauss-legendre", "trapezoid", "riemann-left"])
def test_input_integrated_gradients_unchanged(images: Tensor, multiply: bool, rule: str) -> None:
    model = net()
    qois = [ClassQoI(0), ComparativeQoI(1, 2), MaxClassQoI()]
    assert_same(lambda **o: input_influence(model, qois, LineDoI(0.0, 6, rule), images, batch_size=7, multiply_activation=multiply, **o))


@pytest.mark.parametrize("layer", ["stem", "block.conv1", "block"])
def test_slice_space_line_unchanged(images: Tensor, layer: str) -> None:
    model = net()
    slc = Slice(model, layer)
    baseline = slc.h(torch.zeros_like(images[:1])).detach()
    doi = LineDoI(baseline, 5, space="slice")
    assert_same(lambda **o: internal_influence(slc, [ClassQoI(0), ClassQoI(2)], doi, images, batch_size=4, multiply_activation=True, **o))


@pytest.mark.parametrize("layer", ["stem", "block.conv1", "block"])
def test_input_space_line_at_a_layer_unchanged(images: Tensor, layer: str) -> None:
    """The prefix of ``h``: the path is in input space, the gradient at the cut."""
    slc = Slice(net(), layer)
    assert_same(lambda **o: internal_influence(slc, ClassQoI(1), LineDoI(0.5, 6), images, batch_size=5, multiply_activation=True, **o))


def test_baselines_per_point_and_callable(images: Tensor, rng: torch.Generator) -> None:
    model = net()
    per_point = torch.randn(images.shape, generator=rng, dtype=torch.float64)
    assert_same(lambda **o: input_influence(model, ClassQoI(0), LineDoI(per_point, 4), images, multiply_activation=True, batch_size=3, **o))
    mean = lambda x: x.mean(0, keepdim=True).expand_as(x)  # noqa: E731
    assert_same(lambda **o: input_influence(model, ClassQoI(0), LineDoI(mean, 4), images, multiply_activation=True, batch_size=3, **o))


def test_population_unchanged(rng: torch.Generator) -> None:
    model = mlp(act=nn.ReLU).double()
    x = torch.randn(40, 6, generator=rng, dtype=torch.float64)
    y = torch.arange(40) % 3
    assert_same(lambda **o: input_influence(model, ClassQoI(1), ClassDoI((x, y), 1, each=LineDoI(steps=5)), multiply_activation=True, batch_size=8, **o))
    slc = Slice(model, "1")
    doi = DatasetDoI((x, y), each=LineDoI(torch.zeros(16, dtype=torch.float64), 5, space="slice"))
    assert_same(lambda **o: internal_influence(slc, ClassQoI(2), doi, batch_size=8, **o))


def test_completeness_through_the_prefix(images: Tensor) -> None:
    """Integrated gradients with the prefix still sum to ``q(x) − q(0)``."""
    model = mlp(act=nn.Softplus).double()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = input_influence(model, ClassQoI(2), LineDoI(0.0, 32), x, multiply_activation=True)
    with torch.no_grad():
        gap = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    torch.testing.assert_close(result.values.sum(1), gap, rtol=1e-6, atol=1e-9)


# --- where the prefix is ------------------------------------------------------------------


def test_prefix_stops_at_the_first_nonlinearity(images: Tensor) -> None:
    model = net()
    slc = Slice(model, "stem")
    z = slc.h(images).detach()
    prefix = prefix_of(slc, z)
    assert prefix is not None
    u = prefix.frontier(z)
    # bn1(conv1(z)) before the in-place ReLU, and the projection shortcut down(z)
    assert [tuple(t.shape[1:]) for t in u] == [(6, 4, 4), (6, 4, 4)]
    code = prefix._rest.code
    assert "conv1" not in code and "down" not in code and "conv2" in code
    with torch.no_grad():
        torch.testing.assert_close(prefix.rest(*u), slc.g(z), **TOL)


def test_pull_back_is_the_transposed_map(rng: torch.Generator) -> None:
    """For ``g = W2·σ(W1 z)``: frontier ``W1 z + b1``, pull-back ``W1ᵀ c``."""
    model = mlp(act=nn.ReLU).double()
    slc = Slice(model, None)
    z = torch.randn(3, 6, generator=rng, dtype=torch.float64)
    prefix = prefix_of(slc, z)
    (u,) = prefix.frontier(z)
    torch.testing.assert_close(u, model[0](z), **TOL)
    c = torch.randn(3, 16, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(prefix.pull_back(z, [c]), c @ model[0].weight, **TOL)


def test_whole_g_affine(rng: torch.Generator) -> None:
    """A cut just before the last linear layer: the frontier is the output itself."""
    model = mlp(act=nn.ReLU).double()
    slc = Slice(model, "3")
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    z = slc.h(x).detach()
    prefix = prefix_of(slc, z)
    assert prefix is not None and prefix.frontier(z)[0].shape == (4, 4)
    assert_same(lambda **o: internal_influence(slc, MaxClassQoI(), LineDoI(torch.zeros(16, dtype=torch.float64), 3, space="slice"), x, **o))


# --- where there is none, and the result is still right ------------------------------------


class Centred(nn.Module):
    """Subtracts the batch mean (affine, but it mixes rows: a sample's frontier would
    depend on the other anchors)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.fc(x - x.mean(0, keepdim=True))))


class SizeAfterPrefix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        n = x.size(0)
        return torch.tanh(self.fc(x)) * n


class TrainingStatsNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.fc(self.bn(x))))


class Counter(nn.Module):
    """A leaf module with Python state: tracing would run it once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x


@pytest.mark.parametrize(
    "model, why",
    [
        (nn.Sequential(nn.Tanh(), nn.Linear(6, 2)), "nonlinear first"),
        (nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(6, 2)), "only a reshape before the nonlinearity"),
        (SizeAfterPrefix(), "a size of z used after the prefix"),
        (TrainingStatsNorm(), "batch norm with batch statistics"),
        (control_flow_net(), "not traceable"),
        (nn.Sequential(Counter(), nn.Linear(6, 2)), "a leaf module with its own forward"),
    ],
)
def test_no_prefix(model: nn.Module, why: str, rng: torch.Generator) -> None:
    model = model.double().eval()
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    assert prefix_of(Slice(model, None), x) is None, why
    assert_same(lambda **o: input_influence(model, 0, LineDoI(0.0, 4), x, batch_size=8, **o))


class BatchOfOne(nn.Module):
    """Written for one point at a time (``view(1, -1)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.fc(x.view(1, -1))))


def test_a_model_that_refuses_the_probe_runs_without_it(rng: torch.Generator) -> None:
    """The prefix is checked on three rows; a model that only takes a batch of one gets
    no prefix and still runs with ``batch_size=1``."""
    model = BatchOfOne().double().eval()
    x = torch.randn(2, 6, generator=rng, dtype=torch.float64)
    assert prefix_of(Slice(model, None), x) is None
    got = input_influence(model, 1, LineDoI(0.0, 3), x, batch_size=1, multiply_activation=True)
    want = torch.stack([input_influence(nn.Sequential(model.fc, nn.Tanh(), model.out), 1, LineDoI(0.0, 3), x[i : i + 1], multiply_activation=True).values[0] for i in range(2)])
    torch.testing.assert_close(got.values, want, **TOL)


def test_batch_mixing_prefix_is_refused(rng: torch.Generator) -> None:
    model = Centred().double().eval()
    x = torch.randn(4, 4, generator=rng, dtype=torch.float64)
    assert prefix_of(Slice(model, None), x) is None


def test_counter_counts_every_batch(rng: torch.Generator) -> None:
    counter = Counter()
    model = nn.Sequential(nn.Linear(6, 6), counter, nn.Tanh(), nn.Linear(6, 2)).double()
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    for _ in range(2):  # the second run uses the cached prefix
        counter.calls = 0
        input_influence(model, 0, LineDoI(0.0, 4), x, batch_size=4)
    assert counter.calls == 4  # 16 rows in batches of 4


def test_hooks_turn_it_off_and_fire_per_sample(rng: torch.Generator) -> None:
    model = mlp(act=nn.ReLU).double()
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    seen: list[int] = []
    handle = model[0].register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        assert prefix_of(Slice(model, None), x) is None
        input_influence(model, 0, LineDoI(0.0, 4), x, batch_size=8)
    finally:
        handle.remove()
    assert sum(seen) == 16
    assert prefix_of(Slice(model, None), x) is not None


def test_backward_hooks_turn_it_off(rng: torch.Generator) -> None:
    """A backward hook on a prefix layer sees one gradient per sample, as without it."""
    model = mlp(act=nn.ReLU).double()
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    seen: list[int] = []
    handle = model[0].register_full_backward_hook(lambda m, gin, gout: seen.append(gout[0].shape[0]))
    try:
        assert prefix_of(Slice(model, None), x) is None
        input_influence(model, 0, LineDoI(0.0, 4), x, batch_size=8)
    finally:
        handle.remove()
    assert sum(seen) == 16


def test_structure_change_rebuilds_the_prefix(rng: torch.Generator) -> None:
    model = mlp(act=nn.ReLU).double()
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    input_influence(model, 0, LineDoI(0.0, 4), x)
    model[0] = nn.Linear(6, 16).double()
    assert_same(lambda **o: input_influence(model, 0, LineDoI(0.0, 4), x, **o))


def test_noise_and_neuron_queries_do_not_use_it(images: Tensor) -> None:
    """Noise is not equivariant (Aε is not ε); a NeuronQoI reads a layer that must run."""
    from qoi import NeuronQoI

    slc = Slice(net(), "stem")
    assert_same(lambda **o: internal_influence(slc, ClassQoI(0), NoiseDoI(0.1, 4), images, seed=0, **o))
    baseline = slc.h(torch.zeros_like(images[:1])).detach()
    assert_same(lambda **o: internal_influence(slc, NeuronQoI("block.conv2", 1), LineDoI(baseline, 4, space="slice"), images, **o))


def test_functional_prefix(rng: torch.Generator) -> None:
    """Functional ops count too: ``F.linear``, scaling, ``view`` by ``size(0)``."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
            self.out = nn.Linear(8, 2).double()

        def forward(self, x: Tensor) -> Tensor:
            u = 0.5 * F.linear(x.view(x.size(0), -1), self.w) - 1.0
            return self.out(torch.tanh(u))

    model = Functional()
    x = torch.randn(4, 2, 3, generator=rng, dtype=torch.float64)
    prefix = prefix_of(Slice(model, None), x)
    assert prefix is not None and prefix.frontier(x)[0].shape == (4, 8)
    assert_same(lambda **o: input_influence(model, 1, LineDoI(0.0, 4), x, multiply_activation=True, **o))


def test_float32_agrees_to_rounding(images: Tensor) -> None:
    model = res_cnn(act=nn.ReLU).eval()
    x = images.float()
    on, off = both(lambda **o: input_influence(model, 0, LineDoI(0.0, 8), x, multiply_activation=True, **o))
    scale = off[0].values.abs().max()
    assert float((on[0].values - off[0].values).abs().max() / scale) < 1e-5


# --- a cut right before an in-place op -------------------------------------------------------


@pytest.mark.parametrize("realisation", ["sequential", "graph", "hook"])
def test_cut_before_an_inplace_relu(realisation: str, rng: torch.Generator) -> None:
    """The op after the cut writes into its input (``ReLU(inplace=True)`` after a batch
    norm, as in torchvision's ResNets): ``g`` gets a copy of ``z``, so the leaf the
    gradient is taken at is never written into, and every realisation agrees."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 3)).double().eval()
    reference = nn.Sequential(*[m if not isinstance(m, nn.ReLU) else nn.ReLU() for m in model])
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    for space in ("input", "slice"):
        slc, plain = Slice(model, "1", realisation=realisation), Slice(reference, "1")
        baseline = 0.0 if space == "input" else torch.zeros(8, dtype=torch.float64)
        got = internal_influence(slc, 0, LineDoI(baseline, 4, space=space), x, multiply_activation=True)
        want = internal_influence(plain, 0, LineDoI(baseline, 4, space=space), x, multiply_activation=True)
        torch.testing.assert_close(got.values, want.values, **TOL)


def test_hook_cut_inside_a_residual_block_before_an_inplace_relu(images: Tensor) -> None:
    import copy

    model = net()
    reference = copy.deepcopy(model)
    reference.block.relu = nn.ReLU()
    slc = Slice(model, "block.bn1")
    assert slc.realisation == "hook"
    got = internal_influence(slc, 0, LineDoI(0.0, 4), images, multiply_activation=True)
    want = internal_influence(Slice(reference, "block.bn1"), 0, LineDoI(0.0, 4), images, multiply_activation=True)
    torch.testing.assert_close(got.values, want.values, **TOL)
    assert got.values.abs().sum() > 0


def test_torchscript_models_run_without_it(rng: torch.Generator) -> None:
    """TorchScript cannot be traced by torch.fx: a scripted model, or one wrapped in a
    plain module, runs every layer per sample and gives the eager model's influence."""
    model = mlp(act=nn.ReLU).double().eval()
    x = torch.randn(3, 6, generator=rng, dtype=torch.float64)
    want = input_influence(model, 1, LineDoI(0.0, 4), x, multiply_activation=True, affine_prefix=False)

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, v: Tensor) -> Tensor:
            return self.inner(v)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in recent torch
        scripted_models = [torch.jit.script(model), torch.jit.trace(model, x)]
    for scripted in (*scripted_models, Wrapped(scripted_models[0])):
        assert prefix_of(Slice(scripted, None), x) is None
        got = input_influence(scripted, 1, LineDoI(0.0, 4), x, multiply_activation=True)
        torch.testing.assert_close(got.values, want.values, **TOL)


# --- common architectures: a transformer on patches, dense and inverted-residual blocks ---------


class ViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 5, 16))
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.enc(x)[:, 0])


class Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn(self.c0(x))
        b = self.c1(F.relu(a))
        return self.fc(torch.cat([a, b], 1).mean((2, 3)))


class MBConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.exp = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se1 = nn.Linear(8, 2)
        self.se2 = nn.Linear(2, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw(F.relu6(self.bn(self.exp(x))))
        w = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3))))))
        return self.fc(F.adaptive_avg_pool2d(x * w[:, :, None, None], 1).flatten(1))


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        u = self.fc1(x * 2.0 - 1.0) / 3.0
        return self.fc2(torch.tanh(u) + 0.1 * u)


ARCHITECTURES = {"vit": (ViT, (3, 8, 8), "patch"), "dense": (Dense, (3, 8, 8), "c0"), "mbconv": (MBConv, (3, 8, 8), "exp"), "scale": (Scale, (6,), "fc1")}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architectures_unchanged(name: str, rng: torch.Generator) -> None:
    """Concatenation with a non-affine branch, means, depthwise convolutions, a
    squeeze-and-excitation product, scalings, and a class token whose expand uses the
    batch size (no prefix at the input there): every slice and space agrees."""
    make, shape, layer = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.randn(4, *shape, generator=rng, dtype=torch.float64)
    for slc, space in ((Slice(model, None), "input"), (Slice(model, layer), "input"), (Slice(model, layer), "slice")):
        base: Any = 0.0 if space == "input" else slc.h(torch.zeros_like(x[:1])).detach()
        assert_same(lambda **o: internal_influence(slc, 1, LineDoI(base, 5, space=space), x, multiply_activation=True, **o))
