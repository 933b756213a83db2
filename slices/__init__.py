"""Slices: a network ``f`` split at a layer into ``f = g ∘ h``."""

from ._cut import Cut
from ._slice import Slice

__all__ = ["Cut", "Slice"]
