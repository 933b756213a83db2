"""Regions of an image: the one rectangle convention, and masks.

A rectangle is ``Rect(top, left, height, width)`` in pixels: the argument order of
torchvision's ``crop``, everywhere in the library (a plain 4-tuple in that order is read
the same way). It covers rows ``top ≤ i < top + height`` and columns
``left ≤ j < left + width``. Query files write it as ``box: {top, left, height, width}``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["Rect", "Region", "region_mask"]


class Rect(NamedTuple):
    """A rectangle of pixels, ``(top, left, height, width)``."""

    top: int
    left: int
    height: int
    width: int

    @classmethod
    def from_corners(cls, top: int, bottom: int, left: int, right: int) -> "Rect":
        """The half-open ranges ``[top, bottom) × [left, right)`` as a :class:`Rect`."""
        return cls(top, left, bottom - top, right - left)

    def fits(self, height: int, width: int) -> bool:
        """Whether the rectangle is non-empty and lies inside ``height × width`` pixels."""
        return self.top >= 0 and self.left >= 0 and self.height >= 1 and self.width >= 1 and self.top + self.height <= height and self.left + self.width <= width

    def mask(self, height: int, width: int) -> Tensor:
        """A bool mask ``(height, width)``, true inside the rectangle."""
        out = torch.zeros(height, width, dtype=torch.bool)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = True
        return out


Region = Union[Tensor, np.ndarray, Rect, Sequence[int], Callable[[Tensor], Any]]


def region_mask(region: Region, x: Tensor) -> Tensor:
    """The region as a bool mask ``(N, H, W)`` over the pixels of images ``x``
    (``(N, C, H, W)`` or ``(N, H, W)``)."""
    n, (h, w) = x.shape[0], tuple(x.shape[-2:])
    owner = "audit: region"
    if isinstance(region, (tuple, list)) and not isinstance(region, Tensor):
        if len(region) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in region):
            raise TypeError(f"{owner}: a rectangle is four ints (top, left, height, width) (got {region!r})")
        rect = Rect(*(int(v) for v in region))
        if not rect.fits(h, w):
            raise ValueError(
                f"{owner}: rectangle (top={rect.top}, left={rect.left}, height={rect.height}, width={rect.width}) does not fit images of {h}x{w} pixels"
            )
        return rect.mask(h, w).expand(n, h, w)
    if callable(region) and not isinstance(region, (Tensor, np.ndarray)):
        with torch.no_grad():
            value = region(x)
        where = f"{owner}: the callable's result"
    else:
        value, where = region, owner
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{owner}: expected a bool mask (H, W) or (N, H, W), a rectangle (top, left, height, width) "
            f"or a callable x -> mask (got {type(value).__name__})"
        )
    if value.dtype != torch.bool:
        raise TypeError(f"{where} must be a bool mask (got dtype {value.dtype}); compare with a threshold, e.g. mask > 0.5")
    if value.shape == (h, w):
        return value.expand(n, h, w)
    if value.shape == (n, h, w):
        return value
    raise ValueError(f"{where} has shape {tuple(value.shape)}; expected ({h}, {w}) or ({n}, {h}, {w}) for these images")
