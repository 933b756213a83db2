"""Deletion and insertion curves of input attributions (Petsiuk et al. 2018, RISE).

Pixels are ordered by their attribution (summed over channels), most positive first.
The *deletion* curve replaces the first ``⌊t·H·W⌉`` pixels of that order by a baseline
and records the model's score for the image's class, for fractions ``t = 0, 1/S, …, 1``;
the *insertion* curve starts from the baseline image and puts the first pixels back.
A faithful attribution makes the deletion curve fall faster, and the insertion curve rise
faster, than a random order. Each curve is summarised by its area, by the trapezoid rule
over ``t ∈ [0, 1]``: small for deletion, large for insertion.

The score is the logit of the class (``score="logit"``, the default: an attribution of
``ClassQoI(c)`` explains the logit ``f_c``, and it is the logit that it decomposes), its
softmax probability (``"probability"``, which also moves with every other class's
logit), or any callable ``output -> (B,)``. Baselines: a number (``0.0``: black),
``"mean"`` (each image's per-channel mean), ``"blur"`` (a Gaussian blur of the image), or
a tensor broadcastable to the images. All ``(S + 1)`` images of every curve are scored in
batches of ``batch_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doi._base import check_positive_int as check_int

from ..engine import frozen
from ._labelled import pixel_maps

__all__ = ["Curves", "deletion_insertion", "trapezoid_area"]

Score = Union[str, Callable[[Any], Tensor]]


def trapezoid_area(fractions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``Σ_j (t_{j+1} − t_j)(v_j + v_{j+1}) / 2`` along the last axis."""
    t = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return ((v[..., 1:] + v[..., :-1]) * np.diff(t) / 2).sum(-1)


@dataclass(frozen=True, eq=False)
class Curves:
    """Per-image curves ``(N, S + 1)`` at ``fractions (S + 1,)``: ``deletion`` and
    ``insertion`` in attribution order, ``random_deletion`` and ``random_insertion`` in
    a random order (the mean over ``random_orders`` orders)."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray
    random_insertion: np.ndarray
    score: str
    baseline: str

    def area(self, which: str) -> tuple[float, float]:
        """The area under the mean curve ``which`` and its standard error across images
        (the per-image areas' ``sd / √N``)."""
        per_image = trapezoid_area(self.fractions, getattr(self, which))
        n = per_image.shape[0]
        return float(per_image.mean()), float(per_image.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0

    @property
    def areas(self) -> dict[str, float]:
        return {k: self.area(k)[0] for k in ("deletion", "insertion", "random_deletion", "random_insertion")}

    @property
    def faithful(self) -> bool:
        """Deletion falls faster and insertion rises faster than in random order."""
        a = self.areas
        return a["deletion"] < a["random_deletion"] and a["insertion"] > a["random_insertion"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": self.score, "baseline": self.baseline, "images": int(self.deletion.shape[0])}
        for k in ("deletion", "insertion", "random_deletion", "random_insertion"):
            mean, err = self.area(k)
            out[k] = {"auc": mean, "stderr": err, "curve": getattr(self, k).mean(0).tolist()}
        out["fractions"] = self.fractions.tolist()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        lines = [f"deletion / insertion ({self.deletion.shape[0]} images, score {self.score}, baseline {self.baseline}): area under the curve"]
        for k in ("deletion", "random_deletion", "insertion", "random_insertion"):
            mean, err = self.area(k)
            lines.append(f"  {k:<17} {mean:.4f} ± {err:.4f}")
        return "\n".join(lines)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline_images(baseline: Any, x: Tensor) -> tuple[Tensor, str]:
    if isinstance(baseline, Real) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline)), f"{float(baseline):g}"
    if baseline == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).clone(), "mean"
    if baseline == "blur":
        if x.ndim != 4:
            raise ValueError("deletion_insertion: baseline='blur' needs images (N, C, H, W)")
        sigma = max(x.shape[-2:]) / 8
        return _gaussian_blur(x, sigma), f"blur(sigma={sigma:g})"
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(x), x.shape).clone(), f"tensor{tuple(baseline.shape)}"
        except RuntimeError:
            raise ValueError(f"deletion_insertion: baseline of shape {tuple(baseline.shape)} does not fit images {tuple(x.shape)}") from None
    raise TypeError(f"deletion_insertion: baseline must be a number, 'mean', 'blur' or a tensor (got {baseline!r})")


