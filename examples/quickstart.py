"""Five-minute tour: train a tiny CNN on generated images, find the neurons of one layer
that separate class 3 from class 8, and take integrated gradients as a LineDoI.

Run: python examples/quickstart.py   (about 10 s on 2 CPU cores)
"""

from __future__ import annotations

import torch
from torch import nn

from doi import ClassDoI, LineDoI
from influence import input_influence, internal_influence
from qoi import ClassQoI, ComparativeQoI
from slices import Slice


def make_data(n_per_class: int = 60, classes: int = 10, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a fixed random pattern of bright strokes plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(classes, 1, size, size, generator=g) > 0.8).float()
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = prototypes[y] + 0.3 * torch.randn(len(y), 1, size, size, generator=g)
    return x, y


def make_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),          # "0", "1"
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),         # "2" <- we slice here, "3"
        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(16 * 9, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def main() -> None:
    torch.manual_seed(0)
    x, y = make_data()
    model = make_model()
    train(model, x, y)
    print(f"training accuracy: {(model(x).argmax(1) == y).float().mean():.2f}")

    # 1. Which channels of layer "2" make the model say 3 rather than 8, on class 3?
    slice_ = Slice(model, "2")
    result = internal_influence(slice_, ComparativeQoI(3, 8), ClassDoI((x, y), 3), seed=0)
    print("\ntop channels of layer '2' for 3 vs 8 (influence ± stderr):")
    for rank, (channel, value, stderr) in enumerate(result.top(5, by="channel"), 1):
        print(f"  {rank}. channel {channel:2d}  {value:+.4f} ± {stderr:.4f}")

    # 2. Integrated gradients = input influence along a line from a zero baseline,
    #    times (x - baseline). Completeness: the attributions sum to f(x) - f(0).
    points = x[y == 3][:4]
    ig = input_influence(model, ClassQoI(3), LineDoI(baseline=0.0, steps=32), points, multiply_activation=True)
    with torch.no_grad():
        gap = model(points)[:, 3] - model(torch.zeros_like(points))[:, 3]
    print("\nintegrated gradients, sum of attributions vs f(x) - f(0):")
    for total, expected in zip(ig.values.flatten(1).sum(1), gap):
        print(f"  {total:+.5f}  vs  {expected:+.5f}")


if __name__ == "__main__":
    main()
