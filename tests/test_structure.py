"""The house's layout: three rooms under ``influence/`` whose imports run one way,

    queries → workflows → engine → slices / doi / qoi,

a room reached from another only through its package's names (never a private module),
and no module over 1,000 lines. Imports are read from the source (every ``import`` and
``from … import``, also those inside functions), so a lazy import counts too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("engine", "workflows", "queries")  # each may import only those before it
CORE = ("slices", "doi", "qoi")


def _modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import in the file, with
    relative imports resolved against the module's package."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in CORE:
        return "core"
    if parts[0] != "influence":
        return None
    if len(parts) == 1 or parts[1] not in ROOMS:
        return "top"
    return parts[1]


def _violations(package: str) -> list[str]:
    bad = []
    for name, path in _modules(package):
        here = _room(name)
        allowed = {"core", here} if here == "core" else {"core", *ROOMS[: ROOMS.index(here) + 1]} if here in ROOMS else None
        if allowed is None:
            continue
        for module, names, line in _imports(name, path):
            there = _room(module)
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if there is None:
                continue
            if there not in allowed:
                bad.append(f"{where} (a {here} module may import {sorted(allowed)})")
            elif there in ROOMS and there != here:
                parts = module.split(".")
                private = [p for p in parts[2:] + names if p.startswith("_")]
                if private:
                    bad.append(f"{where} {names} (another room is reached through its public names, not {private})")
    return bad


@pytest.mark.parametrize("package", ["influence.engine", "influence.workflows", "influence.queries", *CORE])
def test_imports_run_one_way(package: str) -> None:
    assert _violations(package) == []


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above must be able to fail: a planted upward import and a private reach."""
    root = tmp_path
    for room in ROOMS:
        (root / "influence" / room).mkdir(parents=True)
        (root / "influence" / room / "__init__.py").write_text("")
    (root / "influence" / "__init__.py").write_text("")
    (root / "influence" / "engine" / "bad.py").write_text("def f():\n    from ..queries import cli\n")
    (root / "influence" / "workflows" / "reach.py").write_text("from ..engine._integrator import internal_influence\n")
    (root / "influence" / "queries" / "fine.py").write_text("from ..workflows import plots\nfrom ..engine import frozen\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", root)
    assert len(_violations("influence.engine")) == 1
    assert "_integrator" in _violations("influence.workflows")[0]
    assert _violations("influence.queries") == []


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_holds_and_may_import(room: str) -> None:
    package = importlib.import_module(f"influence.{room}")
    doc = package.__doc__ or ""
    assert f"The {room} room" in doc and "May import" in doc


def test_no_module_is_over_a_thousand_lines() -> None:
    long = {}
    for package in ("influence", *CORE):
        for _, path in _modules(package):
            lines = len(path.read_text().splitlines())
            if lines > 1000:
                long[str(path.relative_to(ROOT))] = lines
    assert long == {}


@pytest.mark.parametrize("path, room", [
    ("plots", "workflows.plots"), ("synthetic", "workflows.synthetic"), ("text", "workflows.text"),
    ("text_data", "workflows.text_data"), ("demo", "workflows.demo"), ("methods", "workflows.methods"),
    ("cli", "queries.cli"), ("query", "queries"),
])  # fmt: skip
def test_the_public_paths_are_the_rooms_modules(path: str, room: str) -> None:
    assert importlib.import_module(f"influence.{path}") is importlib.import_module(f"influence.{room}")
