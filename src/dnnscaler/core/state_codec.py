"""Policy state to JSON-able data and back.

A policy's state is a frozen dataclass of numbers, strings, enums, tuples and nested frozen
dataclasses (an observation, which decision traces keep, also maps batch sizes to
statistics: a mapping is encoded as a JSON object, integer keys as strings). The controller
persists it per model (SQLite) so that a restarted controller resumes what each policy
learned instead of probing again; this module is the codec. Decoding is typed by the
dataclass's own annotations and strict: a wrong type, an unknown field or a malformed tuple
raises ``InvalidValue`` naming the path to the value (``DnnScalerState.surface.law.knots[2]``).
A field missing from the data takes its default, so state written before a field was added
still loads.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from dnnscaler.core.types import InvalidValue

T = TypeVar("T")


def to_data(obj: Any) -> Any:
    """``obj`` as plain dicts, lists, numbers, strings, booleans and None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_data(x) for x in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot encode {type(obj).__name__}")


def from_data(cls: type[T], data: Any) -> T:
    """The ``cls`` instance that ``to_data`` encoded as ``data``."""
    return typing.cast(T, _decode(cls, data, cls.__name__))


def _decode(tp: Any, data: Any, path: str) -> Any:
    if tp is Any:
        return data
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(get_args(tp), data, path)
    if origin is tuple:
        return _decode_tuple(get_args(tp), data, path)
    if origin in (dict, Mapping):
        return _decode_mapping(get_args(tp), data, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, data, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in tp)
            raise InvalidValue(path, f"{data!r} is not one of {valid}") from None
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise InvalidValue(path, f"expected a number, got {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise InvalidValue(path, f"expected an integer, got {data!r}")
        return data
    if tp is bool or tp is str:
        if not isinstance(data, tp):
            raise InvalidValue(path, f"expected {tp.__name__}, got {data!r}")
        return data
    raise TypeError(f"{path}: cannot decode type {tp!r}")


def _decode_union(args: tuple[Any, ...], data: Any, path: str) -> Any:
    if data is None:
        if type(None) in args:
            return None
        raise InvalidValue(path, "must not be null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _decode(arg, data, path)
        except InvalidValue as e:
            errors.append(str(e))
    raise InvalidValue(path, "; ".join(errors) or f"unexpected {data!r}")


def _decode_tuple(args: tuple[Any, ...], data: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(data, list | tuple):
        raise InvalidValue(path, f"expected a list, got {data!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], x, f"{path}[{i}]") for i, x in enumerate(data))
    if len(data) != len(args):
        raise InvalidValue(path, f"expected {len(args)} items, got {len(data)}")
    pairs = enumerate(zip(args, data, strict=True))
    return tuple(_decode(a, x, f"{path}[{i}]") for i, (a, x) in pairs)


def _decode_mapping(args: tuple[Any, ...], data: Any, path: str) -> dict[Any, Any]:
    if not isinstance(data, dict):
        raise InvalidValue(path, f"expected an object, got {data!r}")
    key_tp, value_tp = args
    out = {}
    for k, v in data.items():
        if key_tp is int:
            try:
                key: Any = int(k)
            except ValueError:
                raise InvalidValue(path, f"key {k!r} is not an integer") from None
        else:
            key = _decode(key_tp, k, path)
        out[key] = _decode(value_tp, v, f"{path}[{k}]")
    return out


def _decode_dataclass(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidValue(path, f"expected an object, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidValue(f"{path}.{unknown[0]}", f"unknown field of {cls.__name__}")
    hints = get_type_hints(cls)
    kwargs = {
        name: _decode(hints[name], data[name], f"{path}.{name}") for name in known if name in data
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidValue(path, str(e)) from e
