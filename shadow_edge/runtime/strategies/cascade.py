"""Cascade: answer with the detached shadow; re-answer rows it is unsure about with base_shadow.

The shadow's confidence in its answer is the geometric mean of its probabilities of the
tokens it chose, under the plain softmax of its logits (exp(mean log p)); rows below
`cascade_threshold` are generated again by base_shadow. The shadow's answer is held until
its confidence is known; an escalated answer streams from base_shadow.

Escalation reuses the shadow's work on the prompt: both modes run the same shadow graph,
so the shadow KV cache of the prompt slots (copied for the escalated rows) and the
prompt's shadow_hidden_states from the shadow pass feed base_shadow's prefill, which then
runs only the backbone over the prompt.
"""

from __future__ import annotations

import time

import numpy as np

from shadow_edge import io_spec
from shadow_edge.runtime.generate import Pipeline, prefill
from shadow_edge.runtime.result import Timings
from shadow_edge.runtime.strategies.base import Pieces, Strategy, drive, register
from shadow_edge.runtime.strategies.plain import decode_n


def silent(gen: Pieces):
    """Run a pass without forwarding its pieces; return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def remap(gen: Pieces, rows: list[int]) -> Pieces:
    """Forward a sub-batch pass's pieces with row indices mapped back to the full batch."""
    while True:
        try:
            r, piece = next(gen)
        except StopIteration as stop:
            return stop.value
        yield rows[r], piece


def _pass(rt, pipe: Pipeline, ids, mask, opts, incremental: bool, want_logprobs: bool, start, t0: float) -> Pieces:
    """Plain decoding from a prefill the caller ran (`start`, begun at `t0`)."""
    return drive(rt, ids.shape[0], opts, incremental, lambda sampler, eos, state, stats: decode_n(
        pipe, ids, mask, opts.max_new_tokens, sampler, rt.pad_id, want_logprobs, state, start=start, t0=t0))


class Cascade(Strategy):
    name, order = "cascade", 2
    first, second = io_spec.MODE_SHADOW_ONLY, io_spec.MODE_BASE_SHADOW
    uses = (first, second)

    def run(self, rt, ids, mask, opts, incremental, want_logprobs=False) -> Pieces:
        shadow_pipe, combined = rt.pipeline(self.first, opts.adapter), rt.pipeline(self.second, opts.adapter)
        ids, mask = (np.ascontiguousarray(a, dtype=np.int64) for a in (ids, mask))  # [b, t]
        capacity = ids.shape[1] + opts.max_new_tokens
        t0 = time.perf_counter()
        prompt_states: list[np.ndarray] = []  # the shadow's [b, t, d] states of the prompt
        start = prefill(shadow_pipe, ids, mask, capacity, keep_shadow=prompt_states)
        shadow = silent(_pass(rt, shadow_pipe, ids, mask, opts, False, True, start, t0))
        conf = [shadow.confidence(r) for r in range(ids.shape[0])]
        low = [r for r, c in enumerate(conf) if c < opts.cascade_threshold]
        rows, stages = shadow, {self.first: shadow.timings}
        if low:
            keep = int(np.argmax(mask[low].any(axis=0)))  # drop columns that are padding in every kept row
            sub_ids, sub_mask = ids[low, keep:], mask[low, keep:]  # [n, t']
            t0 = time.perf_counter()
            caches, reuse = None, {}
            if shadow_pipe.shadow is combined.shadow:  # one shadow graph: its prompt slots carry over
                caches = combined.empty_caches(len(low), capacity)
                t = ids.shape[1]
                for dst, src in zip(caches[0].arrays, start[1][0].arrays):  # [n, kv, cap, hd] <- prompt slots
                    dst[:, :, :t - keep] = src[low, :, keep:t]
                caches[0].length = t - keep
                reuse = {"shadow_states": prompt_states[0][low, keep:]}  # [n, t', d]
            begun = prefill(combined, sub_ids, sub_mask, capacity, caches=caches, **reuse)
            base = yield from remap(_pass(rt, combined, sub_ids, sub_mask, opts, incremental, False, begun, t0), low)
            for i, r in enumerate(low):
                rows.ids[r], rows.finish[r], rows.text[r] = base.ids[i], base.finish[i], base.text[i]
            stages[self.second] = base.timings
        for r in range(ids.shape[0]):
            if r not in low and rows.text[r]:
                yield r, rows.text[r]  # the held shadow answer, in one piece
        rows.answered_by = [self.second if r in low else self.first for r in range(ids.shape[0])]
        rows.conf = conf
        rows.stages = stages
        rows.timings = Timings.combine(list(stages.values()))
        return rows


register(Cascade())
