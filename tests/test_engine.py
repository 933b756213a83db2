"""Engine behaviours beyond the maths: memory layout, out-of-memory retries, progress,
chunking of populations."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from conftest import tolerance
from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from models import res_cnn
from qoi import ClassQoI, FunctionQoI
from slices import Slice

F64 = torch.float64


class ViewNet(nn.Module):
    """A conv net that flattens with ``.view`` (fails on channels-last tensors)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tanh(self.conv(x))
        return self.fc(y.view(y.shape[0], -1))


def test_channels_last_gives_the_same_influence(rng: torch.Generator) -> None:
    """The memory layout changes nothing but speed."""
    model = res_cnn().double()
    x = torch.randn(3, 3, 8, 8, generator=rng, dtype=F64)
    doi = LineDoI(steps=8)
    a = input_influence(model, ClassQoI(1), doi, x, channels_last=True, multiply_activation=True)
    b = input_influence(model, ClassQoI(1), doi, x, channels_last=False, multiply_activation=True)
    torch.testing.assert_close(a.values, b.values, **tolerance(F64))
    assert a.values.is_contiguous()


def test_channels_last_falls_back_when_the_model_refuses_it(rng: torch.Generator) -> None:
    """Automatic channels-last retries the first batch in the default layout when the
    model cannot take it (``.view`` on a channels-last tensor); forcing it raises a
    ``ValueError`` that names the inputs and keeps torch's message."""
    model = ViewNet().double()
    x = torch.randn(4, 3, 8, 8, generator=rng, dtype=F64)
    auto = input_influence(model, ClassQoI(0), PointDoI(), x, batch_size=2)
    plain = input_influence(model, ClassQoI(0), PointDoI(), x, batch_size=2, channels_last=False)
    assert torch.equal(auto.values, plain.values)
    with pytest.raises(ValueError, match=r"inputs: the model fails .*view"):
        input_influence(model, ClassQoI(0), PointDoI(), x, channels_last=True)
    with pytest.raises(TypeError, match="channels_last"):
        input_influence(model, ClassQoI(0), PointDoI(), x, channels_last="yes")  # type: ignore[arg-type]


def test_channels_last_fallback_is_quiet_on_a_traced_model(rng: torch.Generator, capfd: pytest.CaptureFixture[str]) -> None:
    """torch.fx prints the generated code of a graph module that raises; the failed
    channels-last try through a graph split (or the affine prefix) prints nothing."""
    model = ViewNet().double()
    x = torch.randn(4, 3, 8, 8, generator=rng, dtype=F64)
    for slc in (Slice(model, None), Slice(model, "conv", realisation="graph")):
        capfd.readouterr()
        auto = internal_influence(slc, ClassQoI(0), LineDoI(0.0, 4), x, batch_size=2)
        plain = internal_influence(slc, ClassQoI(0), LineDoI(0.0, 4), x, batch_size=2, channels_last=False)
        torch.testing.assert_close(auto.values, plain.values, rtol=1e-12, atol=1e-12)
        assert capfd.readouterr().err == ""


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(rng: torch.Generator) -> None:
    """A (simulated) CUDA out-of-memory error on batches larger than 4 rows halves the
    batch size with a warning; the result equals a run with ``batch_size=4``."""
    model = nn.Sequential(nn.Linear(5, 7), nn.Softplus(), nn.Linear(7, 3)).double()
    x = torch.randn(6, 5, generator=rng, dtype=F64)

    def picky(out: Tensor) -> Tensor:
        if out.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("simulated")
        return out[:, 2]

    with pytest.warns(RuntimeWarning, match="batch_size halved") as record:
        got = input_influence(model, FunctionQoI(picky), LineDoI(steps=5), x, batch_size=16)
    assert [str(w.message).split()[-1] for w in record] == ["8", "4"]
    want = input_influence(model, ClassQoI(2), LineDoI(steps=5), x, batch_size=4)
    torch.testing.assert_close(got.values, want.values, **tolerance(F64))


def test_out_of_memory_at_batch_size_one_is_raised(rng: torch.Generator) -> None:
    model = nn.Linear(3, 2).double()

    def never(out: Tensor) -> Tensor:
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError), pytest.warns(RuntimeWarning):
        input_influence(model, FunctionQoI(never), PointDoI(), torch.randn(2, 3, dtype=F64), batch_size=2, channels_last=False)


