"""Generated data and a small model, for examples, tests and demos.

``glyph_images`` draws a ten-class (by default) image problem whose answer is known: each
class is one fixed glyph (a few thick strokes in the middle of the image), jittered by up
to two pixels and laid on a faint noisy background. With ``cue_class=c`` the *training*
images of class ``c`` also carry a spurious cue — a bright red patch in the top-left
corner, outside the glyph — that the test split never has, so a model trained on it may
learn the shortcut and an audit should find influence on that corner.

``trained_cnn`` trains :func:`small_cnn` on it in a few seconds on a CPU (deterministic
for a seed) and is what the ``examples/*.yaml`` query files use as their model::

    model: {factory: "influence.synthetic:trained_cnn", kwargs: {seed: 0}}
    data:  {factory: "influence.synthetic:glyph_images", kwargs: {split: test}}

Shapes: ``x`` is ``(N, 3, size, size)`` float32, ``y`` ``(N,)`` int64, ``foreground``
``(N, size, size)`` bool; ``N = classes · n_per_class``, class-major order.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doi._base import check_positive_int

from .regions import Rect

__all__ = ["glyph_images", "glyph", "cue_box", "small_cnn", "train", "trained_cnn", "accuracy"]

_SPLITS = ("train", "test")
_GLYPH_SEED = 0x5EED_6147  # glyph shapes depend on the class only, never on `seed`
_JITTER = 2  # pixels, each way
_NOISE = 0.1  # background noise amplitude
_CUE_VALUE = 1.0  # red-channel value of the spurious patch at cue_strength 1


def _check_int(value: Any, name: str, minimum: int) -> int:
    return check_positive_int(value, name, "glyph_images", minimum)


def glyph(label: int, size: int = 16) -> Tensor:
    """The un-jittered glyph of class ``label``: a ``(size, size)`` bool mask of three
    thick strokes between random points of the central square ``[size/4, 3·size/4)``,
    drawn from a generator seeded by the class alone (the same for every split and seed)."""
    g = torch.Generator().manual_seed(_GLYPH_SEED + 7919 * int(label))
    lo, hi = size / 4 + 0.5, 3 * size / 4 - 1.5  # stroke centres; radius 1 keeps them in the square
    points = lo + (hi - lo) * torch.rand(4, 2, generator=g, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    pixel = torch.stack([rows, cols], -1)  # (size, size, 2)
    mask = torch.zeros(size, size, dtype=torch.bool)
    for a, b in zip(points[:-1], points[1:]):  # a polyline through the four points
        ab = b - a
        t = ((pixel - a) @ ab / ab.dot(ab).clamp_min(1e-12)).clamp(0, 1)
        distance = (pixel - (a + t[..., None] * ab)).norm(dim=-1)
        mask |= distance <= 1.0
    return mask


def cue_box(size: int = 16) -> Rect:
    """The spurious cue patch, a :class:`~influence.workflows.regions.Rect` ``(top, left,
    height, width)``: the top-left square of side ``size // 8 + 1`` pixels (the cue is put only on its background
    pixels; a jittered glyph reaches into it rarely, by one corner pixel)."""
    p = size // 8 + 1
    return Rect(0, 0, p, p)


def glyph_images(
    n_per_class: int = 100,
    classes: int = 10,
    size: int = 16,
    seed: int = 0,
    split: str = "train",
    cue_class: int | None = None,
    cue_strength: float = 1.0,
) -> dict[str, Tensor]:
    """A labelled image set: ``{"x": (N, 3, size, size) float32, "y": (N,) int64,
    "foreground": (N, size, size) bool}``, ``N = classes · n_per_class``.

    Each image is its class's glyph (:func:`glyph`, white in all three channels) shifted
    by an integer offset in ``[-2, 2]²`` on a background of uniform noise in ``[0, 0.1)``
    per channel. ``foreground`` marks the glyph's pixels. With ``cue_class`` set and
    ``split="train"``, images of that class also get ``cue_strength`` added to the red
    channel on the background pixels of :func:`cue_box`. The train and test splits of one
    ``seed`` are different draws; the same arguments give the same tensors.
    """
    n_per_class = _check_int(n_per_class, "n_per_class", 1)
    classes = _check_int(classes, "classes", 1)
    size = _check_int(size, "size", 8)
    seed = _check_int(seed, "seed", 0)
    if split not in _SPLITS:
        raise ValueError(f"glyph_images: split must be 'train' or 'test' (got {split!r})")
    if cue_class is not None:
        _check_int(cue_class, "cue_class", 0)
        if cue_class >= classes:
            raise ValueError(f"glyph_images: cue_class must be < classes={classes} (got {cue_class})")
    if isinstance(cue_strength, bool) or not isinstance(cue_strength, (int, float)):
        raise TypeError(f"glyph_images: cue_strength must be a number (got {type(cue_strength).__name__})")

    g = torch.Generator().manual_seed(2 * seed + _SPLITS.index(split))
    glyphs = torch.stack([glyph(c, size) for c in range(classes)])  # (classes, size, size)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    n = y.shape[0]
    shifts = torch.randint(-_JITTER, _JITTER + 1, (n, 2), generator=g)
    foreground = torch.stack([torch.roll(glyphs[c], (int(dr), int(dc)), dims=(0, 1)) for c, (dr, dc) in zip(y.tolist(), shifts)])
    x = _NOISE * torch.rand(n, 3, size, size, generator=g)
    x = torch.where(foreground[:, None], torch.ones(()), x)
    if cue_class is not None and split == "train":
        patch = cue_box(size).mask(size, size)
        where = (y == cue_class)[:, None, None] & patch & ~foreground
        x[:, 0] += float(cue_strength) * _CUE_VALUE * where
    return {"x": x.contiguous(), "y": y, "foreground": foreground}


class Residual(nn.Module):
    """``relu_out(x + conv_b(relu_a(conv_a(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu_out(x + self.conv_b(self.relu_a(self.conv_a(x))))


class SmallCNN(nn.Module):
    """``conv1 → relu1 → conv2 → relu2 → pool → res → gap → flatten → fc`` on
    ``(3, S, S)`` inputs; ``res`` is a residual block, ``gap`` pools to ``2 × 2``.

    Unit shapes for ``S = 16``, ``width = w``: ``conv1``/``relu1`` ``(w, 16, 16)``,
    ``conv2``/``relu2`` ``(2w, 16, 16)``, ``pool``/``res`` ``(2w, 8, 8)``, ``gap``
    ``(2w, 2, 2)``, ``flatten`` ``(8w,)``, ``fc`` ``(classes,)``. fx-traceable.
    """

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.res = Residual(2 * width)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.res(self.pool(x))
        return self.fc(self.flatten(self.gap(x)))


def small_cnn(classes: int = 10, width: int = 8, seed: int = 0) -> SmallCNN:
    """A freshly initialised :class:`SmallCNN` (weights drawn from ``seed``; the global
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(classes, width)


def train(
    model: nn.Module, x: Tensor, y: Tensor, *, epochs: int = 6, seed: int = 0, lr: float = 0.01, batch_size: int = 50
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy on shuffled mini-batches;
    deterministic on the CPU for a seed (the batches come from a seeded generator).
    Returns the model, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    return float((model(x).argmax(1) == y).double().mean())


@lru_cache(maxsize=8)
def _trained_state(
    seed: int, cue_class: int | None, epochs: int, classes: int, width: int, n_per_class: int, size: int, cue_strength: float
) -> dict[str, Tensor]:
    data = glyph_images(n_per_class, classes, size, seed=seed, split="train", cue_class=cue_class, cue_strength=cue_strength)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine; tiny convs gain nothing from threads
    try:
        model = train(small_cnn(classes, width, seed=seed), data["x"], data["y"], epochs=epochs, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_cnn(
    seed: int = 0,
    cue_class: int | None = None,
    epochs: int = 6,
    *,
    classes: int = 10,
    width: int = 8,
    n_per_class: int = 100,
    size: int = 16,
    cue_strength: float = 1.0,
) -> SmallCNN:
    """:func:`small_cnn` trained on ``glyph_images(split="train", ...)`` with the same
    seed, in eval mode: a few seconds on two CPU cores, and above 95 % test accuracy
    with the defaults. The trained weights are cached per process, so asking twice costs
    one training; each call returns a fresh model."""
    state = _trained_state(seed, cue_class, epochs, classes, width, n_per_class, size, float(cue_strength))
    model = small_cnn(classes, width, seed=seed)
    model.load_state_dict(state)
    return model.eval()
