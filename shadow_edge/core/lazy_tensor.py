"""Checkpoint tensors read on use: shape and dtype from the safetensors header, values memory-mapped.

A `LazyTensor` stands for one tensor of a .safetensors file. `load()` maps it (safetensors' `safe_open`
returns a copy-on-write view of the mapped file, no copy) and converts it to float32: free for float32
files, one float32 copy of this tensor for bf16/fp16 ones. Nothing keeps the result, so a whole model is
never held in float32; consumers call `dense(t)` where they need values and let them go.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from safetensors import safe_open

from shadow_edge.errors import CheckpointError

# safetensors dtype codes of floating-point tensors and their sizes in bytes
FLOAT_CODES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
OTHER_CODES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
               "U32": "uint32", "I64": "int64", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class LazyValues(ABC):
    """Values computed on use: `shape` is known, `load()` gives float32 values that nobody keeps."""

    __slots__ = ()
    shape: torch.Size

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    @abstractmethod
    def load(self) -> torch.Tensor:
        """float32 values [shape], computed now."""

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """float32 values of the rows `index` (indices [n] or a slice) of a [N, ...] tensor."""
        return self.load()[index]


class LazyTensor(LazyValues):
    """Tensor `key` of the safetensors file `path`: `shape` and `stored_dtype` known, values read by `load()`."""

    __slots__ = ("path", "key", "shape", "stored_dtype", "_checked")

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], stored_dtype: str):
        if stored_dtype not in FLOAT_CODES:
            raise CheckpointError(f"{path}: tensor {key!r} has dtype torch.{OTHER_CODES.get(stored_dtype, stored_dtype)}; "
                                  "expected floating-point weights (float32/float16/bfloat16); quantized or integer checkpoints are not supported, re-save the "
                                  "model in float")
        self.path, self.key, self.shape, self.stored_dtype = path, key, torch.Size(shape), stored_dtype
        self._checked = False  # finiteness is checked on the first load

    @property
    def stored_nbytes(self) -> int:
        return self.numel() * FLOAT_CODES[self.stored_dtype]

    def raw(self) -> torch.Tensor:
        """The tensor as stored (bf16/fp16/fp32), a view of the mapped file."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                t = f.get_tensor(self.key)
        except Exception as e:  # the file changed or vanished since its header was read
            raise CheckpointError(f"{self.path}: cannot read tensor {self.key!r} ({e}); the checkpoint changed "
                                  "while exporting or is corrupt") from None
        if tuple(t.shape) != tuple(self.shape):
            raise CheckpointError(f"{self.path}: tensor {self.key!r} has shape {tuple(t.shape)}, its header said "
                                  f"{tuple(self.shape)}; the checkpoint changed while exporting")
        return t

    def load(self) -> torch.Tensor:
        """float32 values [shape]; non-finite values are refused (checked once)."""
        t = self.raw().float()
        if not self._checked:
            self._refuse_nonfinite(t)
            self._checked = True
        return t

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """float32 values of the rows `index` only: the other rows are not read or converted."""
        t = self.raw()[index].float()
        if not self._checked:
            self._refuse_nonfinite(t)
        return t

    def _refuse_nonfinite(self, t: torch.Tensor) -> None:
        bad = _count_nonfinite(t)
        if bad:
            raise CheckpointError(f"{self.path}: tensor {self.key!r} holds {bad} NaN/Inf value(s) of "
                                  f"{t.numel()}; the checkpoint is corrupt or training diverged; use a finite "
                                  "checkpoint")

    def __repr__(self) -> str:
        return f"LazyTensor({self.path.name}:{self.key}, {tuple(self.shape)}, {self.stored_dtype})"


def _count_nonfinite(t: torch.Tensor, chunk: int = 1 << 22) -> int:
    """NaN/Inf values of `t`, counted in chunks: isfinite's temporaries (an abs copy, masks) stay small rather
    than 1.25x the tensor (measured: 1.0 GB above the mapped 0.6 GB Qwen3-0.6B embedding when done whole).
    A chunk whose sum is finite holds no NaN/Inf (they propagate), so only a chunk with a non-finite sum
    (a NaN/Inf, or finite values overflowing) is counted exactly: one pass instead of three (7x faster)."""
    flat = t.reshape(-1)  # a view: checkpoint tensors are contiguous
    return sum(int(part.numel() - torch.isfinite(part).sum()) for part in flat.split(chunk)
               if not torch.isfinite(part.sum()))


class RowBlock(LazyValues):
    """Rows [start, stop) of a (possibly lazy) [N, ...] tensor: one part of a fused checkpoint weight (Phi-3's
    qkv_proj), read on use."""

    __slots__ = ("source", "start", "stop", "shape")

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop
        self.shape = torch.Size((stop - start, *source.shape[1:]))

    def load(self) -> torch.Tensor:
        return rows(self.source, slice(self.start, self.stop))

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.load()[index]


def row_blocks(t, sizes: list[int]) -> list:
    """`t` [sum(sizes), ...] split into consecutive row blocks (lazy when `t` is)."""
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    if not isinstance(t, LazyValues):
        return [t[a:b] for a, b in zip(bounds, bounds[1:])]
    return [RowBlock(t, a, b) for a, b in zip(bounds, bounds[1:])]


def dense(t):
    """float32 values of a tensor that may be lazy (torch tensors and None pass through)."""
    return t.load() if isinstance(t, LazyValues) else t


def rows(t, index: torch.Tensor | slice) -> torch.Tensor:
    """float32 rows `index` of a [N, ...] tensor that may be lazy (a lazy one reads those rows only)."""
    return t.rows(index) if isinstance(t, LazyValues) else t[index]


def embedding(ids: torch.Tensor, table) -> torch.Tensor:
    """`F.embedding(ids, table)` [*ids.shape, d] for a table [V, d] that may be lazy: only the rows `ids` names
    are read (a streamed reference never holds the vocabulary matrix)."""
    if not isinstance(table, LazyValues):
        return torch.nn.functional.embedding(ids, table)
    used, where = torch.unique(ids, return_inverse=True)
    return table.rows(used)[where]


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """`F.linear(x, weight, bias)` [..., out] for a weight [out, in] that may be lazy: read `chunk` output rows
    at a time (the vocabulary head: 8192 x 2560 float32 = 84 MB at a time, never the 1.6 GB matrix)."""
    if not isinstance(weight, LazyValues):
        return torch.nn.functional.linear(x, weight, bias)
    n = weight.shape[0]
    out = torch.cat([torch.nn.functional.linear(x, weight.rows(slice(i, min(n, i + chunk))))
                     for i in range(0, n, chunk)], dim=-1)
    return out if bias is None else out + bias


def same_values(a, b) -> bool:
    """Whether two (possibly lazy) tensors hold equal values; lazy ones of one stored dtype compare as stored,
    so nothing is converted."""
    if a is b:
        return True
    if tuple(a.shape) != tuple(b.shape):
        return False
    if isinstance(a, LazyTensor) and isinstance(b, LazyTensor) and a.stored_dtype == b.stored_dtype:
        ra, rb = a.raw(), b.raw()  # mapped, not copied; an untied head differs in its first row already
        return (ra.dim() == 0 or torch.equal(ra[:1], rb[:1])) and torch.equal(ra, rb)
    if isinstance(a, LazyValues) and isinstance(b, LazyValues) and a.dim() and not torch.equal(a.rows(slice(0, 1)),
                                                                                              b.rows(slice(0, 1))):
        return False  # an untied head differs in its first row already: neither matrix is converted whole
    return torch.equal(dense(a), dense(b))
