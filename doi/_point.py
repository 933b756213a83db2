"""The point DoI: the anchor itself (saliency; gradient × input with
``multiply_activation``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import PointwiseDoI, Rows


class PointDoI(PointwiseDoI):
    """The Dirac distribution at each anchor: ``S = 1`` sample of weight 1."""

    space = "input"
    samples = 1
    groups = 1
    weight = 1.0

    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        return rows.take(anchors), torch.ones(rows.anchor.shape[0], dtype=anchors.dtype, device=anchors.device)

    def __repr__(self) -> str:
        return "PointDoI()"
