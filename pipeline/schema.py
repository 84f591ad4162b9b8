"""Reading params: a YAML file into annotated, frozen dataclasses, with errors of one line that name the key,
the value and what is allowed (``params: <key> = <value> is not valid; allowed: <what>``).

A dataclass's annotations are its schema: types, ``Literal`` choices, nested dataclasses, lists and mappings of
them, and ``annotated_types`` bounds (``Annotated[int, Ge(1)]``, ``Interval(gt=0, le=1)``) with a plain string
where a bound needs its reason. pydantic v2 checks values against them: it is the common reader of that
vocabulary, so a library's option dataclass declares its ranges without importing pydantic or this module, and
no type parser of our own is needed. pydantic's defaults are not ours, though: every key must be given (a
class whose ``LEFT_OUT_IS_NULL`` is true may leave out its nullable keys), and a number may be neither inf
nor NaN; both are checked here first. After the types, each dataclass's ``check(where)`` runs, innermost
first: the rules that tie settings together.

The schema itself, ``params.yaml``'s, is :mod:`pipeline.config`.
"""
from __future__ import annotations

import functools
import json
import math
import re
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Interval, Len, MultipleOf, Predicate
from pydantic import TypeAdapter, ValidationError

Count = Annotated[int, Ge(1)]                       # the common kinds of setting
Positive = Annotated[float, Gt(0)]
Share = Annotated[float, Interval(ge=0, le=1)]
Folder = Annotated[str, Predicate(str.strip)]


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def fail(where: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"params: {where} = {value!r} is not valid; allowed: {allowed}")


def check_distinct(section: Any, where: str, *names: str) -> None:
    for name in names:
        if len(set(getattr(section, name))) != len(getattr(section, name)):
            fail(f"{where}.{name}", list(getattr(section, name)), "distinct names")


# --------------------------------------------------------------------------------------------
# Reading annotations: what a type allows, in words
# --------------------------------------------------------------------------------------------
def unwrapped(hint: Any) -> tuple[Any, list, bool]:
    """(the bare type, its ``Annotated`` metadata, whether null is allowed)."""
    metadata, nullable = [], False
    while True:
        if typing.get_origin(hint) is Annotated:
            metadata += hint.__metadata__
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            nullable, hint = True, next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            return hint, metadata, nullable


def hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def keys_of(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


def describe(hint: Any) -> str:
    """What a value of ``hint`` may be: "a positive integer", "one of 'l1', 'l2'", "a number in (0, 1], or null"."""
    kind, metadata, nullable = unwrapped(hint)
    bound = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None}
    origin = typing.get_origin(kind)
    if origin is Literal:
        text = "one of " + ", ".join(map(repr, typing.get_args(kind)))
    elif origin in (list, tuple):
        length = next(((m.min_length, m.max_length) for m in metadata if isinstance(m, Len)), (0, None))
        text = (f"a list of {length[0]} items" if length[0] == length[1] else
                f"a list of at least {length[0]} items" if length[0] > 1 else "a non-empty list" if length[0] else "a list")
        text += f", each {describe(typing.get_args(kind)[0])}"
    elif origin is dict:
        text = f"a mapping of names to {describe(typing.get_args(kind)[1])}"
    elif is_dataclass(kind):
        text = "a mapping with keys " + ", ".join(keys_of(kind))
    elif kind in (int, float):
        noun = "integer" if kind is int else "number"
        low, high = bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt"))
        if low is not None and high is not None:
            text = (f"an integer in {low}..{high}" if kind is int and {"ge", "le"} <= bound.keys() else
                    f"a number in {'[' if 'ge' in bound else '('}{low:g}, {high:g}{']' if 'le' in bound else ')'}")
        elif bound.get("ge") == 1 and kind is int or bound.get("gt") == 0:
            text = f"a positive {noun}"
        elif bound:
            (name, value), = bound.items()
            text = f"{'an' if kind is int else 'a'} {noun} {dict(ge='>=', gt='>', le='<=', lt='<')[name]} {value:g}"
        else:
            text = f"{'an' if kind is int else 'a'} {noun}"
        text += "".join(f", a multiple of {m.multiple_of}" for m in metadata if isinstance(m, MultipleOf))
    else:
        text = {bool: "true or false", str: "a string"}.get(kind, str(kind))
        text = "a non-blank string" if any(isinstance(m, Predicate) for m in metadata) else text
    reasons = [m for m in metadata if isinstance(m, str)]
    return text + (", or null" if nullable else "") + (f" ({'; '.join(reasons)})" if reasons else "")


def dotted(where: str, key: Any) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)


