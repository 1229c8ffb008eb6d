"""One generation's decode state over a mode's graphs: prefill, step, verify, rewind, copy rows.

A `DecodeState` owns everything a generation feeds and fetches (cf. onnxruntime-genai's
`DecoderOnly_State`): the KV caches of the mode's stacks (`KVCache`, in-place), the attention
mask buffer [b, capacity] and its used length, the next position of every row, and the
preallocated step inputs/outputs with their IOBindings, made once and rebound only when a cache
grows. Every loop that decodes steps through it: plain decoding (shadow_only, base_shadow,
base_plain), speculative drafting and verification, the cascade's two passes, the server's
continuous batches, `forward` (eval's perplexity), `classify` and export validation (tests/test_decode_paths.py).

Verbs (positions and lengths explicit, nothing hidden):
  advance(ids, mask)   several positions per row through the split graphs (prefill, chunked
                       prefill, a verify pass): logits of the last or of every position
  step(tokens)         one token for each of the first n rows through bound buffers (the mask bound
                       by address: no allocation): the split chain, or the mode's merged single-session
                       graph, which also returns the greedy token (`next_token`, ArgMax inside the
                       graph) so the logits need not be fetched
  verify_bound(ids)    several positions for every row in one call of the merged graph, through buffers
                       bound once per width: the greedy token after each position (`next_token` [b, t]),
                       the logits only when fetched (speculative verification)
  rewind(length)       forget the positions past `length` (a pointer move; stale entries are
                       overwritten later), positions recomputed from the mask
  copy_rows(...)       copy rows' KV entries and mask between states (cascade reuse)
  follow(other)        take another state's columns and positions (a speculative drafter that
                       shares the shadow cache, before each round)

The merged graph (`step_<mode>.onnx`, written by the export next to the interop graphs) reads the
shadow and backbone caches as one KV list (shadow layers first), bound to the same buffers as the
split graphs, so a state may prefill and verify through the split graphs and decode through the merged one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from shadow_edge.io_spec import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, SHADOW_HIDDEN
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, bind_kv, ov

NEXT_TOKEN = "next_token"  # the merged step graph's greedy output: ArgMax of the logits, int64 [b, seq]

STEP_CALLS: dict[str, int] = {}  # step path -> calls since import (tests count the paths in use)


def _count(path: str) -> None:
    STEP_CALLS[path] = STEP_CALLS.get(path, 0) + 1


def first_positions(start: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[b, t] positions of new columns `mask` [b, t] after `start` [b] real tokens; 1 on padding (HF convention)."""
    pos = start[:, None] + np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


