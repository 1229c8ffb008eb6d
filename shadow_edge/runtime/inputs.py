"""Argument checks of the runtime API, in one place: integers, flags, text, token arrays, masks, providers.

Every check raises `InputError` naming the argument, what was given, what is expected and
how to fix it. Numpy scalars are accepted wherever a Python int/float/bool is meant.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from shadow_edge.errors import InputError


def is_int(x) -> bool:
    """A Python or numpy integer (bools are not integers here)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_number(x) -> bool:
    """A real Python or numpy number (not a bool)."""
    return is_int(x) or isinstance(x, (float, np.floating))


def as_int(x, name: str, minimum: int | None = None, hint: str = "") -> int:
    if not is_int(x) or (minimum is not None and x < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise InputError(f"{name} is {x!r}; it must be an integer{bound}{hint}")
    return int(x)


def max_threads() -> int:
    """The most onnxruntime threads a runtime may ask for: 4x the CPUs (past the cores more threads only
    contend; the slack covers CPU quotas that os.cpu_count() does not see). 100000 threads hung the process."""
    return 4 * (os.cpu_count() or 1)


def thread_count(threads, name: str = "threads") -> int | None:
    """None (all cores) or an integer in [1, max_threads()]."""
    if threads is None:
        return None
    n = as_int(threads, name, 1, " (or None for all cores)")
    if n > max_threads():
        raise InputError(f"{name} is {n}; this machine has {os.cpu_count()} CPUs and at most {max_threads()} "
                         f"threads are allowed (more only contend for the cores); use at most {os.cpu_count()}")
    return n


def as_float(x, name: str, allowed: str) -> float:
    """A finite number (Python or numpy) as a float; `allowed` describes the valid range for the message."""
    if not is_number(x) or not math.isfinite(float(x)):
        raise InputError(f"{name} is {x!r}; it must be a finite number {allowed}")
    return float(x)


def as_bool(x, name: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise InputError(f"{name} is {x!r} ({type(x).__name__}); it must be True or False")
    return bool(x)


def check_text(text: str, where: str) -> str:
    """Text must encode as UTF-8 (a lone surrogate, e.g. from undecodable command-line bytes, cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end]
        raise InputError(f"{where} is not valid Unicode text: it contains {bad!r} at character {e.start} (a lone "
                         "surrogate, e.g. from bytes that are not UTF-8); pass UTF-8 text") from None
    return text


def token_array(input_ids, name: str = "input_ids") -> np.ndarray:
    """input_ids [t] or [b, t] as an integer array [b, t] (values are checked against the vocabulary elsewhere)."""
    try:
        ids = np.asarray(input_ids)
    except (ValueError, TypeError):  # ragged rows
        raise InputError(f"{name} rows have different lengths; forward() takes a rectangular [batch, t] array "
                         "(left-pad and pass attention_mask), generate() takes ragged prompts") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"{name} has shape {list(ids.shape)} and dtype {ids.dtype}; expected integer ids of shape "
                         "[t] or [batch, t] with batch, t >= 1")
    return ids


def attention_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    """A 0/1 mask of exactly `shape` ([b, t], the ids' shape, or [t] for a single row) as int64."""
    expected = f"0/1 values of the shape of input_ids {list(shape)}"
    try:
        arr = np.asarray(mask)
    except (ValueError, TypeError):
        raise InputError(f"attention_mask rows have different lengths; expected {expected}") from None
    if arr.ndim == 1 and shape[0] == 1:
        arr = arr[None]
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"attention_mask has dtype {arr.dtype}; expected {expected}")
    if tuple(arr.shape) != tuple(shape):
        raise InputError(f"attention_mask has shape {list(np.shape(mask))}; expected {expected}")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"attention_mask{list(where)} is {arr[where]!r}; expected {expected} "
                         "(1 = real token, 0 = padding)")
    return arr.astype(np.int64)


def artifact_dir(art_dir) -> Path:
    if not isinstance(art_dir, (str, os.PathLike)) or (isinstance(art_dir, str) and not art_dir):
        raise InputError(f"artifact directory is {art_dir!r}; pass the path of a directory written by "
                         "`shadow-edge export`")
    return Path(art_dir)


def providers(value, available: list[str]) -> tuple[str, ...] | None:
    """None (the CPU provider) or a list of onnxruntime provider names that this onnxruntime has."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"providers is {value!r}; it must be a non-empty list of onnxruntime provider names "
                         f"such as ['CPUExecutionProvider'] (available here: {', '.join(available)})")
    for p in value:
        name = p[0] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], dict) else p
        if not isinstance(name, str) or name not in available:
            raise InputError(f"provider {name!r} is not available in this onnxruntime; available: "
                             f"{', '.join(available)} (install the onnxruntime build for that device)")
    return tuple(value)
