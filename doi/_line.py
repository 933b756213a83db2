"""The line DoI: the straight path from a baseline ``b`` to the anchor ``x``.

``∫₀¹ ∇(q∘g)(b + α(x − b)) dα ≈ Σ_k w_k ∇(q∘g)(b + α_k(x − b))`` with the nodes and
weights of a quadrature rule (:mod:`doi._quadrature`). Times ``(x − b)`` this is
integrated gradients, whose sum equals ``q(x) − q(b)`` (completeness) in the limit.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Callable, Union

import torch
from torch import Tensor

from ._base import PointwiseDoI, Rows, Space, check_positive_int, check_space
from ._quadrature import RULES, Rule, nodes_and_weights

Baseline = Union[float, Tensor, Callable[[Tensor], Tensor]]


def resolve_baseline(baseline: Baseline, anchors: Tensor, anchor_id: Tensor, owner: str, space: str) -> Tensor:
    """The baseline of each anchor, ``(n, *shape)``, from a scalar, a tensor broadcastable
    to the anchors (e.g. one point ``shape`` or ``(1, *shape)``), a tensor with one row per
    anchor ``(N, *shape)`` (indexed by ``anchor_id``), or a callable of the anchors. A
    baseline shared by all anchors comes back as a broadcast view (stride 0)."""
    shape = tuple(anchors.shape[1:])
    where = "inputs" if space == "input" else "activations at the cut"
    if isinstance(baseline, Real):
        return torch.full((1,) * anchors.ndim, float(baseline), dtype=anchors.dtype, device=anchors.device).expand(anchors.shape)
    value = baseline(anchors) if callable(baseline) and not isinstance(baseline, Tensor) else baseline
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: baseline must be a number, a tensor or a callable returning a tensor (got {type(value).__name__})")
    value = value.to(device=anchors.device, dtype=anchors.dtype)
    expected = f"a scalar, a tensor broadcastable to {shape}, or one row per point: (N, {', '.join(map(str, shape))})"
    if value.ndim == anchors.ndim and value.shape[0] != 1 and not callable(baseline):
        if tuple(value.shape[1:]) != shape:
            raise ValueError(f"{owner}: baseline of shape {tuple(value.shape)} does not fit {where} of shape {shape}; expected {expected}")
        if int(anchor_id.max()) >= value.shape[0]:
            raise ValueError(
                f"{owner}: baseline has {value.shape[0]} rows but point {int(anchor_id.max())} needs one; expected {expected}"
            )
        return value[anchor_id]
    try:
        return torch.broadcast_to(value, anchors.shape)
    except RuntimeError:
        raise ValueError(f"{owner}: baseline of shape {tuple(value.shape)} does not fit {where} of shape {shape}; expected {expected}") from None


class LineDoI(PointwiseDoI):
    """Uniform on the segment from ``baseline`` to each anchor, by quadrature.

    Args:
        baseline: a number, a tensor broadcastable to one point or with one row per
            point ``(N, *shape)``, or a callable ``anchors (n, *shape) -> (n, *shape)``.
            In ``space="slice"`` it is an activation at the cut.
        steps: number of quadrature nodes ``S``.
        rule: ``"gauss-legendre"`` (default; exact for polynomials of degree
            ``2S − 1``), ``"riemann-left"``, ``"riemann-right"``, ``"midpoint"`` or
            ``"trapezoid"``. Every rule's weights sum to 1.
        space: ``"input"`` (the path is in input space and goes through ``h``) or
            ``"slice"`` (the path is between ``h(x)`` and the baseline at the cut; ``h``
            runs once per anchor).
        tol: choose each anchor's steps to meet this tolerance instead of a fixed
            ``steps`` (see :mod:`doi._adaptive`): with ``multiply_activation`` its
            relative completeness gap (for a line at the cut: in slice space, or at
            the input), otherwise the relative L2 change between two successive
            estimates. ``result.steps`` tells how many each anchor took.
        max_steps: the most gradient evaluations per anchor with ``tol``; an anchor
            that is not within ``tol`` by then is reported (``result.completeness``,
            a warning that counts them).
    """

    groups = 1
    affine_equivariant = True

    def __init__(
        self,
        baseline: Baseline = 0.0,
        steps: int | None = None,
        rule: Rule = "gauss-legendre",
        space: Space = "input",
        *,
        tol: float | None = None,
        max_steps: int = 1024,
    ) -> None:
        if not (isinstance(baseline, (Real, Tensor)) or callable(baseline)) or isinstance(baseline, bool):
            raise TypeError(f"LineDoI: baseline must be a number, a tensor or a callable (got {type(baseline).__name__})")
        self.baseline = baseline
        if tol is not None:
            if isinstance(tol, bool) or not isinstance(tol, Real) or not 0 < float(tol) < 1:
                raise ValueError(f"LineDoI: tol must be a number in (0, 1), a relative error (got {tol!r})")
            if steps is not None or rule != "gauss-legendre":
                raise ValueError("LineDoI: tol chooses the steps (and the rule) of each anchor; give tol or steps/rule, not both (cap the steps with max_steps)")
        self.tol = None if tol is None else float(tol)
        self.max_steps = check_positive_int(max_steps, "max_steps", "LineDoI", 8)
        self.steps = check_positive_int(32 if steps is None else steps, "steps", "LineDoI")
        if rule not in RULES:
            raise ValueError(f"LineDoI: rule must be one of {RULES} (got {rule!r})")
        if rule == "trapezoid" and self.steps < 2:
            raise ValueError(f"LineDoI: steps must be >= 2 for rule 'trapezoid' (got {steps})")
        self.rule = rule
        self.space = check_space(space, "LineDoI")
        self.samples = self.steps
        self._nodes: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @property
    def adaptive(self) -> bool:
        """Are the steps chosen per anchor (``tol`` given)?"""
        return self.tol is not None

    def reference(self, anchors: Tensor, anchor_id: Tensor) -> Tensor:
        return resolve_baseline(self.baseline, anchors, anchor_id, "LineDoI", self.space)

    def nodes(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(α, w)`` as tensors on ``device``, cached."""
        key = (device, dtype)
        if key not in self._nodes:
            alpha, weight = nodes_and_weights(self.rule, self.steps)
            self._nodes[key] = (torch.tensor(alpha, dtype=dtype, device=device), torch.tensor(weight, dtype=dtype, device=device))
        return self._nodes[key]

    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        assert reference is not None
        alpha, weight = self.nodes(anchors.device, anchors.dtype)
        x, b = rows.take(anchors), rows.take(reference)
        a = alpha[rows.index].view(-1, *([1] * (anchors.ndim - 1)))
        return torch.lerp(b, x, a), weight[rows.index]

    def __repr__(self) -> str:
        baseline: Any = self.baseline
        if isinstance(baseline, Tensor):
            baseline = f"tensor{tuple(baseline.shape)}"
        elif callable(baseline):
            baseline = getattr(baseline, "__name__", "callable")
        if self.tol is not None:
            return f"LineDoI(baseline={baseline}, tol={self.tol:g}, max_steps={self.max_steps}, space={self.space!r})"
        return f"LineDoI(baseline={baseline}, steps={self.steps}, rule={self.rule!r}, space={self.space!r})"


