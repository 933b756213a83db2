"""Counter-based random numbers: every draw is a pure function of
``(seed, anchor id, sample index, coordinate)``.

This makes noise independent of batch size, of how anchors are chunked or sharded
across processes, and of the device: the same query gives the same samples everywhere.
The generator is SplitMix64 (Steele, Lea & Flood 2014): a Weyl sequence with step
``γ = 0x9E3779B97F4A7C15`` passed through a 64-bit finaliser, computed with wrapping
``int64`` tensor arithmetic; uniforms take the top 53 bits, normals use
``√2 · erfinv(2u − 1)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """The SplitMix64 finaliser of ``z + γ`` (int64 in, int64 out, wrapping)."""
    z = z + _GAMMA
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _mix64_int(z: int) -> int:
    """:func:`mix64` on a Python int (as a signed 64-bit value)."""
    mask = (1 << 64) - 1
    z = (z + _GAMMA) & mask
    z = ((z ^ (z >> 30)) * _M1) & mask
    z = ((z ^ (z >> 27)) * _M2) & mask
    z ^= z >> 31
    return z - (1 << 64) if z >= 1 << 63 else z


def stream_keys(seed: int, anchor_id: Tensor, index: Tensor) -> Tensor:
    """One 64-bit key per row from the query seed, the anchor's global id and the
    sample's index within its anchor (both int64 tensors of shape ``(B,)``)."""
    seed_key = _mix64_int(seed & ((1 << 64) - 1))
    return mix64(mix64(anchor_id * _GAMMA + seed_key) + index * _GAMMA)


def uniform(keys: Tensor, dims: int) -> Tensor:
    """``(B, dims)`` float64 uniforms in the open interval (0, 1)."""
    d = torch.arange(1, dims + 1, dtype=torch.int64, device=keys.device)
    bits = _shr(mix64(keys[:, None] + d * _GAMMA), 11)
    return (bits.to(torch.float64) + 0.5) * 2.0**-53


def normal_from_uniform(u: Tensor) -> Tensor:
    """Standard normals by inversion of the CDF."""
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
