"""Background / spurious-feature audit: how much of each class's attribution falls in a
region of the image?

For every image ``x_i`` of class ``c`` the attribution ``A_i`` (by default integrated
gradients of ``f_c`` from a black baseline: ``input_influence(model, ClassQoI(c),
LineDoI(0, tol=0.01), x, multiply_activation=True)``) is summed over channels into a pixel map
``a_i (H, W)``. With ``R_i`` the region (a mask over the pixels),

    positive share  s⁺_i = Σ_{p∈R_i} max(a_ip, 0) / Σ_p max(a_ip, 0)
    absolute share  s_i  = Σ_{p∈R_i} |a_ip| / Σ_p |a_ip|
    area share      r_i  = |R_i| / (H·W)

and per class the means over its images with their standard errors
``sd / √n``. A class is *flagged* when its mean share (positive by default) exceeds
``factor ×`` its mean area share: the model puts more of its evidence there than the
region's size would explain.

A region is a bool mask ``(H, W)`` or ``(N, H, W)`` (tensor or NumPy array), a rectangle
:class:`~influence.workflows.regions.Rect` ``(top, left, height, width)`` in pixels (the
argument order of torchvision's ``crop``; a plain 4-tuple in that order too), or a callable ``x (N, C, H, W) -> (N, H, W)`` bool mask (e.g. the background of each
image, ``lambda x: x.amax(1) < 0.5``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from doi import LineDoI, PointDoI, PointwiseDoI
from qoi import ClassQoI, as_qoi

from ..engine import count_missed, input_influence, tol_counted
from .regions import Rect, Region, region_mask
from ._labelled import check_choice, class_list, labelled, pixel_maps
from ..engine import InfluenceResult

__all__ = ["Region", "Rect", "AuditRow", "AuditResult", "audit", "region_mask"]

@dataclass(frozen=True)
class AuditRow:
    """One class: its ``n`` images' mean shares of positive and of absolute attribution
    inside the region, their standard errors, the region's mean area share, and whether
    the class is ``flagged``."""

    label: int
    n: int
    positive_share: float
    positive_stderr: float
    absolute_share: float
    absolute_stderr: float
    area_share: float
    flagged: bool

    @property
    def ratio(self) -> float:
        """Positive share over area share (how many times its size the region weighs);
        NaN when the region is empty on every point of the class (nothing to weigh)."""
        return self.positive_share / self.area_share if self.area_share > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class AuditResult:
    """The answer of :func:`audit`: one :class:`AuditRow` per class, and the per-image
    arrays behind them (``maps`` the pixel attributions ``(N, H, W)`` float64, ``masks``
    the regions ``(N, H, W)``, ``labels (N,)``, ``positive``/``absolute`` the per-image
    shares ``(N,)``, ``index`` each image's row in the data)."""

    rows: tuple[AuditRow, ...]
    factor: float
    flag_on: str
    region: str
    attribution: str
    maps: Tensor
    masks: Tensor
    labels: Tensor
    positive: Tensor
    absolute: Tensor
    index: Tensor
    area: str = "area"  # what the region's size is measured in ("area": pixels, "tokens")
    completeness: Tensor | None = None  # (N,) each point's completeness gap (attributions along a line)
    tol: float | None = None  # the lines' tolerance, when adaptive

    @property
    def missed(self) -> int:
        """How many points' lines did not reach ``tol`` (their gaps are in ``completeness``)."""
        if self.tol is None or self.completeness is None:
            return 0
        return int((self.completeness > self.tol).sum())

    @property
    def flagged(self) -> tuple[int, ...]:
        """The labels of the flagged classes."""
        return tuple(r.label for r in self.rows if r.flagged)

    def row(self, label: int) -> AuditRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"AuditResult: no class {label} (classes {[r.label for r in self.rows]})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "attribution": self.attribution,
            "factor": self.factor,
            "flag_on": self.flag_on,
            "area": self.area,
            "flagged": list(self.flagged),
            "completeness": None if self.completeness is None else {"median": float(self.completeness.median()), "max": float(self.completeness.max())},
            "tol": self.tol,
            "missed": self.missed,
            "rows": [
                {
                    "label": r.label,
                    "n": r.n,
                    "positive_share": r.positive_share,
                    "positive_stderr": r.positive_stderr,
                    "absolute_share": r.absolute_share,
                    "absolute_stderr": r.absolute_stderr,
                    "area_share": r.area_share,
                    "ratio": r.ratio if math.isfinite(r.ratio) else None,  # None: the region is empty
                    "flagged": r.flagged,
                }
                for r in self.rows
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        lines = [
            f"audit of region {self.region}; flag: {self.flag_on} share > {self.factor:g} x {self.area} share",
            f"  shares of the {self.attribution} inside the region, per class (mean ± stderr over its {'images' if self.area == 'area' else 'sentences'})",
            f"{'class':>5} {'n':>4}  {'positive share':>16}  {'|attribution| share':>19}  {self.area[:6]:>6}  {'ratio':>6}  flag",
        ]
        for r in self.rows:
            lines.append(
                f"{r.label:>5} {r.n:>4}  {r.positive_share:>7.3f} ± {r.positive_stderr:<6.3f}  "
                f"{r.absolute_share:>10.3f} ± {r.absolute_stderr:<6.3f}  {r.area_share:>6.3f}  {(f'{r.ratio:.1f}' if math.isfinite(r.ratio) else '-'):>6}  {'FLAG' if r.flagged else ''}".rstrip()
            )
        if self.missed:
            assert self.completeness is not None
            lines.append(f"  {self.missed} of {self.completeness.numel()} points did not reach tol {self.tol:g} (largest completeness gap {float(self.completeness.max()):.2g})")
        return "\n".join(lines)


def _describe_region(region: Region) -> str:
    if isinstance(region, (tuple, list)):
        return "rectangle(top={}, left={}, height={}, width={})".format(*region)  # a Rect too
    if isinstance(region, (Tensor, np.ndarray)):
        return f"mask{tuple(region.shape)}"
    return f"callable {getattr(region, '__name__', type(region).__name__)}"


def _describe_attribution(each: PointwiseDoI, multiply: bool) -> str:
    if multiply and isinstance(each, LineDoI) and each.space == "input":
        baseline = each.baseline if isinstance(each.baseline, (int, float)) else type(each.baseline).__name__
        steps = f"tol {each.tol:g}" if each.tol is not None else f"{each.steps} steps"
        return f"integrated gradients (baseline {baseline}, {steps})"
    if multiply and isinstance(each, PointDoI):
        return "gradient x input"
    return f"{'attribution' if multiply else 'influence'} {each!r}"


def _mean_stderr(v: Tensor) -> tuple[float, float]:
    n = v.shape[0]
    mean = float(v.mean())
    return mean, float(v.std(correction=1) / n**0.5) if n > 1 else 0.0


def audit_row(label: int, a: Tensor, m: Tensor, valid: Tensor | None, factor: float, flag_on: str) -> tuple[AuditRow, Tensor, Tensor]:
    """One class's row from its points' attribution maps ``a`` and regions ``m`` (same
    shape ``(n, ...)``), and the per-point positive and absolute shares. ``valid`` (the
    same shape, or ``None`` for all) marks the places that count for the area share
    (not padding)."""
    plus, mag = a.clamp_min(0), a.abs()
    tiny = torch.finfo(torch.float64).tiny
    s_pos = (plus * m).flatten(1).sum(1) / plus.flatten(1).sum(1).clamp_min(tiny)
    s_abs = (mag * m).flatten(1).sum(1) / mag.flatten(1).sum(1).clamp_min(tiny)
    if valid is None:
        area = m.flatten(1).double().mean(1)
    else:
        area = (m & valid).flatten(1).double().sum(1) / valid.flatten(1).double().sum(1).clamp_min(1)
    (p_mean, p_err), (a_mean, a_err) = _mean_stderr(s_pos), _mean_stderr(s_abs)
    area_mean = float(area.mean())
    share = p_mean if flag_on == "positive" else a_mean
    return AuditRow(label, int(a.shape[0]), p_mean, p_err, a_mean, a_err, area_mean, share > factor * area_mean), s_pos, s_abs


def audit(
    model: torch.nn.Module,
    data: Any,
    region: Region,
    *,
    factor: float = 3.0,
    classes: int | Sequence[int] | None = None,
    each: PointwiseDoI | None = None,
    multiply_activation: bool = True,
    qoi: Callable[[int], Any] | None = None,
    flag_on: Literal["positive", "absolute"] = "positive",
    batch_size: int = 64,
    seed: int = 0,
) -> AuditResult:
    """For each class, the share of its images' attribution that falls in ``region``,
    against the region's share of the area.

    Args:
        model: an image classifier, inputs ``(N, C, H, W)`` (or ``(N, H, W)``).
        data: labelled images ``(x, y)`` or ``{"x": ..., "y": ...}``.
        region: a bool mask ``(H, W)``/``(N, H, W)``, a rectangle ``(top, left, height,
            width)`` or a callable ``x -> (N, H, W)`` bool mask.
        factor: flag a class whose share exceeds ``factor ×`` its area share.
        classes: which classes to audit (default: every label in ``data``).
        each: the pointwise DoI of the attribution (default ``LineDoI(0.0, tol=0.01)``:
            integrated gradients from black with ``multiply_activation``, each image's
            steps chosen to bring its completeness gap within 1 %).
        qoi: the quantity explained for an image of class ``c``, ``qoi(c)`` (default
            ``ClassQoI(c)``).
        flag_on: which share the flag compares, ``"positive"`` or ``"absolute"``.

    Returns:
        :class:`AuditResult` (``to_table()``, ``to_json()``, ``flagged``).
    """
    owner = "audit"
    x, y = labelled(data, owner)
    if x.ndim not in (3, 4):
        raise ValueError(f"{owner}: images must be (N, C, H, W) or (N, H, W) (got shape {tuple(x.shape)})")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"{owner}: factor must be a number > 0 (got {factor!r})")
    check_choice(flag_on, "flag_on", owner, ("positive", "absolute"))
    labels = class_list(classes, y, "classes", owner)
    each = LineDoI(0.0, tol=0.01) if each is None else each
    if not isinstance(each, PointwiseDoI):
        raise TypeError(f"{owner}: each must be a pointwise DoI (PointDoI, LineDoI, NoiseDoI) (got {type(each).__name__})")
    masks_all = region_mask(region, x)
    rows, maps, masks, ys, pos, absl, idx, gaps = [], [], [], [], [], [], [], []
    description = ""
    with tol_counted(owner, "images") as counts:
        found = []
        for c in labels:
            where = torch.nonzero(y == c).flatten()
            q = as_qoi(qoi(c) if qoi is not None else ClassQoI(c))
            result = input_influence(model, q, each, x[where], batch_size=batch_size, multiply_activation=multiply_activation, seed=seed)
            assert isinstance(result, InfluenceResult)
            count_missed(counts, result)
            found.append((c, where, result))
    for c, where, result in found:
        if result.completeness is not None:
            gaps.append(result.completeness)
        description = description or _describe_attribution(each, multiply_activation)
        a = pixel_maps(result.values, x.ndim)
        m = masks_all[where]
        row, s_pos, s_abs = audit_row(c, a, m, None, factor, flag_on)
        rows.append(row)
        maps.append(a)
        masks.append(m)
        ys.append(y[where])
        pos.append(s_pos)
        absl.append(s_abs)
        idx.append(where)
    return AuditResult(
        rows=tuple(rows),
        factor=float(factor),
        flag_on=flag_on,
        region=_describe_region(region),
        attribution=description,
        maps=torch.cat(maps),
        masks=torch.cat(masks),
        labels=torch.cat(ys),
        positive=torch.cat(pos),
        absolute=torch.cat(absl),
        index=torch.cat(idx),
        completeness=torch.cat(gaps) if gaps else None,
        tol=each.tol if isinstance(each, LineDoI) else None,
    )