class DecodeState:
    """The decode state of one generation (see the module docstring)."""

    def __init__(self, pipe, batch: int, capacity: int, merged: GraphSession | None = None,
                 fetch_logits: bool = True, caches: list[KVCache] | None = None):
        """pipe: the mode's `generate.Pipeline`; capacity: positions to allocate (grown on demand).
        merged: the mode's single-session step graph (base_shadow), used by `step`; fetch_logits=False (greedy
        without logprobs, merged graph only): `step` fetches only `next_token`. caches: adopt these (length 0..n)."""
        self.pipe, self.batch = pipe, batch
        capacity = max(capacity, 1)
        self.caches = caches if caches is not None else pipe.empty_caches(batch, capacity)
        self.mask = np.zeros((batch, max([capacity] + [c.capacity for c in self.caches])), np.int64)  # [b, cap]
        self.length = 0  # columns of `mask` in use (= every cache's length)
        self.next_pos = np.zeros(batch, np.int64)  # [b] the next token's position per row
        self.merged = merged
        self.fetch_logits = fetch_logits or merged is None
        self._steps: dict = {}  # rows fed (and width, for verify_bound) -> its bound step (made on first use)
        self._step = None  # the last bound step run
        self._views: dict = {}  # (cache, rows) -> (the cache's tensors, OrtValues over their first rows)
        self._scratch = (np.empty(0, np.int64), 0)  # a step's contiguous [n, length] mask (n > 1), its address
        self._ptr = (None, 0)  # the mask buffer and its address
        self._room = 0  # columns the mask and every cache hold (`_reserve`)

    @classmethod
    def resume(cls, pipe, caches: list[KVCache], attention_mask: np.ndarray, next_pos: np.ndarray,
               merged: GraphSession | None = None, fetch_logits: bool = True) -> "DecodeState":
        """A state over caches that already hold attention_mask [b, past]'s columns; next_pos [b]."""
        b, past = attention_mask.shape
        state = cls(pipe, b, past + 1, merged, fetch_logits, caches)
        state.mask[:, :past] = attention_mask
        state.length = past
        state.next_pos = np.array(next_pos, np.int64).reshape(b)
        return state

    # ---- several positions ---------------------------------------------------------------------
    def advance(self, ids: np.ndarray, mask: np.ndarray | None = None, last_only: bool = True,
                positions: np.ndarray | None = None, one_row_at_a_time: np.ndarray | None = None,
                **step_options) -> np.ndarray:
        """Feed ids [b, t] (mask [b, t], default all 1) at the next columns through the split graphs.

        positions [b, t]: explicit (default: counted from each row's real tokens). `step_options` go to
        `Pipeline.step` (shadow_states=, keep_shadow=). one_row_at_a_time [b] bool: run each such row alone on
        views of the caches (onnxruntime's CPU GroupQueryAttention takes seq > 1 with a past at batch 1 only;
        the other rows' logits are 0). Returns logits [b, 1 if last_only else t, V].
        """
        b, t = ids.shape
        mask = np.ones((b, t), np.int64) if mask is None else np.asarray(mask, np.int64)
        pos = first_positions(self.next_pos, mask) if positions is None else positions
        ids, pos = np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(pos, np.int64)
        self._reserve(self.length + t)
        self.mask[:, self.length:self.length + t] = mask
        states = step_options.get("shadow_states")
        _count("advance")
        if one_row_at_a_time is None:
            logits = self.pipe.step(ids, self.mask[:, :self.length + t].copy(), pos, self._at(self.caches, states),
                                    last_only, **step_options)
        else:
            logits = None
            for r in np.flatnonzero(one_row_at_a_time):
                rows = [KVCache([a[r:r + 1] for a in c.arrays], [ov(a[r:r + 1]) for a in c.arrays], 0)
                        for c in self.caches]  # [1, kv_heads, cap, head_dim] views of the same memory
                opts = {**step_options, **({} if states is None else {"shadow_states": states[r:r + 1]})}
                out = self.pipe.step(ids[r:r + 1], self.mask[r:r + 1, :self.length + t].copy(), pos[r:r + 1],
                                     self._at(rows, states), last_only, **opts)
                logits = np.zeros((b,) + out.shape[1:], np.float32) if logits is None else logits
                logits[r] = out[0]
        self.length += t
        for c in self.caches:
            c.length = self.length
        last = np.where(mask == 1, pos, -1).max(axis=1, initial=-1)  # [b] the last real position fed, or -1
        self.next_pos = np.where(last >= 0, last + 1, self.next_pos)
        return logits

    def _at(self, caches: list[KVCache], shadow_states) -> list[KVCache]:
        """The caches at this state's length (a shadow cache fed already, with `shadow_states`: past it)."""
        for c in caches:
            c.length = self.length
        if shadow_states is not None:  # the shadow cache already holds these positions
            caches[0].length = self.length + shadow_states.shape[1]
        return caches

    def prefill(self, ids: np.ndarray, mask: np.ndarray | None = None, **step_options) -> np.ndarray:
        """The prompt (left-padded ids, mask [b, t]) into the caches; returns the last position's logits [b, V]."""
        return self.advance(ids, mask, True, **step_options)[:, -1]

    def verify(self, ids: np.ndarray, **step_options) -> np.ndarray:
        """Several positions per row (ids [b, n], mask 1) in one pass; returns the logits of all [b, n, V]."""
        return self.advance(ids, None, False, **step_options)

    # ---- one position, bound ---------------------------------------------------------------------
    def step(self, tokens: np.ndarray, new_mask: np.ndarray | int = 1, head: bool = True) -> np.ndarray | None:
        """Feed tokens [n] to the first n rows (n <= batch; the others are not run) at their next positions, with
        attention-mask column `new_mask` (default 1); the caches advance in place. Returns logits [n, V] (a view
        of a buffer the next step overwrites), or None when the state does not fetch logits (then `next_token`
        holds the graph's greedy choice) or `head` is False (split graphs: the stacks only; `stack_output`
        holds their states)."""
        n = len(tokens)
        s = self._steps.get(n)
        if s is None:
            s = self._steps[n] = _MergedStep(self, n) if self.merged is not None else _SplitStep(self, n)
        self._step = s
        s.tokens[:, 0] = tokens
        s.positions[:, 0] = self.next_pos[:n]
        if self.length + 1 > self._room:
            self._reserve(self.length + 1)
        self.mask[:n, self.length] = new_mask
        self.length += 1
        s.run(self._mask_of(n), head)
        for c in self.caches:
            c.length = self.length
        self.next_pos[:n] += 1
        return s.logits[:, 0] if self.fetch_logits and head else None

    def verify_bound(self, ids: np.ndarray) -> np.ndarray:
        """Feed ids [b, t] to every row (mask 1, at each row's next positions) in ONE call of the merged graph,
        through buffers bound once per width t (no allocation per call). Returns next_token [b, t] int64: the
        greedy token after each position (ArgMax inside the graph; a buffer the next call of this width
        overwrites); `step_logits` holds the logits [b, t, V] when the state fetches logits. The caches advance
        by t (the caller rewinds). onnxruntime's CPU GroupQueryAttention refuses t > 1 with a past at batch > 1:
        such a state verifies through `verify` (the split graphs, row by row)."""
        if self.merged is None:
            raise RuntimeError("verify_bound runs the merged step graph; this state steps the split graphs")
        b, t = ids.shape
        s = self._steps.get((b, t))
        if s is None:
            s = self._steps[(b, t)] = _MergedStep(self, b, t)
        self._step = s
        s.tokens[...] = ids
        np.add(self.next_pos[:, None], s.offsets, out=s.positions)
        if self.length + t > self._room:
            self._reserve(self.length + t)
        self.mask[:, self.length:self.length + t] = 1
        self.length += t
        s.run(self._mask_of(b), path="verify_bound")
        for c in self.caches:
            c.length = self.length
        self.next_pos += t
        return s.next_token

    @property
    def step_logits(self) -> np.ndarray:
        """[n, t, V] the logits of the last bound step or verify_bound (fetched states only); a buffer the next
        call of that shape overwrites."""
        return self._step.logits

    def _mask_of(self, n: int) -> tuple:
        """(ptr, shape) of the first n rows' mask [n, length], contiguous: the buffer itself for one row, else a
        copy into the state's scratch buffer (no allocation per step)."""
        if self._ptr[0] is not self.mask:  # (re)allocated: read its address once (.ctypes costs ~15 us)
            self._ptr = (self.mask, self.mask.ctypes.data)
        if n == 1:
            return self._ptr[1], [1, self.length]
        size = n * self.length
        if self._scratch[0].size < size:
            grown = np.empty(n * self.mask.shape[1], np.int64)
            self._scratch = (grown, grown.ctypes.data)
        self._scratch[0][:size].reshape(n, self.length)[...] = self.mask[:n, :self.length]
        return self._scratch[1], [n, self.length]

    def stack_output(self, i: int) -> np.ndarray:
        """[n, 1, d] the state stack i (split graphs) passed on at the last step (the shadow's: its
        shadow_hidden_states); a buffer the next step overwrites."""
        return self._step.hidden[i]

    def follow(self, other: "DecodeState") -> None:
        """Take `other`'s columns, length and positions (a drafter sharing its shadow cache, before a round)."""
        self._reserve(other.length + 1)
        self.mask[:, :other.length] = other.mask[:, :other.length]
        self.length = other.length
        self.next_pos[:] = other.next_pos
        for c in self.caches:
            c.length = self.length

    def kv(self, i: int, n: int) -> list[ort.OrtValue]:
        """Cache i's KV tensors over its first n rows (views of the same memory; the cache's own at n = batch)."""
        cache = self.caches[i]
        if n == self.batch:
            return cache.tensors
        key = (i, n)
        views = self._views.get(key)
        if views is None or views[0] is not cache.tensors:
            views = self._views[key] = (cache.tensors, [ov(a[:n]) for a in cache.arrays])
        return views[1]

    @property
    def next_token(self) -> np.ndarray:
        """[b] the greedy token the merged graph chose at the last step (ArgMax inside the graph)."""
        if not isinstance(self._step, _MergedStep):
            raise RuntimeError("next_token comes from the merged step graph; this state steps the split graphs")
        return self._step.next_token[:, 0]

    # ---- positions and rows ----------------------------------------------------------------------
    def rewind(self, length: int, keep: np.ndarray | None = None) -> None:
        """Keep the first `length` columns (stale entries past it are overwritten later). keep [b, n]: mask
        values of the last n kept columns (0 = a hole a row did not keep). Positions follow the mask."""
        if not 0 <= length <= self.length:
            raise ValueError(f"rewind to {length}: the state holds {self.length} positions")
        if keep is not None:
            self.mask[:, length - keep.shape[1]:length] = keep
        self.length = length
        for c in self.caches:
            c.length = length
        self.next_pos = self.mask[:, :length].sum(axis=1).astype(np.int64)

    def copy_rows(self, src: "DecodeState", rows, to_rows=None, stacks: int | None = None, columns=None) -> None:
        """Append src's rows `rows` (columns `columns`, a slice; default all it holds) as this state's rows
        `to_rows` (default 0..n-1) at its next columns. With `stacks` (the first n caches only: a shared shadow
        cache) only those keys/values are written and the length stays (`advance(..., shadow_states=)` then
        feeds those columns); otherwise the mask is copied too and the state advances by the width."""
        cols = columns if columns is not None else slice(0, src.length)
        lo, hi, _ = cols.indices(src.length)
        width, at = hi - lo, self.length
        to = list(range(len(rows))) if to_rows is None else list(to_rows)
        self._reserve(at + width)
        for dst, s in zip(self.caches[:stacks], src.caches[:stacks]):
            for a, b in zip(dst.arrays, s.arrays):  # [b, kv_heads, cap, head_dim]
                a[to, :, at:at + width] = b[rows, :, lo:hi]
        if stacks is not None:
            return
        self.mask[to, at:at + width] = src.mask[rows, lo:hi]
        self.length = at + width
        for c in self.caches:
            c.length = self.length
        self.next_pos[to] = self.mask[to, :self.length].sum(axis=1)

    def _reserve(self, total: int) -> None:
        """Room for `total` columns in the mask and in every cache (doubling)."""
        for c in self.caches:
            c.reserve(total)
        if total > self.mask.shape[1]:
            grown = np.zeros((self.batch, max(total, 2 * self.mask.shape[1])), np.int64)
            grown[:, :self.length] = self.mask[:, :self.length]
            self.mask = grown
        self._room = min([self.mask.shape[1]] + [c.capacity for c in self.caches])


