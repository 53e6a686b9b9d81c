"""Declarative schemas: each key's type, default and meaning stated once.

Validation, defaults and the documentation of the keys all come from that one statement. A *record* is a frozen
dataclass whose fields are declared with :func:`key` (the suite file, a device section, a limit rule in
:mod:`dimbench.suite`), or a plain list of :class:`Field` s (a metric's options, declared by the metric). Types
are small objects that check a YAML value, convert it, and say in words what they expect::

    @dataclasses.dataclass(frozen=True)
    class Rule:
        resolutions: tuple[int, ...] | None = key(ListOf(Integer(1)), None, "only at these resolutions (px)")

    value = Record(Rule).check(data, ("limits", "fvcore"), problems)   # a Rule, or INVALID

Every problem is reported as ``(path, "key 'limits.fvcore.resolutions[1]': expected an integer >= 1, got 0")``;
:mod:`dimbench.suite` turns paths into ``FILE:LINE``. A value that fails is :data:`INVALID`, and checking goes on
so that every problem of a file is reported at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

REQUIRED = object()  # a key without a default
INVALID = object()  # what a check returns for a value it has reported as wrong

Path = tuple


class Problems(list):
    """``(path, message)`` pairs, in the order found."""

    def expected(self, path: Path, expected: str, value: Any, got: str | None = None) -> object:
        self.append((path, f"key '{path_text(path)}': expected {expected}, got {got or describe(value)}"))
        return INVALID


def cli_message(message: str, flag: Callable[[str], str], prefix: str = "") -> str:
    """A problem of an option given on the command line, named by its flag: ``key 'options.fid.samples':
    expected ...`` (``prefix`` "options.fid.") or ``key 'samples': expected ...`` -> ``--samples: expected ...``.
    Only the leading key is renamed; keys quoted later in the message (a file's 'arr_0') stay as they are."""
    found = re.match("key '(?:" + re.escape(prefix) + r")?([A-Za-z0-9_]+)([^']*)': ", message)
    if not found:
        return message
    return f"{flag(found.group(1))}{found.group(2)}: {message[found.end():]}"


def path_text(path: Path) -> str:
    """("models", 0, "name") -> "models[0].name"."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool) and out:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(value: Any) -> str:
    """How a YAML value is named in a message ("got ...")."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "an empty mapping" if not value else "a mapping"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------------------------- types
class Type:
    """A value type: ``check`` returns the converted value, or INVALID after adding its problems."""

    expected: str = "a value"

    def check(self, value: Any, path: Path, problems: Problems) -> Any:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Integer(Type):
    """An integer >= ``minimum``; ``none`` names what null means, when null is allowed."""

    minimum: int | None = None
    none: str | None = None

    @property
    def expected(self) -> str:
        text = "an integer" + (f" >= {self.minimum}" if self.minimum is not None else "")
        return text + (f", or null ({self.none})" if self.none else "")

    def check(self, value, path, problems):
        if value is None and self.none:
            return None
        if not is_int(value) or (self.minimum is not None and value < self.minimum):
            return problems.expected(path, self.expected, value)
        return value


@dataclasses.dataclass(frozen=True)
class Boolean(Type):
    expected: str = "true or false"

    def check(self, value, path, problems):
        if not isinstance(value, bool):
            return problems.expected(path, self.expected, value)
        return value


@dataclasses.dataclass(frozen=True)
class Number(Type):
    """A finite number > ``above`` (or >= ``at_least``) and < ``below``, returned as float; NaN never, infinity
    only where ``infinite`` says what it means (a timeout: no limit). ``none`` names what null means, when null
    is allowed."""

    above: float | None = None
    unit: str = ""
    none: str | None = None
    note: str = ""
    at_least: float | None = None
    below: float | None = None
    infinite: str | None = None

    @property
    def expected(self) -> str:
        bounds = [f"> {self.above:g}" if self.above is not None else "",
                  f">= {self.at_least:g}" if self.at_least is not None else "",
                  f"< {self.below:g}" if self.below is not None else ""]
        text = "a number" + (f" of {self.unit}" if self.unit else "") + "".join(
            f" {'and ' if i else ''}{b}" for i, b in enumerate(b for b in bounds if b))
        notes = [n for n in (self.note, f".inf: {self.infinite}" if self.infinite else "") if n]
        text += f" ({'; '.join(notes)})" if notes else ""
        return text + (f", or null ({self.none})" if self.none else "")

    def check(self, value, path, problems):
        if value is None and self.none:
            return None
        if is_number(value) and abs(value) > 1.7e308:  # a YAML integer no float holds is as good as infinite
            value = math.inf if value > 0 else -math.inf
        if not is_number(value) or math.isnan(value) or (math.isinf(value) and not (self.infinite and value > 0)):
            return problems.expected(path, self.expected, value)
        if ((self.above is not None and value <= self.above) or (self.at_least is not None and value < self.at_least)
                or (self.below is not None and value >= self.below)):
            return problems.expected(path, self.expected, value)
        return float(value)


@dataclasses.dataclass(frozen=True)
class Text(Type):
    """A non-empty string; ``rule(value) -> bool`` adds a condition, described by ``expected``."""

    expected: str = "a non-empty string"
    rule: Callable[[str], bool] | None = None
    empty_ok: bool = False

    def check(self, value, path, problems):
        if not isinstance(value, str) or (not value and not self.empty_ok) or (self.rule and not self.rule(value)):
            return problems.expected(path, self.expected, value)
        return value


@dataclasses.dataclass(frozen=True)
class Choice(Type):
    """One of a fixed or registered set of names. ``choices`` may be a callable (a registry read when checked)."""

    choices: Iterable[str] | Callable[[], Iterable[str]]
    what: str = "one of"

    def names(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices)

    @property
    def expected(self) -> str:
        return f"{self.what} ({', '.join(self.names()) or 'none registered'})"

    def check(self, value, path, problems):
        if not isinstance(value, str) or value not in self.names():
            return problems.expected(path, self.expected, value)
        return value


@dataclasses.dataclass(frozen=True)
class ListOf(Type):
    """A non-empty list of ``item`` values, returned as a tuple."""

    item: Type
    expected: str = ""

    def __post_init__(self) -> None:
        if not self.expected:
            object.__setattr__(self, "expected", f"a non-empty list of {_plural(self.item.expected)}")

    def check(self, value, path, problems):
        if not isinstance(value, list) or not value:
            return problems.expected(path, self.expected, value)
        out = tuple(self.item.check(v, path + (i,), problems) for i, v in enumerate(value))
        return INVALID if INVALID in out else out


def _plural(expected: str) -> str:
    """'an integer >= 1' -> 'integers >= 1', 'a registered metric (a, b)' -> 'registered metrics (a, b)'."""
    words = expected.split(" ")
    if words[0] not in ("a", "an") or len(words) < 2:
        return expected
    words = words[1:]
    end = next((i for i, w in enumerate(words) if w.startswith("(") or w in (">=", ">", "<", "of")), len(words))
    words[end - 1] += "s"
    return " ".join(words)


@dataclasses.dataclass(frozen=True)
class PerResolution(Type):
    """A list for every resolution, or a mapping {resolution: list}. Returned as {None: list} or {res: list}."""

    values: ListOf

    @property
    def expected(self) -> str:
        return f"{self.values.expected}, or a mapping {{resolution: such a list}}"

    def check(self, value, path, problems):
        if not isinstance(value, dict):
            got = self.values.check(value, path, problems) if isinstance(value, list) else problems.expected(
                path, self.expected, value)
            return INVALID if got is INVALID else {None: got}
        if not value:
            return problems.expected(path, self.expected, value)
        table = {}
        for res, items in value.items():
            if not is_int(res) or res < 1:
                problems.expected(path + (res,), "a resolution in pixels (positive integer) as the key", res)
                table[res] = INVALID
            else:
                table[res] = self.values.check(items, path + (res,), problems)
        return INVALID if INVALID in table.values() else table


@dataclasses.dataclass(frozen=True)
class PerModel(Type):
    """One ``value`` for every model, or a mapping {model name: value}, returned as the value or a dict. Which
    names a mapping must cover is the suite's to say (its models: :func:`per_model_problems`)."""

    value: Type

    @property
    def expected(self) -> str:
        return f"{self.value.expected}, or a mapping {{model name: such a value}}"

    def check(self, value, path, problems):
        if not isinstance(value, dict):
            return self.value.check(value, path, problems)
        if not value:
            return problems.expected(path, self.expected, value)
        table = {}
        for name, item in value.items():
            if not isinstance(name, str):
                problems.expected(path + (name,), "a model name as the key", name)
                table[name] = INVALID
            else:
                table[name] = self.value.check(item, path + (name,), problems)
        return INVALID if INVALID in table.values() else table


def per_model(value: Any, model: str) -> Any:
    """What a :class:`PerModel` value gives ``model`` (KeyError when a mapping does not name it)."""
    return value[model] if isinstance(value, dict) else value


def per_model_problems(value: Any, key: str, model_names: Iterable[str]) -> list[tuple[str, str]]:
    """A per-model mapping must name every model of the suite and no other: (option, message) for each gap."""
    if not isinstance(value, dict):
        return []
    names = list(dict.fromkeys(model_names))
    option = key.rsplit(".", 1)[-1]
    problems = [(option, f"key '{key}': expected a value for every model of the suite, got none for '{m}'")
                for m in names if m not in value]
    problems += [(option, f"key '{key}.{m}': expected one of the suite's models ({', '.join(names)}), got '{m}'")
                 for m in value if m not in names]
    return problems


# ----------------------------------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a record: its type, its default (in the file's own form; REQUIRED: none), what it means."""

    name: str
    type: Type
    default: Any = REQUIRED
    doc: str = ""


def key(type: Type, default: Any = REQUIRED, doc: str = "") -> Any:
    """Declare a record dataclass field: ``x: int = key(Integer(1), 5, "what x means")``."""
    return dataclasses.field(metadata={"type": type, "default": default, "doc": doc})


def fields_of(record: type | Iterable[Field]) -> list[Field]:
    """The Fields of a record dataclass (declared with :func:`key`) or of a list of Fields."""
    if isinstance(record, type) and dataclasses.is_dataclass(record):
        return [Field(f.name, f.metadata["type"], f.metadata["default"], f.metadata["doc"])
                for f in dataclasses.fields(record) if "type" in f.metadata]
    return list(record)


class Record(Type):
    """A mapping with declared keys. ``check`` returns an instance of the dataclass (or a dict for a list of
    Fields), every missing key at its default. ``inherit`` (a record instance or dict) supplies the missing keys
    instead of the defaults (a device section over the top level); ``what`` names the record in messages. With
    ``partial`` the result holds only the keys given (a dict), for values merged over others later."""

    def __init__(self, record: type | Iterable[Field], what: str = "keys", partial: bool = False):
        self.record = record
        self.fields = fields_of(record)
        self.what = what
        self.partial = partial

    @property
    def expected(self) -> str:
        return f"a mapping with any of the {self.what} ({', '.join(f.name for f in self.fields)})"

    def check(self, value, path, problems, inherit: Any = None):
        if not isinstance(value, dict):
            return problems.expected(path, self.expected, value)
        known = {f.name: f for f in self.fields}
        ok = True
        for k in value:
            if k not in known:
                problems.expected(path + (k,), f"one of the {self.what} ({', '.join(known)})", k,
                                  f"unknown key {describe(k)}")
                ok = False
        out = {}
        for f in self.fields:
            if f.name in value:
                out[f.name] = f.type.check(value[f.name], path + (f.name,), problems)
            elif self.partial:
                continue
            elif inherit is not None:
                out[f.name] = inherit[f.name] if isinstance(inherit, dict) else getattr(inherit, f.name)
            elif f.default is REQUIRED:
                out[f.name] = problems.expected(path + (f.name,), f.type.expected, None,
                                                "nothing (the key is missing)")
            else:
                out[f.name] = f.default if f.default is None else f.type.check(f.default, path + (f.name,), problems)
            ok = ok and out[f.name] is not INVALID
        if not ok:
            return INVALID
        return self.record(**out) if isinstance(self.record, type) and not self.partial else out

    def defaults(self) -> Any:
        """The record with every key at its default (raises if one is required)."""
        problems = Problems()
        value = self.check({}, (), problems)
        if problems:
            raise ValueError(f"no defaults for {[m for _, m in problems]}")
        return value


@dataclasses.dataclass(frozen=True)
class MapOf(Type):
    """A mapping from names of ``keys`` to values whose type may depend on the key (``values(key) -> Type``)."""

    keys: Choice
    values: Callable[[str], Type]
    expected: str = "a mapping"

    def check(self, value, path, problems):
        if not isinstance(value, dict):
            return problems.expected(path, self.expected, value)
        out = {}
        names = self.keys.names()
        for k, v in value.items():
            if k not in names:
                problems.expected(path + (k,), f"{self.keys.what} as the key ({', '.join(names) or 'none'})", k)
                out[k] = INVALID
            else:
                out[k] = self.values(k).check(v, path + (k,), problems)
        return INVALID if INVALID in out.values() else out


# -------------------------------------------------------------------------------------------------- documents
def document(record: Record, heading: str = "", depth: int = 0) -> list[str]:
    """Markdown lines documenting a record's keys: name, expected form, default, meaning."""
    lines = [heading, ""] if heading else []
    lines += ["| key | expected | default | meaning |", "|---|---|---|---|"]
    for f in record.fields:
        default = "required" if f.default is REQUIRED else f"`{_yaml_text(f.default)}`"
        lines.append(f"| `{f.name}` | {f.type.expected} | {default} | {f.doc} |")
    return lines


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)
