"""Small models shared by the tests (built with a seeded generator, never at import)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_features: int = 6, hidden: int = 16, classes: int = 4, act: type[nn.Module] = nn.Softplus, seed: int = 0) -> nn.Sequential:
    """``Linear -> act -> Linear -> act -> Linear``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_features, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, classes)
    )


class Block(nn.Module):
    """A residual block: ``relu(x + conv2(act(conv1(x))))``."""

    def __init__(self, channels: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = act()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x + self.conv2(self.act(self.conv1(x))))


class ResCNN(nn.Module):
    """A small residual CNN on ``(3, 8, 8)`` inputs: stem, two stages, pool, linear."""

    def __init__(self, classes: int = 5, width: int = 4, act: type[nn.Module] = nn.Softplus) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem_act = act()
        self.layer1 = Block(width, act)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.layer2 = Block(2 * width, act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.stem_act(self.stem(x)))
        x = self.layer2(self.down(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def res_cnn(seed: int = 0, **kwargs: object) -> ResCNN:
    torch.manual_seed(seed)
    return ResCNN(**kwargs)  # type: ignore[arg-type]


class ControlFlowNet(nn.Module):
    """Same computation as an MLP, but its ``forward`` branches on a tensor value, which
    ``torch.fx`` cannot trace: slices of it must use the hook realisation."""

    def __init__(self, in_features: int = 6, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act1 = nn.Softplus()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.fc1(x))
        if h.sum() > -1e30:  # data-dependent branch (always taken)
            return self.fc2(h)
        return -self.fc2(h)


def control_flow_net(seed: int = 0) -> ControlFlowNet:
    torch.manual_seed(seed)
    return ControlFlowNet()


def smooth(x: Tensor) -> Tensor:
    return F.softplus(x)
