"""One way to read a YAML config file: expert profiles, job specs and training configs all use it.

A file is read with `read_yaml` (it must parse, and its top level must be a mapping), then each mapping
is checked against a typed dataclass by `check_mapping` / `typed`: every key must be one of the
dataclass's fields, every value of that field's type, and pass the field's check (`at_least`,
`between`, `one_of`, `keyed_by`, ...). Every mistake raises `ConfigError`, a `UserError` whose message
is ONE line naming the file, the key path and, for a typo, its closest match, e.g.

    jobs/sample.yaml: unknown key 'batch_sise' (did you mean 'batch_size'?)
    configs/train-tiny.yaml: 'model.mode' is 'stepp2', expected one of 'step1', 'step2', 'eval' (did you mean 'step2'?)

so the CLI prints it without a traceback, and nothing misspelt silently falls back to a default.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError

Check = Callable[[Any, str, str], None]  # (value, file, key path) -> None, or raises ConfigError


class ConfigError(UserError):
    """A config file says something that cannot be meant; the message is one line."""


def shown(path: str | Path) -> str:
    """The path as the user would write it: relative to the working directory when it lies inside."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The file's top-level mapping; an empty file is an empty mapping."""
    where = shown(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({getattr(err, 'problem', None) or err})") from None
    except (OSError, UnicodeDecodeError) as err:  # missing, a folder, binary
        raise ConfigError(
            f"{where}: cannot read it as YAML text ({getattr(err, 'strerror', None) or err})"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: the top level is {_short(raw)}, expected a mapping of keys (key: value lines)"
        )
    return raw


def fields_of(cls: type, *without: str) -> dict[str, Any]:
    """What a mapping may set on dataclass `cls`: its init fields (less `without`) and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.init and f.name not in without}


def check_mapping(
    raw: Any, hints: Mapping[str, Any], where: str, path: str = "", checks: Mapping[str, Check] | None = None
) -> dict[str, Any]:
    """`raw`, after checking that it is a mapping whose keys are in `hints`, each value of its hinted
    type and passing `checks[key]` (checks never see None, which only an `X | None` field admits)."""
    check_type(raw, dict, where, path or "(top level)")
    for key, value in raw.items():
        name = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise unknown_key(where, path, key, hints)
        check_type(value, hints[key], where, name)
        if value is not None and key in (checks or {}):
            checks[key](value, where, name)
    return raw


def typed(
    cls: type, raw: Any, where: str, path: str = "", checks: Mapping[str, Check] | None = None, **fixed
):
    """`cls(**raw, **fixed)` once `raw` passes `check_mapping`; `fixed` fields are not the file's to set."""
    return cls(**check_mapping(raw, fields_of(cls, *fixed), where, path, checks), **fixed)


# --------------------------------------------------------------------------------------- messages


def unknown_key(where: str, path: str, key: Any, known: Collection[str]) -> ConfigError:
    prefix = f"{path}." if path else ""
    match = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"did you mean '{prefix}{match[0]}'?" if match else f"known: {', '.join(sorted(known)) or 'none'}"
    return ConfigError(f"{where}: unknown key '{prefix}{key}' ({hint})")


def invalid(where: str, name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where}: '{name}' is {_short(value)}, expected {expected}")


def _short(value: Any) -> str:
    text = repr(value)  # repr: strings show their quotes and escape newlines, so the message stays one line
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------ types


def fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value has the type a dataclass field declares (ints pass as floats, bools as
    nothing else: YAML's `yes`/`true` is no batch size)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):  # YAML has lists only; tuple[float, float, float] wants exactly three
        fixed_length = origin is tuple and Ellipsis not in args
        return (
            isinstance(value, list | tuple)
            and (not fixed_length or len(value) == len(args))
            and all(fits(v, args[0]) for v in value)
        )
    if origin is dict:
        return isinstance(value, dict) and all(fits(v, args[1]) for v in value.values())
    return isinstance(value, origin or hint)  # str, bool, NoneType (from `X | None`), plain dict/list


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
_NAMES |= {list: "a list", tuple: "a list", dict: "a mapping"}


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple) and args[0] is not Any:
        return f"a list of {type_name(args[0]).split(' ', 1)[-1]}s"
    if origin is dict and args[1] is not Any:
        return f"a mapping of {type_name(args[1]).split(' ', 1)[-1]}s"
    return _NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def check_type(value: Any, hint: Any, where: str, name: str) -> None:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict and isinstance(value, dict):  # name the entry that is wrong
        for key, item in value.items():
            check_type(item, args[1], where, f"{name}.{key}")
    elif not fits(value, hint):
        expected = type_name(hint)
        if fits(1.0, hint) and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as text
            expected += " (write numbers like 1.0e-4, with a dot, for YAML to read them as numbers)"
        raise invalid(where, name, value, expected)


# ------------------------------------------------------------------------------------------ checks


def at_least(low: float) -> Check:
    def check(value, where, name):
        if value < low:
            raise invalid(where, name, value, f"at least {low}")

    return check


def above(low: float) -> Check:
    def check(value, where, name):
        if not value > low:
            raise invalid(where, name, value, f"more than {low}")

    return check


def between(low: float, high: float) -> Check:
    def check(value, where, name):
        if not low <= value <= high:
            raise invalid(where, name, value, f"between {low} and {high}")

    return check


def one_of(*choices: Any) -> Check:
    def check(value, where, name):
        if value not in choices:
            match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise invalid(where, name, value, f"one of {', '.join(map(repr, choices))}{hint}")

    return check


def keyed_by(names: Collection[str], each: Check | None = None) -> Check:
    """For a mapping keyed by known names (experts, say): an unknown name is an unknown key."""

    def check(value, where, name):
        for key, item in value.items():
            if key not in names:
                raise unknown_key(where, name, key, names)
            if each is not None:
                each(item, where, f"{name}.{key}")

    return check
