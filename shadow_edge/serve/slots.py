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

The batch's buffers are one `DecodeState` of `max_rows` rows (runtime/decode_state.py): its caches,
mask and positions; a decode step is its bound `step` over the first hi rows (the merged single-session
graph where the artifact has one). A newcomer's prefill is a batch-1 `DecodeState` of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.generate import Pipeline
from shadow_edge.runtime.session import GraphSession

PREFILL_CHUNK = 256  # prompt tokens per prefill pass between decode steps


@dataclass(eq=False)
class Newcomer:
    """A row being prefilled alone: its prompt, its own decode state and how far the prefill got."""

    row: object  # the engine's row handle (job + RowLoop + sampler)
    ids: np.ndarray  # [1, p]
    state: DecodeState  # batch 1: its caches hold the prompt's first `done` tokens
    done: int = 0  # prompt tokens already in its caches
    logits: np.ndarray | None = None  # [1, V] after the last chunk
    status: str = "waiting"  # waiting -> prefilling -> ready (its first token chosen: `first`) -> seated
    first: int | None = None


class SlotBatch:
    """Rows of one (graph mode, adapter) that decode together; see the module docstring."""

    def __init__(self, pipe: Pipeline, max_rows: int, pad_id: int, chunk: int = PREFILL_CHUNK,
                 merged: GraphSession | None = None):
        """merged: the mode's single-session step graph (`ShadowRuntime.step_graph`), or None for the split graphs."""
        self.pipe, self.max_rows, self.pad_id, self.chunk, self.merged = pipe, max_rows, pad_id, chunk, merged
        self.rows: list[object | None] = [None] * max_rows
        self.joining: list[Newcomer] = []
        self.state: DecodeState | None = None  # the batch's caches [max_rows, kv, cap, hd], mask, positions
        self.start = np.zeros(max_rows, np.int64)  # first slot each occupied row sees
        self.tokens = np.full(max_rows, pad_id, np.int64)  # next token to feed per row

    # ---- the state's buffers ---------------------------------------------------------------------
    @property
    def length(self) -> int:
        """T: slots in use on the shared axis."""
        return 0 if self.state is None else self.state.length

    @property
    def mask(self) -> np.ndarray:
        """[max_rows, capacity]"""
        return np.zeros((self.max_rows, 0), np.int64) if self.state is None else self.state.mask

    @property
    def kv(self) -> list[list[np.ndarray]] | None:
        """Per stack, per layer key/value [max_rows, kv, cap, hd] (None before the first row is seated)."""
        return None if self.state is None else [c.arrays for c in self.state.caches]

    @property
    def positions(self) -> np.ndarray:
        """[max_rows] next position per row."""
        return np.zeros(self.max_rows, np.int64) if self.state is None else self.state.next_pos

    def _set_length(self, t: int) -> None:
        self.state.length = t
        for c in self.state.caches:
            c.length = t

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
        n = Newcomer(row, p, DecodeState(self.pipe, 1, p.shape[1] + 1))
        self.joining.append(n)
        return n

    def leave(self, slot: int) -> None:
        self.rows[slot] = None
        self.tokens[slot] = self.pad_id
        if all(r is None for r in self.rows):
            self.state = None  # an empty batch starts its slot axis afresh, and gives its buffers back
        else:
            self.state.mask[slot] = 0

    # ---- prefill ---------------------------------------------------------------------------------
    def _chunk(self, n: Newcomer) -> int:
        """Run the newcomer's next prompt chunk (its own state only); returns the tokens it ran."""
        end = min(n.ids.shape[1], n.done + self.chunk)
        n.logits = n.state.prefill(n.ids[:, n.done:end])  # [1, V]
        ran, n.done = end - n.done, end
        return ran

    def prefill(self, n: Newcomer) -> None:
        """Run a newcomer's whole prompt into its own caches, `chunk` tokens per pass (its buffers only: another
        thread may do this while the batch decodes)."""
        while n.done < n.ids.shape[1]:
            self._chunk(n)

    def prefill_some(self, budget: int) -> list[Newcomer]:
        """Run prefill chunks of waiting newcomers, oldest first, up to `budget` tokens (at least one chunk);
        returns the newcomers whose prompt is complete (their `logits` hold the first token's)."""
        ready, spent = [], 0
        for n in list(self.joining):
            while n.done < n.ids.shape[1] and (spent == 0 or spent < budget):
                spent += self._chunk(n)
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
        if self.state is None:
            self.state = DecodeState(self.pipe, self.max_rows, max(64, 2 * p), self.merged)
        if p > self.length:
            self._shift(p - self.length)
        self._ensure(self.length + 1)
        t = self.length
        for stack, cache in zip(self.kv, n.state.caches):
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
        logits = self.state.step(self.tokens[:hi])  # [hi, V]; every row < hi sees its new slot (free slots: only that)
        return logits, occupied, (time.perf_counter() - t0) * 1e3

    # ---- buffers ---------------------------------------------------------------------------------
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
        self.state._reserve(total)

    def _shift(self, d: int) -> None:
        """Move every row's slots by d (> 0: right, making room for a longer newcomer; < 0: drop the first -d)."""
        t = self.length
        if d > 0:
            self.state._reserve(t + d + 1)
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
        self._set_length(t + d)
