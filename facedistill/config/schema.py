"""Turn plain dicts (from YAML) into typed dataclasses, with errors that name the key path.

Every recipe section is a dataclass; this module walks its fields, so there is one validator for
all of them and adding a knob is adding a field. Unknown keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Union

from facedistill.errors import RecipeError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, where)
            except RecipeError as e:
                # a list or mapping that fits an alternative's shape: its own error names the inner key
                shaped = (isinstance(value, list) and typing.get_origin(arg) is list) or (
                    isinstance(value, dict) and dataclasses.is_dataclass(arg))
                errors.append((shaped, e))
        for shaped, e in errors:
            if shaped:
                raise e
        raise RecipeError(f"{where}: `{path}` must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: `{path}` must be a list, got {value!r}")
        return [_convert(v, inner, f"{path}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: `{path}` must be a mapping of keys, got {value!r}")
        return from_dict(tp, value, path, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string: what was meant is the number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise RecipeError(f"{where}: `{path}` must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def choice(value: str, options: tuple[str, ...], path: str, where: str) -> None:
    """Refuse a value outside ``options``, naming the key and the closest option."""
    if value not in options:
        close = difflib.get_close_matches(value, options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{where}: `{path}` is {value!r}, expected one of {', '.join(options)}{hint}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any], path: str = "", where: str = "recipe") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise RecipeError."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean `{(path + '.' if path else '') + close[0]}`?" if close else ""
            valid = ", ".join(fields)
            raise RecipeError(f"{where}: unknown key `{key_path}`{hint} (valid keys here: {valid})")
        kwargs[key] = _convert(value, hints[key], key_path, where)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for saving the resolved recipe)."""
    return dataclasses.asdict(obj)


def get_path(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def check_normalisation(section: Any, key: str, where: str) -> None:
    """A model's input keys (``channel_order``, ``mean``, ``std``; None = unset): RGB/BGR, one number
    or three per channel, no zero std. ``key`` names the section (``student``, ``teachers[1]``)."""
    if section.channel_order is not None:
        choice(section.channel_order, ("RGB", "BGR"), f"{key}.channel_order", where)
    for name in ("mean", "std"):
        value = getattr(section, name)
        if isinstance(value, list) and len(value) != 3:
            raise RecipeError(f"{where}: `{key}.{name}` must be one number or three (per channel, in the "
                              f"model's channel order), got {len(value)}: {value!r}")
    std = section.std
    if std is not None and any(v == 0 for v in (std if isinstance(std, list) else [std])):
        raise RecipeError(f"{where}: `{key}.std` must not be 0")
