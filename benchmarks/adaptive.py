"""Adaptive precision: ``LineDoI(0, tol=...)`` against uniform rules at equal worst-anchor gap.

Integrated gradients (``multiply_activation``, baseline 0, ``ClassQoI(0)``) of anchors
``randn(3, 16, 16)`` on a small CNN (Conv 3→16, Conv 16→32 stride 2, Conv 32→32 stride 2,
each followed by the activation, then Linear 512→10; Kaiming-normal weights, biases
N(0, 0.1²)) with ReLU and with softplus, in float64. For each net and ``tol``:

* the adaptive query: its gradient rows (``result.samples``), its worst-anchor
  completeness gap ``max_i |Σ attribution_i − Δq_i| / |Δq_i|``, the anchors that missed
  ``tol`` within ``max_steps``;
* for Gauss–Legendre and for the midpoint rule, the smallest uniform step count ``n``
  (the same for every anchor) whose worst-anchor gap is at most the adaptive query's
  worst gap, found by scanning ``n = 1, 2, ...`` up to a cap (the gap is not monotone in
  ``n``: the first ``n`` that gets there is taken, however lucky); and, as a measure of
  that luck, the share of the step counts ``n … 2n`` that get there too (100%: the rule
  is there to stay; on a ReLU net it is far less);
* wall time of the adaptive query and of the two uniform queries (medians of
  interleaved repetitions in a rotated order, after a warm-up), and the ratios
  uniform / adaptive of rows and of time.

The gaps of the uniform rules for every ``n`` come without running the engine ``n``
times: on the ReLU net ``α ↦ q(αx)`` is piecewise linear, its kinks are found layer by
layer and any rule's estimate is a lookup of the slopes at its nodes (exact); on the
softplus net the path derivative ``f(α) = ∇q(αx)·x`` is analytic on ``[0, 1]`` and is
interpolated at Chebyshev points (checked against direct gradients at random ``α`` to
better than 1e-12 of ``|Δq|``). The engine's own gap for the ``n`` found is printed too
(the "uniform gap" column), so the table checks itself.

Run by ``python benchmarks/run.py --only-adaptive`` (or as part of the whole benchmark).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from doi import LineDoI, nodes_and_weights
from influence import input_influence
from qoi import ClassQoI

F64 = torch.float64
RULES = ("gauss-legendre", "midpoint")
CLS = 0


@dataclass(frozen=True)
class Setting:
    """The table's size: anchors, the cap of the uniform scan, and its rows ``(net, tol,
    max_steps)``."""

    anchors: int
    cap: int
    rows: tuple[tuple[str, float, int], ...]
    batch: int = 64


FULL = Setting(
    32, 4096,
    (("ReLU", 1e-2, 1024), ("ReLU", 1e-3, 1024), ("ReLU", 1e-3, 8192), ("softplus", 1e-4, 1024), ("softplus", 1e-6, 1024), ("softplus", 1e-9, 1024)),
)  # fmt: skip
QUICK = Setting(16, 1024, (("ReLU", 1e-2, 1024), ("ReLU", 1e-3, 1024), ("softplus", 1e-4, 1024), ("softplus", 1e-6, 1024)))
TINY = Setting(2, 128, (("ReLU", 1e-2, 1024), ("softplus", 1e-6, 1024)))


def cnn(act: type[nn.Module], seed: int = 0) -> nn.Sequential:
    """``(3, 16, 16) → 10`` in float64 (the network of ``tests/test_adaptive.py``)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), act(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), act(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), act(),
        nn.Flatten(), nn.Linear(512, 10),
    ).double()  # fmt: skip
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=F64) * (2 / fan_in) ** 0.5)
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g, dtype=F64))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def changes(model: nn.Module, x: Tensor) -> np.ndarray:
    """``q(x) − q(0)`` per anchor, from two forward passes."""
    with torch.no_grad():
        return (model(x)[:, CLS] - model(torch.zeros_like(x[:1]))[:, CLS]).numpy()


# --- uniform rules' gaps for any n --------------------------------------------------------


class Paths(ABC):
    """The uniform rules' gaps of a set of anchors, for any rule and step count."""

    memo: dict[tuple[str, int], float]

    @abstractmethod
    def gaps(self, rule: str, n: int) -> np.ndarray:
        """The relative completeness gap of each anchor with ``n`` uniform steps of ``rule``."""

    def worst(self, rule: str, n: int) -> float:
        """The worst-anchor gap (remembered: Gauss–Legendre nodes for large ``n`` are slow)."""
        if (rule, n) not in self.memo:
            self.memo[rule, n] = float(self.gaps(rule, n).max())
        return self.memo[rule, n]


