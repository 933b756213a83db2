"""The validation layer of query files: one small check per type of value, and schemas of
named keys with their checks, defaults and help. Each check also states itself as JSON
Schema (``influence schema``), so that the schema and the validation cannot drift.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .trust import REFUSED_MODULES, refused

INT_LIMIT = 2**62
_NUMBER = r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*"  # a number written as text, e.g. 1e-3


class QueryError(ValueError):
    """A mistake in a query file: ``path`` is the field (``queries[1].doi.steps``, or the
    file name for a file-level problem), ``message`` says what is wrong and how to fix it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = " ".join(str(message).split())
        super().__init__(f"{path}: {self.message}" if path else self.message)


def join_path(path: str, key: str | int) -> str:
    """``path.key``, ``path[3]``, or ``path['odd key']`` for a key that is not a name."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def show_value(value: Any) -> str:
    """``value`` for an error message: its type and a short repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if value is None or isinstance(value, (bool, int, float, str)):
        return text
    return f"{type(value).__name__} {text}"


def did_you_mean(word: Any, options: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


# --- checks: one small object per type of value ---------------------------------------


@dataclass(frozen=True)
class Context:
    """What validation needs besides the value: the folder relative paths start from; it
    collects the import paths the file names, ``(field, 'module:name')``, in file order."""

    folder: Path
    imports: list[tuple[str, str]] = field(default_factory=list)


class Check(ABC):
    """Validates one value and returns it normalised; ``what`` describes the accepted
    values (used in messages and in the README table)."""

    what = "a value"

    @abstractmethod
    def __call__(self, value: Any, path: str, ctx: Context) -> Any:
        """The value, normalised, or a :class:`QueryError` naming ``path``."""

    @abstractmethod
    def json_schema(self) -> dict[str, Any]:
        """The accepted values as a JSON Schema fragment (``influence schema``). It may be
        looser than the check (a file that exists, a device torch knows), never stricter:
        the schema must not refuse a file that validates."""

    def fail(self, path: str, value: Any, extra: str = "") -> QueryError:
        return QueryError(path, f"must be {self.what} (got {show_value(value)}){extra}")


class Int(Check):
    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum
        self.what = "an int" if minimum is None else f"an int >= {minimum}"

    def __call__(self, value: Any, path: str, ctx: Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, value)
        if (self.minimum is not None and value < self.minimum) or abs(value) >= INT_LIMIT:
            raise self.fail(path, value)
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": -(INT_LIMIT - 1) if self.minimum is None else self.minimum, "maximum": INT_LIMIT - 1}


class Float(Check):
    """A finite number; strings such as ``1e-3`` (which YAML 1.1 reads as text) count."""

    def __init__(self, minimum: float | None = None, *, positive: bool = False, below: float | None = None) -> None:
        self.minimum, self.positive, self.below = minimum, positive, below
        self.what = "a number > 0" if positive else ("a number" if minimum is None else f"a number >= {minimum}")
        if below is not None:
            self.what = f"a number in (0, {below:g})" if positive else f"a number < {below:g}"

    def __call__(self, value: Any, path: str, ctx: Context) -> float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = None
        elif isinstance(value, str) and re.fullmatch(_NUMBER, value):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise self.fail(path, value)
        if (self.positive and number <= 0) or (self.minimum is not None and number < self.minimum) or (self.below is not None and number >= self.below):
            raise self.fail(path, value)
        return number

    def json_schema(self) -> dict[str, Any]:
        """A number in range, or a number written as text (its range unchecked, but for
        the sign of a positive one)."""
        number: dict[str, Any] = {"type": "number"}
        if self.positive:
            number["exclusiveMinimum"] = 0
        if self.minimum is not None:
            number["minimum"] = self.minimum
        if self.below is not None:
            number["exclusiveMaximum"] = self.below
        text = {"type": "string", "pattern": ("^(?!\\s*-)" if self.positive else "^") + f"(?:{_NUMBER})$"}
        return {"anyOf": [number, text]}


class Bool(Check):
    what = "true or false"

    def __call__(self, value: Any, path: str, ctx: Context) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, value)
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Str(Check):
    def __init__(self, what: str = "a string", pattern: str | None = None) -> None:
        self.what, self.pattern = what, pattern

    def __call__(self, value: Any, path: str, ctx: Context) -> str:
        if not isinstance(value, str) or not value or (self.pattern and not re.fullmatch(self.pattern, value)):
            raise self.fail(path, value)
        return value

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.pattern:
            out["pattern"] = f"^(?:{self.pattern})$"
        return out


