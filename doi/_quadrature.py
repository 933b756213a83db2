"""Quadrature rules on [0, 1]: nodes ``α_k`` and weights ``w_k`` with ``Σ w_k = 1`` so
that ``∫₀¹ φ(α) dα ≈ Σ_k w_k φ(α_k)``.

* ``gauss-legendre``: exact for polynomials of degree ``2n − 1`` (nodes from scipy).
* ``riemann-left`` / ``riemann-right`` / ``midpoint``: ``α_k = k/n``, ``(k+1)/n``,
  ``(k+½)/n``; ``w_k = 1/n``.
* ``trapezoid``: the composite rule on ``n`` equispaced nodes including both ends,
  ``α_k = k/(n−1)``, weights ``1/(n−1)`` with the two ends halved.

Captum's ``riemann_trapezoid`` puts its ``n`` nodes at the same places but weights them
``1/n`` (ends halved), so its weights sum to ``(n−1)/n`` and its integrated gradients
miss completeness by about ``1/n``; ours equals Captum's times ``n/(n−1)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.special import roots_legendre

Rule = Literal["gauss-legendre", "riemann-left", "riemann-right", "midpoint", "trapezoid"]
RULES: tuple[str, ...] = ("gauss-legendre", "riemann-left", "riemann-right", "midpoint", "trapezoid")


@lru_cache(maxsize=64)
def nodes_and_weights(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(α, w)``, two float64 arrays of length ``n`` (read-only), ``Σ w = 1``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES} (got {rule!r})")
    k = np.arange(n, dtype=np.float64)
    if rule == "gauss-legendre":
        x, w = roots_legendre(n)
        alpha, weight = (x + 1.0) / 2.0, w / 2.0
    elif rule == "trapezoid":
        if n < 2:
            raise ValueError(f"rule 'trapezoid' needs steps >= 2 (got {n})")
        alpha = k / (n - 1)
        weight = np.full(n, 1.0 / (n - 1))
        weight[[0, -1]] /= 2.0
    else:
        offset = {"riemann-left": 0.0, "riemann-right": 1.0, "midpoint": 0.5}[rule]
        alpha, weight = (k + offset) / n, np.full(n, 1.0 / n)
    alpha.setflags(write=False)
    weight.setflags(write=False)
    return alpha, weight
