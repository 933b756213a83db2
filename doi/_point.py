"""The point DoI: the anchor itself (saliency; gradient × input with
``multiply_activation``)."""

from __future__ import annotations

from torch import Tensor

from ._base import PointwiseDoI, Rows


class PointDoI(PointwiseDoI):
    """The Dirac distribution at each anchor: ``S = 1`` sample of weight 1."""

    space = "input"
    samples = 1
    groups = 1
    weight = 1.0

    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        return rows.take(anchors), anchors.new_ones(()).expand(rows.stop - rows.start)

    def __repr__(self) -> str:
        return "PointDoI()"