def _bind_mask(io: ort.IOBinding, mask: tuple) -> None:
    """Bind the step's attention mask [n, length] int64 from (pointer, shape): no OrtValue made per step."""
    io.bind_input(ATTENTION_MASK, "cpu", 0, np.int64, mask[1], mask[0])


class _SplitStep:
    """The bound decode step over the split graphs: each stack, then the head (buffers made once)."""

    def __init__(self, state: DecodeState, b: int):
        pipe = state.pipe
        self.state, self.rows = state, b
        self.tokens = np.zeros((b, 1), np.int64)
        self.positions = np.zeros((b, 1), np.int64)
        # The bound OrtValues (each keeps its array alive) live as long as the bindings.
        step = {INPUT_IDS: ov(self.tokens), POSITION_IDS: ov(self.positions)}
        self.buffers = list(step.values())
        self.stacks, previous = [], {}  # [graph, cache index, IOBinding, the KV tensors it has bound]
        self.hidden: list[np.ndarray] = []  # per stack, its output [b, 1, d]
        out = None
        for i, graph in enumerate(pipe.stacks):
            self.hidden.append(np.zeros((b, 1, graph.contract.outputs[0].shape[-1]), np.float32))
            out = ov(self.hidden[-1])
            io = graph.bind({**step, **previous, **pipe.params.get(graph.name, {})}, {graph.main_output: out})
            self.stacks.append([graph, i, io, None])
            self.buffers.append(out)
            previous = {SHADOW_HIDDEN: out}  # the backbone after the shadow reads its output
        head = pipe.head
        self.logits = np.zeros((b, 1, head.contract.outputs[0].shape[-1]), np.float32)
        self.buffers.append(ov(self.logits))
        self.head_io = head.bind({pipe.head_input: out, **pipe.params.get(head.name, {})},
                                 {head.output_names[0]: self.buffers[-1]})

    def run(self, mask: tuple, head: bool = True) -> None:
        _count("step")
        for entry in self.stacks:
            graph, i, io, bound = entry
            tensors = self.state.kv(i, self.rows)
            if bound is not tensors:  # first step, or the cache grew: (re)bind its buffers
                bind_kv(io, graph.kv_pairs, tensors)
                entry[3] = tensors
            _bind_mask(io, mask)
            graph.run_bound(io)
        if head:
            self.state.pipe.head.run_bound(self.head_io)