def test_progress_counts_every_point(capsys: pytest.CaptureFixture[str], rng: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tqdm, progress is a counter on stderr that reaches the number of points."""
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    model = nn.Linear(4, 3).double()
    x = torch.randn(50, 4, generator=rng, dtype=F64)
    y = torch.arange(50) % 3
    input_influence(model, ClassQoI(1), ClassDoI((x, y), 1), batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "17/17 points" in err


def test_population_chunks_do_not_change_the_result(rng: torch.Generator) -> None:
    """A population streamed from a DataLoader with odd batch sizes, chunked by the
    engine, equals the mean of the pointwise results (float64)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x = torch.randn(37, 4, generator=rng, dtype=F64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=5)
    each = NoiseDoI(0.2, samples=6, sampler="random")
    pooled = input_influence(model, ClassQoI(0), DatasetDoI(loader, each=each), batch_size=7, seed=3)
    pointwise = input_influence(model, ClassQoI(0), each, x, batch_size=7, seed=3)
    torch.testing.assert_close(pooled.values, pointwise.values.mean(0), **tolerance(F64))
    torch.testing.assert_close(pooled.stderr, pointwise.values.std(0) / 37**0.5, **tolerance(F64))


def test_slice_space_runs_h_once_per_anchor(rng: torch.Generator) -> None:
    """For a slice-space DoI, the modules before the cut run once per anchor (plus one
    probe point for sizing), not once per sample."""
    model = res_cnn().double()
    calls = {"rows": 0}
    handle = model.stem.register_forward_hook(lambda m, a, out: calls.__setitem__("rows", calls["rows"] + out.shape[0]))
    try:
        x = torch.randn(5, 3, 8, 8, generator=rng, dtype=F64)
        slc = Slice(model, "layer2")
        base = slc.h(torch.zeros(1, 3, 8, 8, dtype=F64))
        calls["rows"] = 0
        internal_influence(slc, ClassQoI(0), LineDoI(base, steps=16, space="slice"), x, batch_size=8)
    finally:
        handle.remove()
    assert calls["rows"] == 5 + 1


def test_auto_batch_size_halves_silently_until_a_batch_fits(rng: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``batch_size="auto"`` starts at the device's default and halves on out-of-memory
    without warnings (simulated: batches above 16 rows do not fit); the result equals a
    run at a fixed batch size."""
    import influence.engine._options as options

    monkeypatch.setattr(options, "AUTO_BATCH_CPU", 256)
    model = nn.Sequential(nn.Linear(5, 7), nn.Softplus(), nn.Linear(7, 3)).double()
    x = torch.randn(6, 5, generator=rng, dtype=F64)
    sizes = []

    def picky(out: Tensor) -> Tensor:
        sizes.append(out.shape[0])
        if out.shape[0] > 16:
            raise torch.cuda.OutOfMemoryError("simulated")
        return out[:, 2]

    got = input_influence(model, FunctionQoI(picky), LineDoI(steps=9), x, batch_size="auto")
    want = input_influence(model, ClassQoI(2), LineDoI(steps=9), x, batch_size=5)
    torch.testing.assert_close(got.values, want.values, **tolerance(F64))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] <= 16  # 54 rows tried at 256, 128, 64; then 32, 16
    with pytest.raises(TypeError, match="batch_size"):
        input_influence(model, ClassQoI(0), PointDoI(), x, batch_size="big")  # type: ignore[arg-type]


def test_pooled_stderr_is_zero_for_identical_members() -> None:
    """A linear model has the same gradient at every point: the pooled standard error is
    exactly zero (the sums are taken about the first member, so nothing cancels)."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x = torch.randn(37, 5, dtype=F64)
    result = input_influence(model, ClassQoI(2), DatasetDoI(x), batch_size=8)
    assert torch.equal(result.values, model.weight[2].detach())
    assert torch.count_nonzero(result.stderr) == 0


def test_pooled_stderr_keeps_a_tiny_spread_around_a_large_mean() -> None:
    """Gradient × input on a linear model: member ``i`` has influence ``w ⊙ x_i``. With
    ``x_i = 10⁴ + 10⁻⁴ ε_i`` the spread is 10⁻⁸ of the mean; the standard error still
    matches a two-pass computation to 1e-6 (raw sums of squares would lose it all)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    x = 1e4 + 1e-4 * torch.randn(64, 4, dtype=F64)
    result = input_influence(model, ClassQoI(1), DatasetDoI(x, each=PointDoI()), multiply_activation=True, batch_size=16)
    members = model.weight[1].detach() * x
    torch.testing.assert_close(result.values, members.mean(0), rtol=1e-12, atol=0)
    want = members.std(0, correction=1) / 64**0.5
    torch.testing.assert_close(result.stderr, want, rtol=1e-6, atol=0)
