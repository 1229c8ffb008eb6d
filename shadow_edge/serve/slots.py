"""Continuous batching of one plain graph chain: rows join at the next decode step and leave when they finish.

A `SlotBatch` holds `max_rows` row slots of KV cache per decoder stack ([max_rows, kv_heads,
capacity, head_dim] each) and one attention mask [max_rows, capacity]. All rows share the slot
axis up to `length` (T); a row's keys/values are right-aligned to T, so rows of different
lengths coexist as they do under left padding: the mask hides the slots before a row's first
(and its position ids are its own), so its logits are those of the row alone. GroupQueryAttention
gets seqlens_k = T - 1 for every row and the mask as its additive bias (export/attention.py);
the ONNX Attention kind reads the same mask.

A newcomer is prefilled alone (batch 1, in chunks of `chunk` tokens; the server does it in a
second thread while the batch decodes, so running rows keep streaming and a newcomer does not
wait for a step), its first token chosen, and its cache copied into a free slot at [T - p, T)
(the other rows shift right first when its prompt is longer than T). Each decode step feeds
one token per row through rows [0, hi) (hi: one past the highest occupied slot; free
slots below it are fed a pad token that sees only itself). A finished row frees its slot at
once. When T reaches the capacity, columns that no occupied row sees are dropped (a shift
left) before the buffers grow. Every row's tokens go through its own `RowLoop` and sampler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shadow_edge.runtime.generate import Pipeline
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import ov

PREFILL_CHUNK = 256  # prompt tokens per prefill pass between decode steps


@dataclass(eq=False)
class Newcomer:
    """A row being prefilled alone: its prompt, its own caches and how far the prefill got."""

    row: object  # the engine's row handle (job + RowLoop + sampler)
    ids: np.ndarray  # [1, p]
    caches: list[KVCache]
    done: int = 0  # prompt tokens already in `caches`
    logits: np.ndarray | None = None  # [1, V] after the last chunk
    state: str = "waiting"  # waiting -> prefilling -> ready (its first token chosen: `first`) -> seated
    first: int | None = None


class SlotBatch:
    """Rows of one (graph mode, adapter) that decode together; see the module docstring."""

    def __init__(self, pipe: Pipeline, max_rows: int, pad_id: int, chunk: int = PREFILL_CHUNK):
        self.pipe, self.max_rows, self.pad_id, self.chunk = pipe, max_rows, pad_id, chunk
        self.rows: list[object | None] = [None] * max_rows
        self.joining: list[Newcomer] = []
        self.kv: list[list[np.ndarray]] | None = None  # per stack, per layer key/value: [max_rows, kv, cap, hd]
        self.mask = np.zeros((max_rows, 0), np.int64)  # [max_rows, cap]
        self.start = np.zeros(max_rows, np.int64)  # first slot each occupied row sees
        self.positions = np.zeros(max_rows, np.int64)  # next position per row
        self.tokens = np.full(max_rows, pad_id, np.int64)  # next token to feed per row
        self.length = 0  # T: slots in use on the shared axis

    # ---- membership ------------------------------------------------------------------------------
    @property
    def running(self) -> list[tuple[int, object]]:
        return [(s, r) for s, r in enumerate(self.rows) if r is not None]

    @property
    def free(self) -> int:
        """Slots a new row may still take (rows being prefilled hold theirs)."""
        return self.rows.count(None) - len(self.joining)

    @property
    def idle(self) -> bool:
        return not self.joining and all(r is None for r in self.rows)

    def join(self, row, ids: list[int]) -> Newcomer:
        """Queue a row for prefill; it takes a slot when its prompt is in."""
        p = np.asarray([ids], np.int64)  # [1, p]
        n = Newcomer(row, p, self.pipe.empty_caches(1, p.shape[1] + 1))
        self.joining.append(n)
        return n

    def leave(self, slot: int) -> None:
        self.rows[slot] = None
        self.mask[slot] = 0
        self.tokens[slot] = self.pad_id
        if all(r is None for r in self.rows):
            self.length = 0  # an empty batch starts its slot axis afresh, and gives its buffers back
            self.kv, self.mask = None, np.zeros((self.max_rows, 0), np.int64)

    # ---- prefill ---------------------------------------------------------------------------------
    def prefill(self, n: Newcomer) -> None:
        """Run a newcomer's whole prompt into its own caches, `chunk` tokens per pass (its buffers only: another
        thread may do this while the batch decodes)."""
        while n.done < n.ids.shape[1]:
            end = min(n.ids.shape[1], n.done + self.chunk)
            pos = np.arange(n.done, end, dtype=np.int64)[None, :]  # [1, chunk]
            n.logits = self.pipe.step(n.ids[:, n.done:end], np.ones((1, end), np.int64), pos, n.caches,
                                      last_only=True)[:, -1]
            n.done = end

    def prefill_some(self, budget: int) -> list[Newcomer]:
        """Run prefill chunks of waiting newcomers, oldest first, up to `budget` tokens (at least one chunk);
        returns the newcomers whose prompt is complete (their `logits` hold the first token's)."""
        ready, spent = [], 0
        for n in list(self.joining):
            while n.done < n.ids.shape[1] and (spent == 0 or spent < budget):
                end = min(n.ids.shape[1], n.done + self.chunk)
                mask = np.ones((1, end), np.int64)
                pos = np.arange(n.done, end, dtype=np.int64)[None, :]  # [1, chunk]
                n.logits = self.pipe.step(n.ids[:, n.done:end], mask, pos, n.caches, last_only=True)[:, -1]
                spent += end - n.done
                n.done = end
            if n.done == n.ids.shape[1]:
                ready.append(n)
                self.joining.remove(n)
            if spent >= budget:
                break
        return ready

    def seat(self, n: Newcomer, first_token: int) -> int:
        """Copy a prefilled newcomer's cache into a free slot, its next token `first_token`; returns the slot."""
        p = n.ids.shape[1]
        slot = self.rows.index(None)
        if self.kv is None:
            self._allocate(max(64, 2 * p))
        if p > self.length:
            self._shift(p - self.length)
        self._ensure(self.length + 1)
        t = self.length
        for stack, cache in zip(self.kv, n.caches):
            for dst, src in zip(stack, cache.arrays):
                dst[slot, :, t - p:t] = src[0, :, :p]
        self.mask[slot] = 0
        self.mask[slot, t - p:t] = 1
        self.start[slot], self.positions[slot], self.tokens[slot] = t - p, p, first_token
        self.rows[slot] = n.row
        return slot

    # ---- decode ----------------------------------------------------------------------------------
    def step(self) -> tuple[np.ndarray, list[int], float]:
        """One decode step of every occupied row: feed its next token; returns (logits [hi, V], the occupied
        slots, ms). The caller sets `tokens[slot]` to each row's next token (or frees it)."""
        t0 = time.perf_counter()
        occupied = [s for s, _ in self.running]
        hi = occupied[-1] + 1
        self._ensure(self.length + 1)
        t = self.length
        self.mask[:hi, t] = 1  # every row sees its new slot (free slots: only that)
        caches = [KVCache([a[:hi] for a in stack], [ov(a[:hi]) for a in stack], t) for stack in self.kv]
        logits = self.pipe.step(self.tokens[:hi, None].copy(), np.ascontiguousarray(self.mask[:hi, :t + 1]),
                                self.positions[:hi, None].copy(), caches, last_only=True)[:, -1]  # [hi, V]
        self.length = t + 1
        self.positions[:hi] += 1
        return logits, occupied, (time.perf_counter() - t0) * 1e3

    # ---- buffers ---------------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        self.kv = [c.arrays for c in self.pipe.empty_caches(self.max_rows, capacity)]
        self.mask = np.zeros((self.max_rows, capacity), np.int64)

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def _ensure(self, total: int) -> None:
        """Room for `total` slots: drop columns no occupied row sees, then grow (doubling) if still short."""
        if total <= self.capacity:
            return
        seen = [int(self.start[s]) for s, _ in self.running]
        drop = min(seen) if seen else self.length
        if drop > 0:
            self._shift(-drop)
            total -= drop
        self._ensure_raw(total)

    def _shift(self, d: int) -> None:
        """Move every row's slots by d (> 0: right, making room for a longer newcomer; < 0: drop the first -d)."""
        t = self.length
        if d > 0:
            self._ensure_raw(t + d + 1)
            for stack in self.kv:
                for a in stack:
                    a[:, :, d:d + t] = a[:, :, :t].copy()
            self.mask[:, d:d + t] = self.mask[:, :t].copy()
            self.mask[:, :d] = 0
        else:
            k = -d
            for stack in self.kv:
                for a in stack:
                    a[:, :, :t - k] = a[:, :, k:t].copy()
            self.mask[:, :t - k] = self.mask[:, k:t].copy()
            self.mask[:, t - k:] = 0
        self.start += d
        self.length = t + d

    def _ensure_raw(self, total: int) -> None:
        """Grow the buffers to `total` slots without dropping columns (a right shift needs the room)."""
        if total <= self.capacity:
            return
        grown = max(total, 2 * self.capacity)
        for stack in self.kv:
            for i, a in enumerate(stack):
                b = np.zeros(a.shape[:2] + (grown,) + a.shape[3:], np.float32)
                b[:, :, :self.length] = a[:, :, :self.length]
                stack[i] = b
        mask = np.zeros((self.max_rows, grown), np.int64)
        mask[:, :self.length] = self.mask[:, :self.length]
        self.mask = mask

