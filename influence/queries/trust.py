"""What a query file may import and call.

A query file is trusted like a script. It names Python callables (``factory:
"module:function"``, ``{callable: "module:function"}``, a callable QoI's ``function``),
and ``influence run`` imports each module and calls each callable with the file's
arguments. Importing a module runs its top-level code. Safe YAML loading (no tags, no
Python objects) keeps the *parser* from running code; it is not a sandbox for what the
file then names. So read a query file from someone else as you would read their script:
``influence validate`` lists every callable the file would import and call, before
anything is imported.

One guard stays on all the time: callables of the standard library's process, file and
interpreter modules (``os:system``, ``subprocess:run``, ``shutil:rmtree``,
``builtins:eval`` …) are refused, both by name when the file is checked and by the
module that defines the resolved object when it is imported (so
``some.module:os.system`` is refused too). No model or data factory lives there, so the
guard costs nothing; a file that names one is a mistake or an attack. It is not a
boundary: a module of your own can call anything. We chose this over an
``--allow-import`` flag on every run, because a flag that every run needs is typed by
reflex and protects nobody, while the listing above shows what actually runs.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["REFUSED_MODULES", "refused", "check_resolved"]

REFUSED_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "pty", "shutil", "pathlib", "io", "_io", "tempfile", "glob", "fileinput",
    "builtins", "sys", "importlib", "runpy", "code", "codeop", "ctypes", "multiprocessing", "socket", "signal",
    "pickle", "_pickle", "marshal", "shelve", "webbrowser", "asyncio",
})  # fmt: skip
"""Top-level modules of the standard library whose callables a query file may not name."""


def _top(module: str | None) -> str:
    return (module or "").split(".")[0]


def refused(spec: str) -> str | None:
    """Why ``module:attr`` may not be imported and called, or ``None``. Checked on the
    name alone: nothing is imported."""
    module, _, attr = spec.partition(":")
    if _top(module) in REFUSED_MODULES:
        return (
            f"{spec!r} is a callable of the standard library's {_top(module)!r} module, which query files may not call "
            "(a query file is trusted like a script, but no model or data factory lives there); "
            "if you mean it, call it from a function of your own module"
        )
    return None


def check_resolved(value: Any, spec: str) -> str | None:
    """Why the object ``spec`` resolved to may not be called, or ``None``: a refused module
    reached through an attribute path (``pkg:os.system``), or a function defined in one."""
    defined_in = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    if _top(defined_in) in REFUSED_MODULES:
        return f"{spec!r} resolves to {defined_in}.{getattr(value, '__qualname__', '')}".rstrip(".") + (
            f", a callable of the standard library's {_top(defined_in)!r} module, which query files may not call"
        )
    return None
