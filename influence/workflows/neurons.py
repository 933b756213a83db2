"""What a neuron sees: the input influence of one internal neuron.

For a neuron ``n`` of a layer (``NeuronQoI(layer, unit)``: a channel summed over space,
or one unit), its input attribution on an image ``x`` is, by default, integrated
gradients of the neuron's activation from a black baseline,

    A_n(x) = (x − 0) ⊙ ∫₀¹ ∂n(αx)/∂x dα      (``LineDoI(0.0, tol=0.01)``, ``multiply_activation``),

and over a population ``P`` (the same pooled DoI as the contrast that picked the neuron)
its mean ``(1/|P|) Σ_{x∈P} A_n(x)``. For each neuron the ``examples`` members of ``P``
where it is most active are explained one by one: the grid picture shows, per neuron,
the pooled map and those images with their heatmaps. One engine call serves all neurons
(a list of QoIs shares the forward passes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doi import DatasetDoI, LineDoI, PointwiseDoI
from doi._base import check_positive_int as check_int
from qoi import NeuronQoI, QoIContext
from slices import Slice

from ..engine import count_missed, input_influence, no_grad_batched, tol_counted
from ..engine import frozen
from ._labelled import class_list, labelled, pixel_maps
from ..engine import InfluenceResult

__all__ = ["NeuronView", "explain_neurons"]


@dataclass(frozen=True, eq=False)
class NeuronView:
    """One neuron: ``pooled`` (its mean input attribution over the population, the
    input's shape, float64) with ``pooled_stderr``; its ``examples`` (rows of the data,
    most active first) with their ``activations``, ``images`` and per-image attributions
    ``maps`` (``(m, *input)``)."""

    layer: str
    unit: int | tuple[int, ...]
    pooled: Tensor
    pooled_stderr: Tensor
    examples: Tensor
    activations: Tensor
    images: Tensor
    maps: Tensor

    @property
    def name(self) -> str:
        return f"{self.layer}[{self.unit}]" if isinstance(self.unit, int) else f"{self.layer}{list(self.unit)}"

    def pooled_map(self) -> Tensor:
        """The pooled attribution per pixel ``(H, W)`` (summed over channels)."""
        return pixel_maps(self.pooled[None], self.pooled.ndim + 1)[0]

    def example_maps(self) -> Tensor:
        """The examples' attributions per pixel ``(m, H, W)``."""
        return pixel_maps(self.maps, self.maps.ndim)


def _activation(model: nn.Module, layer: str, unit: int | tuple[int, ...], x: Tensor, batch_size: int) -> Tensor:
    """The neuron's value on every point (``NeuronQoI``'s definition)."""
    q = NeuronQoI(layer, unit)
    z = no_grad_batched(Slice(model, layer).h, x, batch_size)
    return q(None, QoIContext({layer: z}))


def explain_neurons(
    model: nn.Module,
    layer: str,
    units: Sequence[int | tuple[int, ...]],
    data: Any,
    *,
    over: int | Sequence[int] | None = None,
    examples: int = 4,
    each: PointwiseDoI | None = None,
    multiply_activation: bool = True,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[NeuronView, ...]:
    """Input attributions of neurons of ``layer``, pooled over a population and on the
    images where each neuron is most active.

    Args:
        model: the network; ``layer`` a dotted module name in it.
        units: channels (ints) or units (tuples), e.g. ``top_neurons(...).indices``.
        data: labelled images ``(x, y)`` or ``{"x": ..., "y": ...}``.
        over: the population (a class or a list of classes; default: all of ``data``).
        examples: how many images to explain per neuron (its most active members).
        each: the pointwise DoI of the attribution (default ``LineDoI(0.0, tol=0.01)``:
            integrated gradients, each image's steps chosen to meet a 1 % completeness gap).
        multiply_activation: attributions (``True``, integrated gradients by default)
            or bare influence (``False``).

    Returns:
        one :class:`NeuronView` per unit, in order.
    """
    owner = "explain_neurons"
    x, y = labelled(data, owner)
    examples = check_int(examples, "examples", owner)
    units = [tuple(u) if isinstance(u, list) else u for u in units]
    if not units:
        raise ValueError(f"{owner}: units is empty")
    population = class_list(over, y, "over", owner)
    members = torch.nonzero(sum((y == c) for c in population).bool()).flatten()
    each = LineDoI(0.0, tol=0.01) if each is None else each
    qois = [NeuronQoI(layer, u) for u in units]
    with tol_counted(owner, "images") as counts:
        pooled = input_influence(
            model, qois, DatasetDoI(x[members], each=each), batch_size=batch_size, multiply_activation=multiply_activation, seed=seed
        )
        count_missed(counts, pooled[:1])
    with frozen([model]):
        acts = [_activation(model, layer, u, x[members], batch_size) for u in units]
    m = min(examples, members.numel())
    chosen = [members[a.argsort(descending=True, stable=True)[:m]] for a in acts]
    union = torch.unique(torch.cat(chosen))
    with tol_counted(owner, "images") as counts:
        per_image = input_influence(model, qois, each, x[union], batch_size=batch_size, multiply_activation=multiply_activation, seed=seed)
        count_missed(counts, per_image[:1])
    position = {int(i): j for j, i in enumerate(union.tolist())}
    views = []
    for u, pool, local, act, rows in zip(units, pooled, per_image, acts, chosen):
        assert isinstance(pool, InfluenceResult) and isinstance(local, InfluenceResult)
        pick = torch.tensor([position[int(i)] for i in rows])
        order = {int(i): j for j, i in enumerate(members.tolist())}
        views.append(
            NeuronView(
                layer=layer,
                unit=u,
                pooled=pool.values,
                pooled_stderr=pool.stderr,
                examples=rows,
                activations=act[torch.tensor([order[int(i)] for i in rows])].double(),
                images=x[rows],
                maps=local.values[pick],
            )
        )
    return tuple(views)
