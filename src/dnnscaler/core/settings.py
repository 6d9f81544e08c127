"""Daemon settings from a TOML file, the environment and flags, in that order of precedence.

One rule for every daemon: a settings dataclass names its keys (its fields); the file holds
them in a table named after the daemon (``[controller]``, ``[agent]``); each key can be
overridden by ``DNNSCALER_<KEY>`` in the environment (what systemd's ``EnvironmentFile=``
sets) and by ``--<key>`` on the command line. Every error names the field and where its
value came from (the file, the variable or the flag), and nothing starts on a bad value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dnnscaler.core.types import InvalidValue, shown

ENV_PREFIX = "DNNSCALER_"
DEFAULT = "default"

T = TypeVar("T")


class ConfigError(InvalidValue):
    """A setting failed: ``where`` says which file, variable or flag gave the value."""

    def __init__(self, where: str, field_name: str, message: str) -> None:
        super().__init__(field_name, message)
        self.where = where
        self.args = (f"{where}: {field_name}: {message}",)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Resolved:
    """A settings object and where each of its values came from."""

    value: Any
    origin: dict[str, str]

    def blame(self, e: InvalidValue, where_file: str) -> ConfigError:
        """``e`` (a validation error) as a ``ConfigError`` naming where its field's value
        came from: ``where_file`` for the file, else the variable, flag or default."""
        src = self.origin.get(e.field, DEFAULT)
        return ConfigError(where_file if src.startswith("file") else src, e.field, e.message)

    def rows(self) -> list[tuple[str, str, str]]:
        """(key, value as TOML would spell it, origin) per field, in declaration order."""
        return [
            (f.name, _show(getattr(self.value, f.name)), self.origin[f.name])
            for f in dataclasses.fields(self.value)
        ]


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def read_file(path: str | Path) -> dict[str, Any]:
    """The whole TOML document at ``path``; errors name the file (and the line, for syntax)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(p), "file", "not found") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(str(p), "file", f"cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), "file", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), "file", f"is not valid TOML: {e}") from None


def table_of(doc: Mapping[str, Any], path: str | Path, table: str) -> dict[str, Any]:
    """The ``[table]`` of a document read from ``path`` (empty if the file has none)."""
    value = doc.get(table, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}", table, f"must be a table ([{table}]), got {_kind(value)}")
    return dict(value)


def resolve(
    cls: type[T],
    *,
    table: str,
    file_values: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Resolved:
    """Build ``cls`` from its defaults, then the file's ``[table]``, then ``DNNSCALER_*``
    variables, then flags (``None`` = not given). Unknown keys in the file are errors (a
    misspelt key would otherwise be silently ignored); each value is type-checked, then the
    class's own validation runs and its error is re-raised naming the value's origin."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = dict(flag_names or {})
    where_file = f"{path} [{table}]" if path is not None else f"[{table}]"
    values: dict[str, Any] = {}
    origin = {k: DEFAULT for k in fields}
    for key, raw in (file_values or {}).items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                where_file, key, f"unknown key{hint}; valid keys: {', '.join(sorted(fields))}"
            )
        values[key] = _from_toml(hints[key], raw, where_file, key)
        origin[key] = f"file {path}" if path is not None else "file"
    for key in fields:
        var = env_name(key)
        if env is not None and var in env:
            values[key] = _from_text(hints[key], env[var], f"environment {var}", key)
            origin[key] = f"environment {var}"
    for key, raw in (flags or {}).items():
        if raw is None:
            continue
        if key not in fields:
            raise KeyError(key)  # a programming error: a flag mapped to no field
        flag = names.get(key, flag_name(key))
        if isinstance(raw, list):
            raw = tuple(raw)  # a repeatable flag
        if isinstance(raw, str) and hints[key] is not str:
            values[key] = _from_text(hints[key], raw, f"flag {flag}", key)
        elif isinstance(raw, float) and not math.isfinite(raw):
            raise ConfigError(f"flag {flag}", key, f"must be a finite number, got {raw}")
        else:
            values[key] = raw
        origin[key] = f"flag {flag}"
    try:
        value = cls(**values)
    except InvalidValue as e:
        raise Resolved(None, origin).blame(e, where_file) from None
    return Resolved(value, origin)


def resolve_file(
    cls: type[T],
    table: str,
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    doc: Mapping[str, Any] | None = None,
) -> Resolved:
    """``resolve`` with the file values read from ``path``'s ``[table]`` (``doc``: the
    document already read from it), or none without a path."""
    values: dict[str, Any] = {}
    if path is not None:
        values = table_of(read_file(path) if doc is None else doc, path, table)
    return resolve(
        cls,
        table=table,
        file_values=values,
        path=path,
        env=env,
        flags=flags,
        flag_names=flag_names,
    )


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    helps: Mapping[str, str],
    flag_names: Mapping[str, str] | None = None,
    choices: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """One flag per field of ``cls`` (default ``None``: not given), its help naming the
    default and the environment variable that also sets it."""
    hints = typing.get_type_hints(cls)
    names = dict(flag_names or {})
    for f in dataclasses.fields(cls):
        base, _ = _base(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None else f" (default {_show(default)})"
        help_text = f"{helps.get(f.name, '')}{shown} [{env_name(f.name)}]".strip()
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            kw["action"] = "append"
        else:
            kw["type"] = base
            kw["metavar"] = f.name.upper() if base is str else _metavar(base)
        if choices and f.name in choices:
            kw["choices"] = choices[f.name]
            kw.pop("metavar", None)
        parser.add_argument(names.get(f.name, flag_name(f.name)), **kw)


def _metavar(tp: Any) -> str:
    return {int: "N", float: "X"}.get(tp, "VALUE")


def flags_of(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings flags given on a command line (argparse default ``None`` = not given)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


# -- types -------------------------------------------------------------------------------


def _base(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) for ``X`` or ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _from_toml(tp: Any, raw: Any, where: str, key: str) -> Any:
    base, _ = _base(tp)
    if base is bool:
        if isinstance(raw, bool):
            return raw
    elif base is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
    elif base is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            v = float(raw)
            if not math.isfinite(v):
                raise ConfigError(where, key, f"must be a finite number, got {raw}")
            return v
    elif base is str:
        if isinstance(raw, str):
            return raw
    elif typing.get_origin(base) is tuple:
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise ConfigError(where, key, f"must be an array of strings, got {_kind(raw)}")
    raise ConfigError(where, key, f"must be {_type_word(base)}, got {_kind(raw)}")


def _from_text(tp: Any, raw: str, where: str, key: str) -> Any:
    base, _ = _base(tp)
    text = raw.strip()
    try:
        if base is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            v = float(text)
            if not math.isfinite(v):
                raise ValueError
            return v
    except ValueError:
        raise ConfigError(where, key, f"must be {_type_word(base)}, got {shown(raw)}") from None
    if typing.get_origin(base) is tuple:
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    return raw


def _type_word(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "an array of strings"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[tp]


def _kind(raw: Any) -> str:
    if isinstance(raw, bool):
        return f"the boolean {str(raw).lower()}"
    if isinstance(raw, int | float):
        return f"the number {raw}"
    if isinstance(raw, str):
        return f"the string {shown(raw)}"
    if isinstance(raw, list):
        return "an array" + (" with non-string items" if raw else "")
    if isinstance(raw, dict):
        return "a table"
    return type(raw).__name__


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(f'"{x}"' for x in v) + "]"
    return str(v)
