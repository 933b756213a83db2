"""Random draws that depend only on ``(seed, anchor id, sample index)``.

Every anchor's samples are split into blocks of :data:`BLOCK` consecutive samples, and
each block is drawn by its own generator seeded with a key derived from the query seed,
the anchor's global id and the block number (the SplitMix64 finaliser of Steele, Lea &
Flood 2014, chained over the parts). So the samples do not depend on the batch size, on
how anchors are chunked, or on how they are sharded across processes; a block cut by a
batch boundary is drawn once and kept for the next batch. CPU generators (MT19937) and
CUDA generators (Philox) differ, so the draws differ between device types.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BLOCK = 16  # samples per seeded block

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64(z: int) -> int:
    """The SplitMix64 output function: the finaliser of ``z + γ`` (unsigned 64-bit)."""
    z = (z + _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def key(*parts: int) -> int:
    """A 63-bit generator seed from integer parts (each mixed into the previous)."""
    z = 0
    for part in parts:
        z = mix64(z ^ (part & _MASK))
    return z >> 1


def generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def normal_from_uniform(u: Tensor) -> Tensor:
    """Standard normals by inversion of the CDF: ``√2 · erfinv(2u − 1)``."""
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
