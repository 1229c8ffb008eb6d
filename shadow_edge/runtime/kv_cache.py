"""The KV cache of one decoder stack: its tensors (as OrtValues) and an explicit length.

The graphs take `past` and return `present = concat(past, new)` along the sequence axis,
so the cache is a value: each step replaces the tensors and the length together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from shadow_edge.runtime.session import ov


@dataclass(frozen=True)
class KVCache:
    """key/value per layer in graph order (`past_key_values.{i}.key`, `.value`, ...)."""

    tensors: tuple[ort.OrtValue, ...]  # each [batch, kv_heads, length, head_dim] float32
    length: int  # cached positions (past_seq), including left padding

    @classmethod
    def empty(cls, batch: int, layers: int, kv_heads: int, head_dim: int) -> "KVCache":
        zero = ov(np.zeros((batch, kv_heads, 0, head_dim), dtype=np.float32))
        return cls(tuple(zero for _ in range(2 * layers)), 0)

    def advanced(self, present: list[ort.OrtValue], new_tokens: int) -> "KVCache":
        """The cache after a step that appended `new_tokens` positions."""
        return KVCache(tuple(present), self.length + new_tokens)

    def to_numpy(self) -> list[np.ndarray]:
        return [t.numpy() for t in self.tensors]
