"""Typed reads of JSON config fields (config.json, adapter configs): one clear error per bad value.

Every checkpoint reader takes its numbers through these, so `"hidden_size": "abc"`, `null`,
`0`, `true` or `"big"` is a `CheckpointError` naming the file and field, never a traceback.
"""

from __future__ import annotations

import math
from typing import Any

from shadow_edge.errors import CheckpointError

_MISSING = object()


def _bad(where: str, key: str, value: Any, expected: str) -> CheckpointError:
    return CheckpointError(f"{where}: field `{key}` is {value!r}; expected {expected}; fix the value in that file "
                           "(or re-save the checkpoint with its trainer)")


def _missing(key: str, default: Any, where: str) -> Any:
    if default is _MISSING:
        raise CheckpointError(f"{where}: required field `{key}` is missing; re-save the checkpoint with its trainer")
    return default


def get_int(cfg: dict, key: str, where: str, default: Any = _MISSING, minimum: int | None = 1) -> Any:
    """An integer field (>= minimum); integral floats like 64.0 count. `default` (may be None) if absent."""
    if key not in cfg:
        return _missing(key, default, where)
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, key, value, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise _bad(where, key, value, f"an integer >= {minimum}")
    return value


def get_optional_int(cfg: dict, key: str, where: str, minimum: int | None = 1) -> int | None:
    """An integer field that may be absent or null."""
    return None if cfg.get(key) is None else get_int(cfg, key, where, minimum=minimum)


def get_float(cfg: dict, key: str, where: str, default: Any = _MISSING, positive: bool = False) -> Any:
    """A finite number (> 0 when `positive`); `default` if absent."""
    if key not in cfg:
        return _missing(key, default, where)
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(where, key, value, "a finite number" + (" > 0" if positive else ""))
    if positive and value <= 0:
        raise _bad(where, key, value, "a number > 0")
    return float(value)


def get_bool(cfg: dict, key: str, where: str, default: bool = False) -> bool:
    """true/false (null counts as absent)."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(where, key, value, "true or false")
    return value


def get_dict(cfg: dict, key: str, where: str) -> dict:
    """An object field; absent or null gives {}."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, key, value, "a JSON object")
    return value


def token_ids(value: Any, where: str, key: str) -> list[int]:
    """A special-token id field: null, an id, or a list of ids (each >= 0)."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _bad(where, key, value, "a token id (integer >= 0), a list of them, or null")
    return list(items)