class ReluPaths(Paths):
    """The exact path ``α ↦ q(αx)`` of each anchor on a sequential ReLU net: continuous and
    piecewise linear. Layer by layer, the activations along the line are kept at the kinks
    found so far (between which they are linear): an affine layer maps them as they are,
    a ReLU adds the points where a unit changes sign on a piece."""

    def __init__(self, model: nn.Sequential, x: Tensor) -> None:
        kinks, slopes, change = [], [], []
        for i, xi in enumerate(x):
            a, s, dq = self._path(model, xi)
            kinks.append(a + 2 * i)  # anchor i's kinks in [2i, 2i + 1]: one sorted array for all
            slopes.append(s)
            change.append(dq)
        self.kinks, self.slopes, self.change = np.concatenate(kinks), np.concatenate(slopes), np.array(change)
        self.shift = 2.0 * np.arange(len(x))[:, None]
        self.offset = np.arange(len(x))[:, None] + 1
        self.slack = 1e-13  # float64 rounding of the slopes' sums against the engine's
        self.memo: dict[tuple[str, int], float] = {}

    @staticmethod
    def _path(model: nn.Sequential, x: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
        a = torch.tensor([0.0, 1.0], dtype=F64)
        h = torch.stack([torch.zeros_like(x), x])
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.ReLU):
                    flat = h.reshape(h.shape[0], -1)
                    lo, hi = flat[:-1], flat[1:]
                    piece, unit = (((lo < 0) & (hi > 0)) | ((lo > 0) & (hi < 0))).nonzero(as_tuple=True)
                    t = lo[piece, unit] / (lo[piece, unit] - hi[piece, unit])
                    kinks = torch.unique(torch.cat([a, a[piece] + t * (a[piece + 1] - a[piece])]))
                    j = (torch.searchsorted(a, kinks, right=True) - 1).clamp(max=a.shape[0] - 2)
                    u = ((kinks - a[j]) / (a[j + 1] - a[j])).view(-1, *[1] * (h.ndim - 1))
                    h, a = torch.relu(torch.lerp(h[j], h[j + 1], u)), kinks
                else:
                    h = layer(h)
        q = h[:, CLS]
        return a.numpy(), ((q[1:] - q[:-1]) / (a[1:] - a[:-1])).numpy(), float(q[-1] - q[0])

    def gaps(self, rule: str, n: int) -> np.ndarray:
        """``|Σ_k w_k f(α_k) − Δq| / |Δq|`` per anchor, ``f`` the slope at each node."""
        alpha, weight = nodes_and_weights(rule, n)
        where = np.searchsorted(self.kinks, alpha[None, :] + self.shift, side="right")
        estimate = self.slopes[where - self.offset] @ weight
        return np.abs(estimate - self.change) / np.abs(self.change)


def path_derivative(model: nn.Module, x: Tensor, alpha: np.ndarray, batch: int = 512) -> np.ndarray:
    """``f_i(α) = ∇q(αx_i)·x_i``, ``(N, len(alpha))``."""
    n, k = x.shape[0], len(alpha)
    a = torch.tensor(alpha, dtype=F64)
    out = torch.empty(n * k, dtype=F64)
    for start in range(0, n * k, batch):
        r = torch.arange(start, min(start + batch, n * k))
        i, j = r // k, r % k
        points = (x[i] * a[j].view(-1, *[1] * (x.ndim - 1))).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(points)[:, CLS].sum(), points)
        out[r] = (grad * x[i]).flatten(1).sum(1)
    return out.view(n, k).numpy()


class SmoothPaths(Paths):
    """The path derivative of each anchor on a smooth net, interpolated at ``M``
    Chebyshev points of ``[0, 1]`` (barycentric form); ``M`` doubles until direct
    gradients at random ``α`` agree to 1e-12 of ``|Δq|`` (or ``M = 1025``)."""

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        self.change = changes(model, x)
        probe = np.random.default_rng(0).random(16)
        direct = path_derivative(model, x, probe)
        m = 33
        while True:
            j = np.arange(m)
            self.nodes = (1 - np.cos(np.pi * j / (m - 1))) / 2
            self.weights = (-1.0) ** j
            self.weights[[0, -1]] /= 2
            self.values = path_derivative(model, x, self.nodes)
            self.error = float((np.abs(self.at(probe) - direct) / np.abs(self.change)[:, None]).max())
            if self.error <= 1e-12 or m >= 1025:
                break
            m = 2 * m - 1
        self.m = m
        self.slack = 10 * self.error
        self.memo: dict[tuple[str, int], float] = {}

    def at(self, alpha: np.ndarray) -> np.ndarray:
        """The interpolants at ``alpha``, ``(N, len(alpha))``."""
        diff = alpha[:, None] - self.nodes[None, :]
        hit = diff == 0
        diff[hit] = 1.0
        c = self.weights / diff
        out = (c @ self.values.T) / c.sum(1, keepdims=True)
        rows, cols = np.nonzero(hit)
        out[rows] = self.values[:, cols].T
        return out.T

    def gaps(self, rule: str, n: int) -> np.ndarray:
        alpha, weight = nodes_and_weights(rule, n)
        return np.abs(self.at(alpha) @ weight - self.change) / np.abs(self.change)


def first_uniform(worst: Callable[[str, int], float], rule: str, limit: float, cap: int) -> int | None:
    """The smallest ``n ≤ cap`` whose worst-anchor gap is at most ``limit``."""
    for n in range(1, cap + 1):
        if worst(rule, n) <= limit:
            return n
    return None


