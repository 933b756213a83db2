"""No host–device synchronisation inside the batch loop.

On a GPU, every ``Tensor.item``, ``bool(tensor)``, ``tolist``, ``cpu`` or ``numpy`` waits
for the queued kernels to finish. The engine keeps its non-finite checks, counters and
progress on the device until a chunk or the query ends, so the number of such calls must
not grow with the number of batches. The count is taken on the CPU (the same code runs on
every device): a query of 1 batch and one of 20 batches (one chunk) make the same calls.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import internal_influence
from models import mlp, res_cnn
from qoi import ClassQoI, MaxClassQoI, NeuronQoI
from slices import Slice

SYNCING = ("item", "__bool__", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__")


@contextmanager
def counting_syncs() -> Iterator[Counter[str]]:
    """Count the calls of the synchronising tensor methods while the block runs."""
    counts: Counter[str] = Counter()
    saved = {name: getattr(Tensor, name) for name in SYNCING}

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Tensor, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(self, *args, **kwargs)

        return call

    try:
        for name, method in saved.items():
            setattr(Tensor, name, counted(name, method))
        yield counts
    finally:
        for name, method in saved.items():
            setattr(Tensor, name, method)


def test_the_counter_counts() -> None:
    with counting_syncs() as counts:
        t = torch.ones(3)
        bool(t.sum() > 0), t.sum().item(), t.tolist()
    assert counts["__bool__"] == 1 and counts["item"] == 1 and counts["tolist"] == 1


# (name, slice layer, DoI per point, samples per point, QoI)
CASES = [
    ("saliency", None, PointDoI(), 1, ClassQoI(1)),
    ("integrated gradients", None, LineDoI(steps=4), 4, ClassQoI(1)),
    ("input-space line at a layer", "2", LineDoI(steps=4), 4, ClassQoI(1)),
    ("slice-space line, no affine prefix", "1", LineDoI(steps=4, space="slice"), 4, ClassQoI(1) - ClassQoI(0)),
    ("SmoothGrad", None, NoiseDoI(sigma=0.1, samples=4, replicates=2), 4, ClassQoI(2)),
    ("max class", "2", PointDoI(), 1, MaxClassQoI()),
    ("neuron", None, PointDoI(), 1, NeuronQoI("2", (3,))),
]


def _run(layer: str | None, doi: Any, qoi: Any, points: int, batch_size: int, **options: Any) -> None:
    model = mlp(in_features=6, hidden=8, classes=3, seed=0)
    x = torch.randn(points, 6, generator=torch.Generator().manual_seed(0))
    internal_influence(Slice(model, layer), qoi, doi, x, batch_size=batch_size, seed=0, multiply_activation=True, **options)


@pytest.mark.parametrize("name, layer, doi, samples, qoi", CASES, ids=[c[0] for c in CASES])
def test_pointwise_syncs_do_not_grow_with_batches(name: str, layer: str | None, doi: Any, samples: int, qoi: Any) -> None:
    batch = 8
    counts = []
    for batches in (1, 20):
        points = batches * batch // samples
        with counting_syncs() as c:
            _run(layer, doi, qoi, points, batch)
        counts.append(c)
    assert counts[0] == counts[1], f"{name}: 1 batch {dict(counts[0])}, 20 batches {dict(counts[1])}"


@pytest.mark.parametrize("each", [PointDoI(), LineDoI(steps=4)])
@pytest.mark.parametrize("pooled", ["class", "dataset"])
def test_population_syncs_do_not_grow_with_batches(each: Any, pooled: str) -> None:
    model = res_cnn(seed=0)
    counts = []
    for batches in (1, 20):
        n = batches * 8 // each.samples
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(n, 3, 8, 8, generator=g), torch.zeros(n, dtype=torch.long)
        doi = ClassDoI((x, y), 0, each=each) if pooled == "class" else DatasetDoI(x, each=each)
        with counting_syncs() as c:
            internal_influence(Slice(model, "layer1"), ClassQoI(1), doi, batch_size=8, seed=0, channels_last=False)
        counts.append(c)
    assert counts[0] == counts[1], f"1 batch {dict(counts[0])}, 20 batches {dict(counts[1])}"


def test_the_next_chunk_is_read_before_the_host_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host reads chunk ``i + 1`` (a DataLoader's batch, say) after queuing chunk
    ``i``'s work and before it waits for the device (the per-chunk non-finite check), so
    that on a GPU the reading overlaps the device's work. The result is unchanged."""
    import influence.engine._chunk as chunks
    import influence.engine._integrator as integrator

    monkeypatch.setattr(chunks, "_MAX_CHUNK", 4)
    log: list[str] = []
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 6, generator=g), torch.zeros(12, dtype=torch.long)

    class Logged(IterableDataset):
        def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
            for i in range(3):
                log.append(f"read {i}")
                yield x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]

    check = integrator._Integrator._check_finite

    def logged_check(self: Any, *args: Any) -> Any:
        log.append("check")
        return check(self, *args)

    monkeypatch.setattr(integrator._Integrator, "_check_finite", logged_check)
    model = mlp(in_features=6, hidden=8, classes=3, seed=0)
    got = internal_influence(Slice(model, "2"), ClassQoI(1), DatasetDoI(DataLoader(Logged(), batch_size=None)), batch_size=4, seed=0)
    assert log == ["read 0", "read 1", "check", "read 2", "check", "check"]
    want = internal_influence(Slice(model, "2"), ClassQoI(1), DatasetDoI(x), batch_size=4, seed=0)
    torch.testing.assert_close(got.values, want.values, rtol=1e-6, atol=1e-7)
