"""Distributions of interest: where an explanation must be faithful.

A *pointwise* DoI turns each anchor point ``x_i`` into ``S`` weighted samples
``(x_{ik}, w_{ik})``; the influence at ``x_i`` is ``Σ_k w_{ik} ∇(q∘g)(x_{ik})``. The ``S``
samples form ``G`` independent groups of ``S/G`` samples whose weights each sum to 1
(a quadrature rule is one group; ``S`` plain random draws are ``S`` groups of one), so
the per-anchor estimate is the mean of the ``G`` group estimates and its Monte Carlo
standard error is their standard deviation over ``√G`` (zero when ``G = 1``: a
deterministic rule has no sampling error).

A *population* DoI (:class:`~doi.ClassDoI`, :class:`~doi.DatasetDoI`) is uniform over a
set of anchors, each expanded by a pointwise DoI; its influence is the mean of the
anchors' influences, with the standard error of that mean across anchors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator, Literal

import torch
from torch import Tensor

from ._points import Points, apply, is_structured

Space = Literal["input", "slice"]
SPACES: tuple[str, ...] = ("input", "slice")


class DistributionOfInterest(ABC):
    """Base of every DoI (see :mod:`doi`)."""


class Rows:
    """Which samples to draw: rows ``start..stop`` of a chunk whose ``n`` anchors have
    ``samples`` samples each, in order (row ``r`` is sample ``r % samples`` of the
    chunk's anchor ``r // samples``). ``first_id`` is the position of the chunk's first
    anchor in the whole stream of anchors: random draws are keyed by ``first_id + anchor``
    so they do not depend on batching or sharding. ``anchor`` and ``index`` hold the
    same information as ``(B,)`` tensors on the device, sliced when first asked for from
    ``tables`` (``r // samples`` and ``r % samples`` for the chunk's rows ``r``)."""

    __slots__ = ("start", "stop", "samples", "first_id", "_tables", "_anchor", "_index", "_ids")

    def __init__(self, start: int, stop: int, samples: int, first_id: int, tables: tuple[Tensor, Tensor], ids: list[int] | None = None) -> None:
        self.start, self.stop, self.samples, self.first_id = start, stop, samples, first_id
        self._tables = tables
        self._ids = ids
        self._anchor: Tensor | None = None
        self._index: Tensor | None = None

    @classmethod
    def build(cls, start: int, stop: int, samples: int, first_id: int, device: torch.device) -> "Rows":
        r = torch.arange(stop, device=device)
        return cls(start, stop, samples, first_id, (r // samples, r % samples))

    def anchor_id(self, anchor: int) -> int:
        """The position in the stream of the chunk's anchor ``anchor`` (what random draws
        are keyed by): ``first_id + anchor``, or the chunk's own list of positions (a
        round of an adaptive DoI over some of a chunk's anchors)."""
        return self.first_id + anchor if self._ids is None else self._ids[anchor]

    @property
    def anchor(self) -> Tensor:
        """``(B,)``: each row's anchor, chunk-local."""
        if self._anchor is None:
            self._anchor = self._tables[0][self.start : self.stop]
        return self._anchor

    @property
    def index(self) -> Tensor:
        """``(B,)``: each row's sample index within its anchor."""
        if self._index is None:
            self._index = self._tables[1][self.start : self.stop]
        return self._index

    def take(self, per_anchor: Tensor) -> Tensor:
        """``per_anchor[anchor]``: each row's entry of a per-anchor tensor (a view when
        every anchor has one sample, or when ``per_anchor`` is one point broadcast to
        every anchor); of every tensor of a mapping or tuple of them."""
        if is_structured(per_anchor):
            return apply(per_anchor, self.take)
        if per_anchor.stride(0) == 0:
            return per_anchor[:1].expand(self.stop - self.start, *per_anchor.shape[1:])
        return per_anchor[self.start : self.stop] if self.samples == 1 else per_anchor[self.anchor]

    def segments(self) -> Iterator[tuple[int, int, int, int]]:
        """``(anchor, first sample, end sample, first row)`` for each anchor the rows
        touch, as Python ints (row numbers relative to ``start``)."""
        s, r = self.samples, self.start
        while r < self.stop:
            anchor, k0 = divmod(r, s)
            k1 = min(s, k0 + self.stop - r)
            yield anchor, k0, k1, r - self.start
            r += k1 - k0


class PointwiseDoI(DistributionOfInterest):
    """A DoI around each anchor point (one explanation per anchor).

    Subclasses set ``space``, ``samples`` (``S``) and ``groups`` (``G``) and write
    :meth:`draw`; :meth:`reference` gives the point the distribution is relative to
    (the baseline of a line), used by ``multiply_activation``.
    """

    space: Space = "input"
    samples: int = 1
    groups: int = 1
    weight: float | None = None  # set when every sample has this same weight
    # True when every sample is an affine combination of the anchor and its reference with
    # coefficients that do not depend on them (a line): then drawing from (A x + c, A b + c)
    # gives A·(the samples) + c, for any affine map (see slices._affine)
    affine_equivariant: bool = False

    def reference(self, anchors: Tensor, anchor_id: Tensor) -> Tensor | None:
        """The reference point of each anchor, ``(n, *shape)``, or ``None`` for zero."""
        return None

    @abstractmethod
    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        """Samples for ``rows``: points ``(B, *shape)`` and weights ``(B,)`` (each
        group's weights sum to 1) in the dtype and on the device of ``anchors``."""


def check_space(space: Any, owner: str) -> Space:
    if space not in SPACES:
        raise ValueError(f"{owner}: space must be 'input' or 'slice' (got {space!r})")
    return space


def check_positive_int(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int (got {type(value).__name__} {value!r})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum} (got {value})")
    return value


class PopulationDoI(DistributionOfInterest):
    """A DoI uniform over a population of anchors, each expanded by ``each``."""

    each: PointwiseDoI

    @abstractmethod
    def anchors(self, batch_size: int) -> Iterator[Points]:
        """The population's points, in batches of at most ``batch_size``."""

    def size_hint(self) -> int | None:
        """The number of points, when known without reading the data (else ``None``)."""
        return None

    def take(self, start: int, stop: int) -> Points | None:
        """The points ``start..stop`` of :meth:`anchors`' stream, read without the others,
        or ``None`` when the data can only be read in order (a ``DataLoader``, or labels
        that are not at hand). Processes of a distributed query use it to read their own
        chunks only."""
        return None