class LineNodes(PointwiseDoI):
    """Samples on each anchor's line at nodes of its own: anchor ``i`` (of a chunk) gets
    the points ``b_i + α_ik (x_i − b_i)`` with weights ``w_ik``, ``k < S``, from tables
    ``alpha`` and ``weight`` of shape ``(n, S)``. One round of an adaptive line
    (:mod:`doi._adaptive`): the engine integrates it like any pointwise DoI."""

    groups = 1
    affine_equivariant = True

    def __init__(self, alpha: Tensor, weight: Tensor, space: Space) -> None:
        if alpha.ndim != 2 or alpha.shape != weight.shape:
            raise ValueError(f"LineNodes: alpha and weight must be (n, S) tables of one shape (got {tuple(alpha.shape)} and {tuple(weight.shape)})")
        self.alpha, self.table_weight, self.space = alpha, weight, space
        self.samples = int(alpha.shape[1])

    def draw(self, anchors: Tensor, reference: Tensor | None, rows: Rows, seed: int) -> tuple[Tensor, Tensor]:
        assert reference is not None
        at = (rows.anchor, rows.index)
        x, b = rows.take(anchors), rows.take(reference)
        a = self.alpha.to(anchors)[at].view(-1, *([1] * (anchors.ndim - 1)))
        return torch.lerp(b, x, a), self.table_weight.to(anchors)[at]