def check_keys(raw: Any, hint: Any, where: str) -> None:
    """Every key that ``hint`` reads is in ``raw`` and no other; every number is finite. (pydantic, which checks the
    values, would fill a missing key from the library's default, and takes inf for a number.)"""
    kind, _, _ = unwrapped(hint)
    origin = typing.get_origin(kind)
    if is_dataclass(kind) and isinstance(raw, dict):
        hints, names = hints_of(kind), keys_of(kind)
        for key in raw:
            if key not in names:
                raise ConfigError(f"params: unknown key {dotted(where, key)!r}; allowed keys here: {', '.join(names)}")
        for name in names:
            if name in raw:
                check_keys(raw[name], hints[name], dotted(where, name))
            elif not (getattr(kind, "LEFT_OUT_IS_NULL", False) and unwrapped(hints[name])[2]):
                raise ConfigError(f"params: missing key {dotted(where, name)!r} ({describe(hints[name])})")
    elif origin is dict and isinstance(raw, dict):
        for key, value in raw.items():
            check_keys(value, typing.get_args(kind)[1], dotted(where, key))
    elif origin in (list, tuple) and isinstance(raw, list):
        for i, value in enumerate(raw):
            check_keys(value, typing.get_args(kind)[0], dotted(where, i))
    elif (isinstance(raw, float) and not math.isfinite(raw) or isinstance(raw, bool) and kind is not bool
          or not isinstance(raw, (str, int, float, list, dict, type(None)))):
        fail(where, raw, describe(hint))


def hint_at(hint: Any, loc: tuple) -> Any:
    """The annotation of the value at ``loc`` (a pydantic error's path) inside a value of ``hint``."""
    for key in loc:
        kind = unwrapped(hint)[0]
        hint = hints_of(kind)[key] if is_dataclass(kind) else typing.get_args(kind)[-1 if isinstance(key, str) else 0]
    return hint


@functools.cache
def adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def build(cls: type, raw: Any, where: str = ""):
    """``cls`` read from ``raw`` (a mapping as yaml.safe_load gives it), every key and value checked, then each
    section's ``check``."""
    if not isinstance(raw, dict):
        fail(where or "params.yaml", raw, describe(cls))
    check_keys(raw, cls, where)
    try:
        obj = adapter(cls).validate_json(json.dumps(raw), strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        key = functools.reduce(dotted, first["loc"], where)
        if first["type"] != "value_error":
            fail(key, first["input"], describe(hint_at(cls, first["loc"])))
        rule = str(first["ctx"]["error"])  # a library class's own rule, best stated as "<field> = <value> is not valid; ..."
        if re.match(r"\w+ = .* is not valid; allowed: ", rule):
            raise ConfigError(f"params: {dotted(key, rule)}") from None
        fail(key, first["input"], rule)
    run_checks(obj, where)
    return obj


def run_checks(obj: Any, where: str) -> None:
    """Each section's ``check`` (the rules that tie its settings together), innermost first."""
    if is_dataclass(obj):
        for name in keys_of(type(obj)):
            run_checks(getattr(obj, name), dotted(where, name))
        if hasattr(obj, "check"):
            obj.check(where)
    elif isinstance(obj, (dict, list, tuple)):
        for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
            run_checks(value, dotted(where, key))


def options_from(section: Any, options: type, **changes):
    """The library's ``options`` read from a params ``section`` that extends them (a section may hold more: its
    figure sizes, its sample counts); ``changes`` set what the stage decides (a seed)."""
    return options(**{name: getattr(section, name) for name in keys_of(options)} | changes)


def to_dict(obj: Any) -> Any:
    """Plain-data copy of params, as params.yaml would write them: a dataset entry leaves out what it does not read."""
    if is_dataclass(obj):
        unread = obj.unread(vars(obj)) if hasattr(obj, "unread") else set()
        return {name: to_dict(getattr(obj, name)) for name in keys_of(type(obj)) if name not in unread}
    if isinstance(obj, dict):
        return {key: to_dict(value) for key, value in obj.items()}
    return [to_dict(value) for value in obj] if isinstance(obj, (list, tuple)) else obj


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice in the same mapping", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Parse ``path``; a missing file, a syntax error or a duplicated key is a one-line error with the file and line."""
    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "not found; run stages from the repository root"
        raise ConfigError(f"params: {path} {where}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"params: {path} cannot be read as UTF-8 text ({err})") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(str(err.problem or err.context or "syntax error").split())
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"params: {path} is not valid YAML{place} ({problem}); fix it there") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params: {path} is not valid YAML ({' '.join(str(err).split())})") from None
