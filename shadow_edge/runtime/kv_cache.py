"""The KV cache of one decoder stack: preallocated buffers, updated in place, and an explicit length.

Each buffer is [batch, kv_heads, capacity, head_dim] float32. The graph writes the new
keys/values at position `length` of the same buffer that it reads the past from (past and
present are bound to one OrtValue: io_spec.KV_BINDING, whatever the graph's attention kind),
so a decode step copies nothing but the new token's entries. A step that would overflow grows the
buffers (doubling), so callers may size them for the whole generation or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort


@dataclass
class KVCache:
    """key/value per layer in graph order (`past_key_values.{i}.key`, `.value`, ...)."""

    arrays: list[np.ndarray]  # each [batch, kv_heads, capacity, head_dim]; the OrtValues share this memory
    tensors: list[ort.OrtValue]
    length: int  # valid positions (past_seq), including left padding
    bindings: dict = field(default_factory=dict)  # GraphSession -> (its IOBinding with these buffers bound, its fixed inputs)

    @classmethod
    def empty(cls, batch: int, layers: int, kv_heads: int, head_dim: int, capacity: int) -> "KVCache":
        arrays = [np.zeros((batch, kv_heads, max(capacity, 1), head_dim), np.float32) for _ in range(2 * layers)]
        return cls(arrays, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays], 0)

    @property
    def capacity(self) -> int:
        return self.arrays[0].shape[2]

    def reserve(self, total: int) -> None:
        """Make room for `total` positions, keeping the first `length` ones."""
        if total <= self.capacity:
            return
        grown = []
        for a in self.arrays:
            b = np.zeros((a.shape[0], a.shape[1], max(total, 2 * self.capacity), a.shape[3]), np.float32)
            b[:, :, : self.length] = a[:, :, : self.length]
            grown.append(b)
        self.arrays = grown
        self.tensors = [ort.OrtValue.ortvalue_from_numpy(a) for a in grown]
        self.bindings.clear()  # they hold the old buffers
