"""Shared fixtures: a seeded generator, dtype-keyed tolerances and the hypothesis profiles.

Hypothesis profiles (chosen by the environment variable ``HYPOTHESIS_PROFILE``):

``ci`` (the default)
    ``derandomize=True``: every property test draws the same examples on every run (they
    are a function of the test's code), so ``pytest -q`` never fails by chance on correct
    code; a change to a test or to the code it checks is what changes the verdict. No
    example database is read or written, and there is no deadline (the first example pays
    for imports and fx tracing).
``explore``
    A long randomized search for counterexamples: a fresh random seed each run, at least
    ``HYPOTHESIS_MAX_EXAMPLES`` (default 1000) examples for every ``@given`` test, however
    few its own ``@settings`` ask for, and failures saved to ``.hypothesis/`` so that the
    next run replays them first::

        HYPOTHESIS_PROFILE=explore pytest tests/test_axioms.py
        HYPOTHESIS_PROFILE=explore HYPOTHESIS_MAX_EXAMPLES=300 pytest tests/test_doi.py

    A counterexample found this way is either a bug or a test whose tolerance or input
    range is wrong; either way it is pinned with ``@example(...)`` so that ``ci`` runs it too.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile(
    "explore",
    derandomize=False,
    deadline=None,
    print_blob=True,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "1000")),
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)  # before the test modules are imported: their @settings inherit it


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``explore``, raise every ``@given`` test's own ``max_examples`` to the
    profile's (a test's ``@settings(max_examples=20)`` would otherwise win over it)."""
    if PROFILE != "explore":
        return
    floor = settings.default.max_examples
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None and own.max_examples < floor:
            test._hypothesis_internal_use_settings = settings(own, max_examples=floor)

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
