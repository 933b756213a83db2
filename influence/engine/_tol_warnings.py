"""For the workflows: the engine's warnings about anchors whose adaptive lines missed
their ``tol``, held back over several engine calls and counted in one warning
(:func:`tol_counted`, :func:`count_missed`), or kept as notes for a report
(:func:`tol_noted`)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def tol_counted(owner: str, what: str = "points") -> Iterator[list[int]]:
    """For a workflow that makes several engine calls with adaptive DoIs: the calls'
    warnings about anchors that missed ``tol`` are held back; the workflow appends each
    result's ``query["tol_missed"]`` and ``anchors`` to the list it gets, and one warning
    counts them all at the end."""
    counts: list[int] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"influence: \d+ of \d+ anchors did not reach tol", category=RuntimeWarning)
        yield counts
    missed, total = sum(counts[0::2]), sum(counts[1::2])
    if missed:
        warnings.warn(f"{owner}: {missed} of {total} {what} did not reach the tolerance of their lines within max_steps", RuntimeWarning, stacklevel=3)


@contextmanager
def tol_noted(notes: list[str]) -> Iterator[None]:
    """The workflows' warnings about lines that missed their tolerance, appended to
    ``notes`` (for a report to show) instead of raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "did not reach the tolerance" in str(w.message):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def count_missed(counts: list[int], results: Any) -> None:
    """Add the results' missed anchors and anchors to ``counts`` (see :func:`tol_counted`)."""
    for r in results if isinstance(results, list) else [results]:
        counts += [int(r.query.get("tol_missed", 0)), int(r.anchors)]
