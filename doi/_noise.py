"""The noise DoI: a Gaussian neighbourhood ``x + σ ε``, ``ε ~ N(0, I)`` (SmoothGrad).

``sampler="random"`` draws ``S`` independent normals per anchor (``G = S`` groups of one
sample). ``sampler="sobol"`` is randomised quasi-Monte Carlo: one scrambled Sobol point
set of ``m = S/G`` points in the input's dimension, shifted modulo 1 by an independent
uniform vector for each of ``G`` replicates (Cranley–Patterson rotation) and mapped to
normals by the inverse CDF. Each replicate is an unbiased estimate and the replicates are
independent, so the reported standard error is honest, and on smooth functions it is
smaller than with random draws at the same ``S``.

Draws are keyed by ``(seed, anchor id, sample block)`` (:mod:`doi._random`), so they do
not depend on the batch size or on sharding.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

from ._base import PointwiseDoI, Rows, Space, check_positive_int, check_space
from ._random import BLOCK, generator, key, normal_from_uniform

Sampler = Literal["sobol", "random"]
SOBOL_MAX_DIMS = torch.quasirandom.SobolEngine.MAXDIM


@lru_cache(maxsize=8)
def _sobol_points(dims: int, points: int, seed: int) -> Tensor:
    engine = torch.quasirandom.SobolEngine(dims, scramble=True, seed=seed & 0x7FFFFFFF)
    return engine.draw(points, dtype=torch.float64)


def _default_replicates(samples: int) -> int:
    """The largest divisor of ``samples`` in [2, 8] (``samples`` itself if prime and < 8)."""
    for g in range(8, 1, -1):
        if samples % g == 0:
            return g
    return samples


class NoiseDoI(PointwiseDoI):
    """Gaussian noise around each anchor.

    Args:
        sigma: standard deviation of the noise (> 0), in the units of the space.
        samples: number of samples ``S`` per anchor.
        sampler: ``"sobol"`` (randomised quasi-Monte Carlo, default) or ``"random"``.
        replicates: for ``"sobol"``, the number ``G`` of independent randomisations
            (must divide ``samples``); default: the largest divisor of ``samples`` in 2..8.
        space: ``"input"`` or ``"slice"`` (noise on the activations at the cut).
        tol: draw each anchor's samples in rounds of ``samples`` until the standard
            error of its estimate is at most ``tol ×`` the estimate's norm,
            ``‖stderr‖₂ ≤ tol ‖estimate‖₂`` (every QoI), or ``max_samples`` are drawn.
            ``result.steps`` tells how many each anchor took. Stopping on the
            estimate's own error biases it slightly towards estimates that look more
            precise; README "Adaptive precision" measures how much.
        max_samples: the most samples per anchor with ``tol``, rounded down to whole
            rounds (default: 1024, or ``samples`` if more).
    """

    def __init__(
        self,
        sigma: float = 0.1,
        samples: int = 32,
        sampler: Sampler = "sobol",
        replicates: int | None = None,
        space: Space = "input",
        *,
        tol: float | None = None,
        max_samples: int | None = None,
    ) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"NoiseDoI: sigma must be a number (got {type(sigma).__name__})")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"NoiseDoI: sigma must be a finite number > 0 (got {sigma})")
        self.sigma = float(sigma)
        self.samples = check_positive_int(samples, "samples", "NoiseDoI")
        if sampler not in ("sobol", "random"):
            raise ValueError(f"NoiseDoI: sampler must be 'sobol' or 'random' (got {sampler!r})")
        self.sampler = sampler
        if sampler == "random":
            if replicates is not None:
                raise ValueError("NoiseDoI: replicates applies to sampler='sobol' only")
            self.groups = self.samples
        else:
            g = _default_replicates(self.samples) if replicates is None else check_positive_int(replicates, "replicates", "NoiseDoI")
            if self.samples % g:
                raise ValueError(f"NoiseDoI: replicates ({g}) must divide samples ({self.samples})")
            self.groups = g
        self.weight = self.groups / self.samples  # each group's weights sum to 1
        self.space = check_space(space, "NoiseDoI")
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < float(tol) < 1):
            raise ValueError(f"NoiseDoI: tol must be a number in (0, 1), a relative standard error (got {tol!r})")
        if tol is not None and self.groups < 2:
            raise ValueError("NoiseDoI: tol needs a standard error: at least 2 groups per round (samples >= 2, or replicates >= 2)")
        self.tol = None if tol is None else float(tol)
        self.max_samples = max(1024, self.samples) if max_samples is None else check_positive_int(max_samples, "max_samples", "NoiseDoI", self.samples)
        self.round_index = 0  # which round of an adaptive run this draws (see round)
        self._points: dict[tuple[int, int, torch.device], Tensor] = {}
        self._cut_block: tuple[tuple, Tensor] | None = None

    @property
    def adaptive(self) -> bool:
        """Are the samples chosen per anchor (``tol`` given)?"""
        return self.tol is not None

    def round(self, index: int) -> "NoiseDoI":
        """The DoI whose draws are round ``index`` of an adaptive run: round 0 draws what
        the DoI draws without ``tol``; each later round draws fresh samples of its own."""
        view = copy.copy(self)
        view.round_index = index
        view._points, view._cut_block = {}, None
        return view

    def _seed(self, seed: int) -> int:
        return seed if self.round_index == 0 else key(seed, 4, self.round_index)

    def _sobol(self, dims: int, seed: int, device: torch.device) -> Tensor:
        if dims > SOBOL_MAX_DIMS:
            raise ValueError(
                f"NoiseDoI: sampler='sobol' supports up to {SOBOL_MAX_DIMS} dimensions, the points have {dims}; use sampler='random'"
            )
        key = (dims, seed, device)
        if key not in self._points:
            self._points[key] = _sobol_points(dims, self.samples // self.groups, seed).to(device)
        return self._points[key]

    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        seed = self._seed(seed)
        shape, dims = anchors.shape[1:], anchors[0].numel()
        if self.sampler == "random":
            noise = self._normals(rows, seed, dims, anchors)
        else:
            noise = self._sobol_normals(rows, seed, dims, anchors).to(anchors.dtype)
        points = torch.add(rows.take(anchors), noise.view(-1, *shape), alpha=self.sigma, out=noise.view(-1, *shape))  # in place: one pass
        return points, torch.full((rows.stop - rows.start,), self.weight, dtype=anchors.dtype, device=anchors.device)

    def _normals(self, rows: Rows, seed: int, dims: int, like: Tensor) -> Tensor:
        """``(B, dims)`` standard normals; block ``j`` of anchor ``i`` is drawn from a
        generator seeded by ``key(seed, i, j)``."""
        out = torch.empty((rows.stop - rows.start, dims), dtype=like.dtype, device=like.device)
        for anchor, k0, k1, row in rows.segments():
            anchor_id = rows.anchor_id(anchor)
            for block in range(k0 // BLOCK, (k1 - 1) // BLOCK + 1):
                b0, b1 = block * BLOCK, min(block * BLOCK + BLOCK, self.samples)
                lo, hi = max(k0, b0), min(k1, b1)
                dst = out[row + lo - k0 : row + hi - k0]
                if (lo, hi) == (b0, b1):
                    torch.randn(dst.shape, generator=generator(key(seed, 1, anchor_id, block), like.device), out=dst)
                else:
                    dst.copy_(self._block(seed, anchor_id, block, b1 - b0, dims, like)[lo - b0 : hi - b0])
        return out

    def _block(self, seed: int, anchor_id: int, block: int, size: int, dims: int, like: Tensor) -> Tensor:
        """A whole block, kept while a batch boundary cuts it (so it is drawn once)."""
        k = (seed, anchor_id, block, dims, like.device, like.dtype)
        if self._cut_block is None or self._cut_block[0] != k:
            g = generator(key(seed, 1, anchor_id, block), like.device)
            self._cut_block = (k, torch.randn((size, dims), generator=g, dtype=like.dtype, device=like.device))
        return self._cut_block[1]

    def _sobol_normals(self, rows: Rows, seed: int, dims: int, like: Tensor) -> Tensor:
        """``(B, dims)`` float64: Sobol point ``k mod m`` shifted by replicate
        ``k // m``'s uniform vector (drawn from ``key(seed, 2, anchor, replicate)``)."""
        m = self.samples // self.groups
        base = self._sobol(dims, seed, like.device)[rows.index % m]
        first = rows.start // m
        shifts = []
        for group in range(first, (rows.stop - 1) // m + 1):
            anchor, replicate = divmod(group, self.groups)
            g = generator(key(seed, 2, rows.anchor_id(anchor), replicate), like.device)
            shifts.append(torch.rand((dims,), generator=g, dtype=torch.float64, device=like.device))
        local = torch.arange(rows.start, rows.stop, device=like.device) // m - first
        u = torch.frac(base + torch.stack(shifts)[local])
        return normal_from_uniform(u.clamp_(2.0**-54, 1.0 - 2.0**-53))

    def __repr__(self) -> str:
        extra = f", replicates={self.groups}" if self.sampler == "sobol" else ""
        if self.tol is not None:
            extra += f", tol={self.tol:g}, max_samples={self.max_samples}"
        return f"NoiseDoI(sigma={self.sigma}, samples={self.samples}, sampler={self.sampler!r}{extra}, space={self.space!r})"
