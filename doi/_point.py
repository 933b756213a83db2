"""The point DoI: the anchor itself (saliency; gradient × input with
``multiply_activation``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import PointwiseDoI, Rows
from ._points import tensors


class PointDoI(PointwiseDoI):
    """The Dirac distribution at each anchor: ``S = 1`` sample of weight 1."""

    space = "input"
    samples = 1
    groups = 1
    weight = 1.0

    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        first = tensors(anchors)[0]  # token ids, or a mapping of them: float weights all the same
        dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        return rows.take(anchors), torch.ones((), dtype=dtype, device=first.device).expand(rows.stop - rows.start)

    def __repr__(self) -> str:
        return "PointDoI()"
