"""Adaptive lines: each anchor's steps chosen to meet a tolerance (``LineDoI(tol=...)``).

With ``multiply_activation`` and the line at the cut (in slice space, or at the input)
an anchor is done when its relative completeness gap ``|Σ attribution − Δq| / |Δq|``
(exact: ``Δq`` comes from two forward passes) is at most ``tol``; otherwise (the gap of an
input-space line at an inner cut also holds what ``h``'s nonlinearity adds, and cannot
go to zero), when two successive estimates agree, ``‖E_L − E_{L−1}‖₂ ≤ tol ‖E_L‖₂``.
Anchors that are not done go on together, one batched round per level, until done or
until the next level would pass ``max_steps``.

The scheme (chosen on ReLU and softplus networks, see README "Adaptive precision"):

1. **Gauss–Legendre, 8 nodes** (multiply only). On a smooth network nearly every anchor
   is done here (8 gradient evaluations); on a ReLU network the easy anchors are.
2. **A graded, nested trapezoid rule** for the others. With the map
   ``α = ψ(u) = u³(10 − 15u + 6u²)`` (``ψ'(u) = 30u²(1 − u)²``) the line integral is
   ``∫₀¹ f(ψ(u)) ψ'(u) du``, taken by the trapezoid rule on ``u = k/2^L``:

       T_L = 2^{−L} Σ_{k=1}^{2^L − 1} ψ'(k/2^L) ∇(k/2^L) = T_{L−1}/2 + 2^{−L} Σ_{k odd} ...

   Each level adds only the new (odd) nodes and halves the old estimate, so one running
   vector per anchor is all the memory it takes; the ends have weight 0 and are never
   evaluated. ``ψ`` packs the nodes towards both ends, where the kinks of a ReLU network
   on a line from a zero baseline gather (Gauss–Legendre wins over the midpoint rule
   there for the same reason). Level 4 (15 nodes) starts it; the first round's nodes are
   not reused.

The estimate returned is the last one (no extrapolation, no choice among estimates by
their gap: picking whichever lands on ``Δq`` would reward cancellation, not accuracy).
"""

from __future__ import annotations

import math

import numpy as np

from ._quadrature import nodes_and_weights

FIRST_NODES = 8  # the Gauss–Legendre round (with multiply_activation)
START_LEVEL = {True: 4, False: 3}  # the first graded level, with and without multiply_activation


def psi(u: np.ndarray) -> np.ndarray:
    """``ψ(u) = u³(10 − 15u + 6u²)``: ``ψ(0) = 0``, ``ψ(1) = 1``, flat at both ends."""
    return u**3 * (10 - 15 * u + 6 * u * u)


def dpsi(u: np.ndarray) -> np.ndarray:
    """``ψ'(u) = 30u²(1 − u)²``."""
    return 30 * u * u * (1 - u) ** 2


def first_round() -> tuple[np.ndarray, np.ndarray]:
    """The Gauss–Legendre round's ``(α, w)``."""
    return nodes_and_weights("gauss-legendre", FIRST_NODES)


def graded_level(level: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The nodes ``α`` a level adds and their weights: at the start level every interior
    node ``u = k/2^L``, later the odd ``k`` only. The estimate is then
    ``T_L = T_{L−1}/2 + Σ w ∇(α)`` (``T_{start−1} = 0``)."""
    h = 2.0**-level
    k = np.arange(1, 2**level) if level == start else np.arange(1, 2**level, 2)
    u = k * h
    return psi(u), h * dpsi(u)


def graded_steps(level: int, start: int) -> int:
    """The graded nodes evaluated up to ``level``: ``2^L − 1``."""
    return 2**level - 1 if level >= start else 0


def last_level(max_steps: int, multiply: bool) -> int:
    """The deepest graded level within ``max_steps`` evaluations per anchor (counting the
    first round); below the start level when even that does not fit."""
    first = FIRST_NODES if multiply else 0
    room = max_steps - first
    return int(math.floor(math.log2(room + 1))) if room >= 1 else 0