class _MergedStep:
    """The bound decode step (or a verify pass of `width` positions) through the merged graph: one session call;
    `next_token` always, logits if asked."""

    def __init__(self, state: DecodeState, b: int, width: int = 1):
        graph = state.merged
        self.state, self.graph, self.rows = state, graph, b
        self.tokens = np.zeros((b, width), np.int64)  # [b, width]
        self.positions = np.zeros((b, width), np.int64)  # [b, width]
        self.offsets = np.arange(width, dtype=np.int64)  # [width] a row's positions after its next one
        self.next_token = np.zeros((b, width), np.int64)  # [b, width]
        self.logits = np.zeros((b, width, graph.contract.outputs[0].shape[-1]), np.float32)  # [b, width, V]
        outputs = {NEXT_TOKEN: ov(self.next_token)}
        if state.fetch_logits:
            outputs[LOGITS] = ov(self.logits)
        inputs = {INPUT_IDS: ov(self.tokens), POSITION_IDS: ov(self.positions)}
        self.buffers = [*inputs.values(), *outputs.values()]
        self.io = graph.bind(inputs, outputs)
        self.bound: list | None = None

    def run(self, mask: tuple, head: bool = True, path: str = "step") -> None:
        _count(path)
        lists = [self.state.kv(i, self.rows) for i in range(len(self.state.caches))]  # shadow, backbone
        if self.bound is None or any(a is not b for a, b in zip(lists, self.bound)):  # first step, or growth
            bind_kv(self.io, self.graph.kv_pairs, [t for kv in lists for t in kv])
            self.bound = lists
        _bind_mask(self.io, mask)
        self.graph.run_bound(self.io)
