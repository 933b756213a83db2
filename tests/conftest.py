"""Shared fixtures: a seeded generator and dtype-keyed tolerances."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Tolerances by dtype: (rtol, atol) for torch.testing.assert_close.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded generator; tests draw their data from it, never from global state."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tests use tiny tensors: one thread avoids oversubscription on a busy machine."""
    torch.set_num_threads(1)
