"""Plain decoding in one graph mode (shadow_only, base_shadow, base_plain): one token per row per step."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from shadow_edge import io_spec
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.sampling import chosen_logprobs
from shadow_edge.runtime.strategies.base import LoopState, StepRecord, StepStrategy, register


def decode_n(state: DecodeState, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int,
             choose, pad_id: int, want_logprobs: bool, loop: LoopState, first_logits: np.ndarray | None = None,
             t0: float | None = None) -> Iterator[StepRecord]:
    """Prefill (unless `first_logits` [b, V] says the caller did), then step `state` until every row is done
    (the consumer marks eos and stop) or `max_new_tokens`.

    Yields one `StepRecord` per position (the first one includes the prefill time, counted from `t0` when
    given). Finished rows are fed `pad_id` with mask 1 (as HF generate does); their outputs are ignored.
    Greedy without logprobs on a merged step graph: the graph's own ArgMax (`next_token`) chooses, and the
    logits are not fetched.
    """
    b = input_ids.shape[0]
    t0 = time.perf_counter() if t0 is None else t0
    logits = first_logits if first_logits is not None else state.prefill(
        np.ascontiguousarray(input_ids, dtype=np.int64), np.ascontiguousarray(attention_mask, dtype=np.int64))
    state.fetch_logits = want_logprobs or not getattr(choose, "greedy", False) or state.merged is None
    for i in range(max_new_tokens):
        chosen = choose(logits) if logits is not None else state.next_token
        tokens = np.where(loop.done, pad_id, chosen).astype(np.int64)  # [b]
        lp = chosen_logprobs(logits, tokens) if want_logprobs else None  # [b]
        yield StepRecord([[] if loop.done[r] else [int(tokens[r])] for r in range(b)],
                         None if lp is None else [[float(x)] for x in lp], (time.perf_counter() - t0) * 1e3)
        if loop.done.all() or i == max_new_tokens - 1:  # the consumer may have marked rows done
            return
        t0 = time.perf_counter()
        logits = state.step(tokens)


class Plain(StepStrategy):
    """Prefill the prompt, then feed one token per row per step through one mode's decode state."""

    batchable = True

    def __init__(self, mode: str, order: int, listed: bool = True):
        self.name, self.uses, self.order, self.listed = mode, (mode,), order, listed

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        decode = rt.decode_state(self.name, ids.shape[0], ids.shape[1] + opts.max_new_tokens, opts.adapter)
        return decode_n(decode, ids, mask, opts.max_new_tokens, sampler, rt.pad_id, want_logprobs, state)


for _order, _mode in enumerate(io_spec.GRAPH_MODES):  # shadow_only, base_shadow
    register(Plain(_mode, _order))
register(Plain(io_spec.MODE_BASE_PLAIN, 90, listed=False))  # the backbone without the adapter (benchmarks)
