"""Progress reporting for long queries: tqdm when installed (``pip install
influence-directed[progress]``), else a one-line counter on stderr."""

from __future__ import annotations

import sys
from typing import Any


class _LineCounter:
    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0

    def update(self, n: int) -> None:
        self.n += n
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.desc}: {self.n}{of} points")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int | None, desc: str = "influence") -> Any:
    """An object with ``update(n)`` and ``close()``."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineCounter(total, desc)
    return tqdm(total=total, desc=desc, unit="pt", leave=False, file=sys.stderr)