class Choice(Check):
    def __init__(self, options: Sequence[str]) -> None:
        self.options = tuple(options)
        self.what = "one of " + ", ".join(repr(o) for o in self.options)

    def __call__(self, value: Any, path: str, ctx: Context) -> str:
        if not isinstance(value, str) or value not in self.options:
            hint = did_you_mean(value, self.options)
            raise QueryError(path, f"must be {self.what} (got {show_value(value)})" + (f"; {hint.strip()}" if hint else ""))
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"enum": list(self.options)}


class Maybe(Check):
    """``null`` or what ``inner`` accepts."""

    def __init__(self, inner: Check) -> None:
        self.inner = inner
        self.what = f"null or {inner.what}"

    def __call__(self, value: Any, path: str, ctx: Context) -> Any:
        if value is None:
            return None
        try:
            return self.inner(value, path, ctx)
        except QueryError as e:
            if e.path == path:
                raise QueryError(path, e.message.replace(f"must be {self.inner.what}", f"must be {self.what}", 1)) from None
            raise

    def json_schema(self) -> dict[str, Any]:
        inner = self.inner.json_schema()
        if list(inner) == ["enum"]:
            return {"enum": [None, *inner["enum"]]}
        return {"anyOf": [{"type": "null"}, inner]}


class ImportPath(Str):
    """``package.module:name`` (the module is imported only when the query runs)."""

    def __init__(self) -> None:
        super().__init__("an import path 'package.module:name'", r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

    def __call__(self, value: Any, path: str, ctx: Context) -> Any:
        """The path, checked against :mod:`~influence.queries.trust` and recorded in ``ctx``."""
        spec = super().__call__(value, path, ctx)
        why = refused(spec)
        if why is not None:
            raise QueryError(path, why)
        ctx.imports.append((path, spec))
        return spec

    def json_schema(self) -> dict[str, Any]:
        out = super().json_schema()
        out["not"] = {"pattern": f"^(?:{'|'.join(sorted(REFUSED_MODULES))})[.:]"}  # as trust.refused
        return out


class FilePath(Check):
    """An existing file; a relative path is read from the query file's folder."""

    def __init__(self, suffixes: Sequence[str] = ()) -> None:
        self.suffixes = tuple(suffixes)
        self.what = "a file path" + (f" ({', '.join(self.suffixes)})" if self.suffixes else "")

    def __call__(self, value: Any, path: str, ctx: Context) -> Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.fail(path, value)
        if self.suffixes and Path(value).suffix.lower() not in self.suffixes:
            raise QueryError(path, f"unsupported file type {Path(value).suffix or '(none)'!r} in {value!r}; use {' or '.join(self.suffixes)}")
        target = Path(value).expanduser()
        if not target.is_absolute():
            target = ctx.folder / target
        try:
            exists, is_dir = target.exists(), target.is_dir()
        except (OSError, ValueError) as e:
            raise QueryError(path, f"cannot use {value!r} as a path ({e})") from None
        where = f" (relative paths are read from the query file's folder, {ctx.folder})" if not Path(value).is_absolute() else ""
        if not exists:
            raise QueryError(path, f"file not found: {str(target)!r}{where}")
        if is_dir:
            raise QueryError(path, f"{str(target)!r} is a folder, not a file")
        if not os.access(target, os.R_OK):
            raise QueryError(path, f"file {str(target)!r} is not readable (check its permissions)")
        return target

    def json_schema(self) -> dict[str, Any]:
        """A path (whether the file exists is for validation), ending in one of the
        suffixes, in any case (``a.NPZ``; ``a.npz/`` is the same path)."""
        out: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.suffixes:
            ends = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in s) for s in self.suffixes)
            out["pattern"] = f"(?:{'|'.join(ends)})[/\\\\.]*$"
        return out