def share_uniform(worst: Callable[[str, int], float], rule: str, limit: float, first: int) -> float:
    """The share of ``n`` in ``first … 2·first`` whose worst-anchor gap is at most ``limit``."""
    counts = range(first, 2 * first + 1)
    return sum(worst(rule, n) <= limit for n in counts) / len(counts)


# --- the table -----------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # anchors that miss tol: counted in the table
        return fn()


HEADER = (
    "| net | tol | max_steps | adaptive rows | missed | adaptive gap | adaptive ms | rule | steps | n…2n too | uniform rows | uniform gap | uniform ms "
    "| rows uniform/adaptive | time uniform/adaptive |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def adaptive_table(reps: int, setting: Setting) -> list[dict[str, Any]]:
    """Print the table (one row per net, tol and uniform rule); return its rows."""
    x = torch.randn(setting.anchors, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=F64)
    nets = {"ReLU": cnn(nn.ReLU), "softplus": cnn(nn.Softplus)}
    print(
        f"\nAdaptive precision: LineDoI(0, tol) against uniform rules at equal worst-anchor gap; integrated gradients of "
        f"{setting.anchors} anchors randn(3, 16, 16), ClassQoI(0), CNN 3→16→32→32 (+ Linear 512→10), float64, batch {setting.batch}; "
        f"steps: the first uniform n ≤ {setting.cap} whose worst gap is at most the adaptive one; n…2n too: the share of the step counts "
        f"n to 2n that reach it too ({reps} interleaved repetitions, medians):"
    )
    print(HEADER, flush=True)
    paths: dict[str, Paths] = {}
    out = []
    for name, tol, max_steps in setting.rows:
        model = nets[name]
        if name not in paths:
            paths[name] = ReluPaths(model, x) if name == "ReLU" else SmoothPaths(model, x)
        worst = paths[name].worst

        def run(doi: LineDoI, model: nn.Module = model) -> Any:
            return _quiet(lambda: input_influence(model, ClassQoI(CLS), doi, x, multiply_activation=True, batch_size=setting.batch, seed=0))

        adaptive = LineDoI(0.0, tol=tol, max_steps=max_steps)
        result = run(adaptive)  # also the warm-up
        target = float(result.completeness.max())
        limit = target * (1 + 1e-6) + paths[name].slack  # equal gaps count (rounding, interpolation)
        fns: dict[str, Callable[[], Any]] = {"adaptive": lambda d=adaptive: run(d)}
        found: dict[str, dict[str, Any]] = {}
        for rule in RULES:
            n = first_uniform(worst, rule, limit, setting.cap)
            entry: dict[str, Any] = {"steps": n, "share": None, "gap": None}
            if n is not None:
                entry["share"] = share_uniform(worst, rule, limit, n)
                uniform = LineDoI(0.0, n, rule)  # type: ignore[arg-type]
                entry["gap"] = float(run(uniform).completeness.max())  # the engine's own gap (and the warm-up)
                fns[rule] = lambda d=uniform: run(d)
            found[rule] = entry
        times: dict[str, list[float]] = {k: [] for k in fns}
        keys = list(fns)
        for rep in range(reps):  # interleaved, the order rotated
            for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
                times[key].append(_timed(fns[key]))
        med = {k: statistics.median(v) for k, v in times.items()}
        for rule in RULES:
            row = {
                "net": name, "tol": tol, "max_steps": max_steps, "adaptive_rows": result.samples, "missed": result.query["tol_missed"],
                "adaptive_gap": target, "adaptive_s": med["adaptive"], "rule": rule, **found[rule],
                "uniform_s": med.get(rule), "anchors": setting.anchors, "cap": setting.cap,
            }  # fmt: skip
            out.append(row)
            print(_format(row), flush=True)
    if "softplus" in paths:
        smooth = paths["softplus"]
        print(f"(softplus paths: Chebyshev interpolants at {smooth.m} points, within {smooth.error:.0e} of |Δq| at random α)")
    return out


def _short(x: float) -> str:
    """``1e-2``, ``2.5e-3``."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _format(row: dict[str, Any]) -> str:
    n, cap, anchors = row["steps"], row["cap"], row["anchors"]
    rows = None if n is None else n * anchors
    cells = [
        row["net"], _short(row["tol"]), str(row["max_steps"]), str(row["adaptive_rows"]), str(row["missed"]), f"{row['adaptive_gap']:.1e}",
        f"{row['adaptive_s'] * 1e3:.1f}", row["rule"], str(n) if n is not None else f">{cap}",
        f"{100 * row['share']:.0f}%" if row["share"] is not None else "–", str(rows) if rows is not None else f">{cap * anchors}",
        f"{row['gap']:.1e}" if row["gap"] is not None else "–", f"{row['uniform_s'] * 1e3:.1f}" if row["uniform_s"] is not None else "–",
        f"{rows / row['adaptive_rows']:.2f}×" if rows is not None else f">{cap * anchors / row['adaptive_rows']:.1f}×",
        f"{row['uniform_s'] / row['adaptive_s']:.2f}×" if row["uniform_s"] is not None else "–",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"