def _scorer(score: Score, target: Tensor) -> tuple[Callable[[Any, Tensor], Tensor], str]:
    if score == "probability":
        return (lambda out, t: out.softmax(1).gather(1, t[:, None]).squeeze(1)), "probability"
    if score == "logit":
        return (lambda out, t: out.gather(1, t[:, None]).squeeze(1)), "logit"
    if callable(score) and not isinstance(score, str):
        return (lambda out, t: score(out)), getattr(score, "__name__", "callable")
    raise ValueError(f"deletion_insertion: score must be 'probability', 'logit' or a callable output -> (B,) (got {score!r})")


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: Tensor | int,
    *,
    steps: int = 16,
    baseline: float | str | Tensor = 0.0,
    score: Score = "logit",
    random_orders: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> Curves:
    """Deletion and insertion curves of ``attributions`` for ``model`` on images ``x``.

    Args:
        x: images ``(N, C, H, W)`` (or ``(N, H, W)``).
        attributions: ``(N, C, H, W)`` or pixel maps ``(N, H, W)`` (e.g. integrated
            gradients ``input_influence(..., LineDoI(...), x, multiply_activation=True).values``).
        target: the class of each image ``(N,)`` (or one int for all), whose score is traced.
        steps: ``S``, the curves have ``S + 1`` points at ``t = j / S``.
        baseline: what removed pixels become (see the module docstring).
        random_orders: random orders averaged for the comparison curves.
        seed: seeds the random orders.

    Returns:
        :class:`Curves`; ``areas`` and ``faithful`` summarise them.
    """
    owner = "deletion_insertion"
    if not isinstance(x, Tensor) or x.ndim not in (3, 4):
        raise ValueError(f"{owner}: x must be images (N, C, H, W) or (N, H, W) (got {type(x).__name__} {tuple(getattr(x, 'shape', ()))})")
    steps = check_int(steps, "steps", owner)
    random_orders = check_int(random_orders, "random_orders", owner)
    batch_size = check_int(batch_size, "batch_size", owner)
    n, (h, w) = x.shape[0], tuple(x.shape[-2:])
    maps = pixel_maps(torch.as_tensor(attributions), x.ndim)
    if tuple(maps.shape) != (n, h, w):
        raise ValueError(f"{owner}: attributions of shape {tuple(attributions.shape)} do not fit images of shape {tuple(x.shape)}")
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((n,), target, dtype=torch.long)
    if not isinstance(target, Tensor) or target.shape != (n,):
        raise ValueError(f"{owner}: target must be an int or a tensor of {n} class indices")
    base, base_name = _baseline_images(baseline, x)
    fn, score_name = _scorer(score, target)
    fractions = np.arange(steps + 1) / steps
    counts = torch.tensor(np.rint(fractions * h * w).astype(np.int64))

    def curves(order: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Deletion and insertion scores ``(N, S + 1)`` for pixel orders ``(N, H·W)``."""
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
        removed = (rank[:, None, :] < counts[None, :, None]).view(n, steps + 1, h, w)  # (N, S+1, H, W)
        if x.ndim == 4:
            removed = removed[:, :, None]
        xs, bs = x[:, None], base[:, None]
        out = []
        for images in (torch.where(removed, bs, xs), torch.where(removed, xs, bs)):
            images = images.flatten(0, 1)
            t = target.repeat_interleave(steps + 1)
            values = []
            with frozen([model]), torch.no_grad():
                for i in range(0, images.shape[0], batch_size):
                    values.append(fn(model(images[i : i + batch_size]), t[i : i + batch_size]).double())
            out.append(torch.cat(values).view(n, steps + 1).numpy())
        return out[0], out[1]

    flat = maps.flatten(1).double()
    deletion, insertion = curves(flat.argsort(dim=1, descending=True, stable=True))
    g = torch.Generator().manual_seed(seed)
    rd, ri = np.zeros_like(deletion), np.zeros_like(insertion)
    for _ in range(random_orders):
        d, i = curves(torch.stack([torch.randperm(h * w, generator=g) for _ in range(n)]))
        rd += d / random_orders
        ri += i / random_orders
    return Curves(fractions, deletion, insertion, rd, ri, score_name, base_name)