class AnyMapping(Check):
    """A mapping with string keys, its values passed on as they are (factory kwargs)."""

    what = "a mapping of names to values"

    def __call__(self, value: Any, path: str, ctx: Context) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, value)
        for key in value:
            if not isinstance(key, str) or not key.isidentifier():
                raise QueryError(join_path(path, str(key)), f"keyword names must be identifiers (got {show_value(key)})")
        return dict(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object", "propertyNames": copy.deepcopy(IDENTIFIER_KEYS)}


IDENTIFIER_KEYS: dict[str, Any] = {"not": {"pattern": "^$|^[0-9]|[\\s!-/:-@\\[-^`{-~]"}}
"""Keys that are identifiers, as JSON Schema: no ASCII punctuation but ``_``, no space, no
leading digit (looser than ``str.isidentifier``, whose letters no pattern states portably)."""


class Custom(Check):
    """A check written as a function ``(value, path, ctx) -> normalised value``, with the
    JSON Schema fragment of what it accepts (or a function returning it, for fragments
    built from other schemas)."""

    def __init__(self, what: str, fn: Callable[[Any, str, Context], Any], *, schema: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        self.what, self.fn, self.schema = what, fn, schema

    def __call__(self, value: Any, path: str, ctx: Context) -> Any:
        return self.fn(value, path, ctx)

    def json_schema(self) -> dict[str, Any]:
        return copy.deepcopy(self.schema() if callable(self.schema) else self.schema)


def json_ref(name: str) -> dict[str, Any]:
    """A reference to ``$defs/name`` of the query file's schema (``doi``, ``qoi``, ...)."""
    return {"$ref": f"#/$defs/{name}"}


def json_list(item: dict[str, Any]) -> dict[str, Any]:
    """A non-empty list of ``item``, as JSON Schema."""
    return {"type": "array", "minItems": 1, "items": item}


def json_one_or_list(item: dict[str, Any]) -> dict[str, Any]:
    """``item``, or a non-empty list of them, as JSON Schema."""
    return {"anyOf": [item, json_list(item)]}


def json_given(*keys: str) -> dict[str, Any]:
    """The JSON Schema rule "each of ``keys`` is given and not null" (for ``if``, ``not``)."""
    return {"required": list(keys), "properties": {k: {"not": {"type": "null"}} for k in keys}}


# --- schemas: named keys with checks and defaults -------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Key:
    """One key of a mapping: its check, its default (``REQUIRED`` if none), and a line of
    documentation (the README's schema table lists every key)."""

    name: str
    check: Check
    default: Any = REQUIRED
    doc: str = ""


@dataclass(frozen=True)
class Schema:
    """The keys a mapping may have; ``rules``: the checks across its keys that JSON Schema
    can state (e.g. "exactly one of factory, torchscript"), as fragments for ``allOf``
    (the code that validates the mapping makes the same checks)."""

    keys: tuple[Key, ...]
    rules: tuple[dict[str, Any], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def parse(self, value: Any, path: str, ctx: Context, *, what: str = "a mapping", also: Sequence[str] = ()) -> dict[str, Any]:
        """``value`` checked key by key, with defaults filled in. ``also`` names keys the
        caller handles itself (e.g. ``kind``)."""
        if not isinstance(value, dict):
            raise QueryError(path, f"must be {what} with keys {', '.join(self.names) or '(none)'} (got {show_value(value)})")
        valid = (*also, *self.names)
        for key in value:
            if not isinstance(key, str):
                raise QueryError(path, f"keys must be strings (got {show_value(key)}); valid keys: {', '.join(valid)}")
            if key not in valid:
                hint = did_you_mean(key, valid)
                raise QueryError(join_path(path, key), f"unknown key; {hint}valid keys here: {', '.join(valid) or '(none)'}")
        out: dict[str, Any] = {}
        for key in self.keys:
            where = join_path(path, key.name)
            if key.name in value:
                out[key.name] = key.check(value[key.name], where, ctx)
            elif key.default is REQUIRED:
                raise QueryError(where, f"missing; {key.doc or 'this key is required'}")
            else:
                out[key.name] = copy.deepcopy(key.default)
        return out

    def json_schema(self) -> dict[str, Any]:
        """The mapping as JSON Schema: per key its check's fragment, its doc as
        ``description`` and its default (where its check accepts it); no other keys."""
        properties = {}
        for key in self.keys:
            fragment = key.check.json_schema()
            if key.doc:
                fragment["description"] = key.doc
            if key.default is not REQUIRED and _accepts(key.check, key.default):
                fragment["default"] = copy.deepcopy(key.default)
            properties[key.name] = fragment
        out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [k.name for k in self.keys if k.default is REQUIRED]
        if required:
            out["required"] = required
        if self.rules:
            out["allOf"] = copy.deepcopy(list(self.rules))
        return out


def _accepts(check: Check, value: Any) -> bool:
    """Whether ``check`` accepts ``value`` (a query's engine options default to null, which
    means "from defaults", not a value to write)."""
    try:
        check(copy.deepcopy(value), "", Context(Path(".")))
    except QueryError:
        return False
    return True


def mapping_check(schema: Schema, what: str) -> Check:
    return Custom(what, lambda value, path, ctx: schema.parse(value, path, ctx), schema=schema.json_schema)
