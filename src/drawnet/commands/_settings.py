"""``--set key=value`` settings from the command line, typed by the config dataclasses' fields."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any


def _coerce(key: str, text: str, annotation: Any) -> Any:
    """Parse ``text`` as a value of the dataclass field type ``annotation``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # a bare string such as cpu or binarized_mnist
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(key, text, a)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"--set {key}={text}: expected {annotation}, got {text!r}")
    target = origin or annotation
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        tuple: isinstance(value, list),
        dict: isinstance(value, dict),
    }.get(target)
    if not ok:
        name = getattr(target, "__name__", str(target))
        raise ValueError(f"--set {key}={text}: expected a value of type {name}, got {text!r}")
    if target is float:
        return float(value)  # JSON accepts NaN and Infinity; the config's own checks reject them
    if target is tuple:
        return tuple(value)
    return value


def parse_overrides(pairs: list[str], **targets: type) -> dict[str, dict[str, Any]]:
    """Turn ``["key=value", ...]`` into typed overrides, one dict per target dataclass.

    ``targets`` maps a section name (e.g. "model", "train") to its dataclass; a key is looked up in
    each, and may be written ``section.key`` when two sections share it. Values are JSON (numbers,
    true/false, null, lists) or bare strings. Unknown keys and wrongly typed values raise ValueError
    naming the valid choices, before any work is done.
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in targets}
    fields = {
        name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in targets.items()
    }
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip()
        section, _, bare = key.rpartition(".")
        candidates = [section] if section else [s for s in targets if bare in fields[s]]
        candidates = [s for s in candidates if s in fields and bare in fields[s]]
        if not candidates:
            valid = sorted(f"{s}.{k}" if section else k for s in fields for k in fields[s])
            raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(valid)}")
        if len(candidates) > 1:
            raise ValueError(f"setting {key!r} is ambiguous; write one of {[f'{s}.{bare}' for s in candidates]}")
        s = candidates[0]
        annotation = typing.get_type_hints(targets[s])[bare]
        out[s][bare] = _coerce(key, text, annotation)
    return out
