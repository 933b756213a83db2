"""The trust model of query files (``influence.queries.trust``): a query file is trusted
like a script; ``influence validate`` lists every callable it would import and call,
before anything is imported; callables of the standard library's process, file and
interpreter modules are refused, by name and by where the resolved object is defined, so
that ``os:system`` never runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from influence.query import QueryError, load_query_file
from influence.queries.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _write(folder: Path, document: dict, helpers: str | None = None) -> Path:
    np.savez(folder / "data.npz", x=np.zeros((4, 8), dtype=np.float32), y=np.zeros(4, dtype=np.int64))
    if helpers is not None:
        (folder / "trust_helpers.py").write_text(helpers)
    path = folder / "q.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _document(marker: Path, **changes: object) -> dict:
    doc = {
        "model": {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}},
        "data": {"path": "data.npz", "inputs": "x", "labels": "y"},
        "queries": [{"name": "q", "doi": {"kind": "point"}, "qoi": {"kind": "class", "label": 0}}],
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize("command", ["validate", "run"])
def test_os_system_never_runs(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    path = _write(tmp_path, _document(marker))
    argv = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert "model.factory" in err and "'os:system'" in err and "standard library's 'os' module" in err


@pytest.mark.parametrize(
    "field, value, path",
    [
        ("data", {"factory": "subprocess:run", "kwargs": {"args": ["true"]}}, "data.factory"),
        ("data", {"factory": "shutil:rmtree", "kwargs": {"path": "x"}}, "data.factory"),
        ("queries", [{"name": "q", "doi": {"kind": "point"}, "qoi": {"kind": "callable", "function": "builtins:eval"}}], "queries[0].qoi.function"),
        ("queries", [{"name": "q", "doi": {"kind": "line", "baseline": {"callable": "pathlib:Path.unlink"}}, "qoi": {"kind": "class", "label": 0}}], "queries[0].doi.baseline.callable"),
    ],
)
def test_process_and_file_callables_are_refused_by_name(field: str, value: object, path: str, tmp_path: Path) -> None:
    doc = _document(tmp_path / "ran")
    doc["model"] = {"factory": "trust_helpers:model"}
    doc[field] = value
    with pytest.raises(QueryError) as info:
        load_query_file(_write(tmp_path, doc))
    assert info.value.path == path and "may not call" in info.value.message, str(info.value)


@pytest.mark.parametrize("factory", ["trust_helpers:os.system", "trust_helpers:launch"])
def test_a_refused_callable_reached_through_another_module_is_refused_before_the_call(factory: str, tmp_path: Path) -> None:
    """``pkg:os.system`` (a module attribute) and ``from os import system as launch`` (a
    new name): the name check passes, the resolved object is refused before it is called."""
    marker = tmp_path / "ran"
    helpers = "import os\nfrom os import system as launch\n"
    doc = _document(marker)
    doc["model"]["factory"] = factory
    qfile = load_query_file(_write(tmp_path, doc, helpers))
    with pytest.raises(QueryError) as info:
        qfile.prepare()
    assert info.value.path == "model.factory" and "may not call" in info.value.message, str(info.value)
    assert not marker.exists()


def test_validate_lists_what_a_file_imports_and_calls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "examples" / "background_audit.yaml")]) == 0
    out = capsys.readouterr().out
    assert "imports and calls: influence.synthetic:trained_cnn, influence.synthetic:glyph_images\n" in out


def test_every_named_callable_is_listed_in_file_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _document(tmp_path / "ran")
    doc["model"] = {"factory": "trust_helpers:model"}
    doc["queries"] = [
        {"name": "a", "doi": {"kind": "line", "baseline": {"callable": "trust_helpers:baseline"}}, "qoi": {"kind": "callable", "function": "trust_helpers:score"}},
        {"name": "b", "doi": {"kind": "point"}, "qoi": {"kind": "class", "label": 0, "output": {"callable": "trust_helpers:pick"}}},
    ]
    path = _write(tmp_path, doc)
    assert [spec for _, spec in load_query_file(path).imports] == ["trust_helpers:model", "trust_helpers:baseline", "trust_helpers:score", "trust_helpers:pick"]
    assert main(["validate", str(path)]) == 0
    assert "imports and calls: trust_helpers:model, trust_helpers:baseline, trust_helpers:score, trust_helpers:pick\n" in capsys.readouterr().out
