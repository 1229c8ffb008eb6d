"""Plain decoding in one graph mode (shadow_only, base_shadow, base_plain): one token per row per step."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from shadow_edge import io_spec
from shadow_edge.runtime.generate import Decoder, Pipeline, prefill
from shadow_edge.runtime.sampling import chosen_logprobs
from shadow_edge.runtime.strategies.base import LoopState, StepRecord, StepStrategy, register


def decode_n(pipe: Pipeline, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int,
             choose, pad_id: int, want_logprobs: bool, state: LoopState, start=None,
             t0: float | None = None) -> Iterator[StepRecord]:
    """Prefill, then decode until every row is done (the consumer marks eos and stop) or `max_new_tokens`.

    Yields one `StepRecord` per position (the first one includes the prefill time, counted
    from `t0` when given). `start`: the (logits, caches, positions) of a prefill the caller
    ran. Finished rows are fed `pad_id` with mask 1 (as HF generate does); their outputs are ignored.
    """
    b = input_ids.shape[0]
    mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
    t0 = time.perf_counter() if t0 is None else t0
    logits, caches, positions = start if start is not None else prefill(
        pipe, np.ascontiguousarray(input_ids, dtype=np.int64), mask, capacity=mask.shape[1] + max_new_tokens)
    decoder = Decoder(pipe, caches, mask, positions)
    for i in range(max_new_tokens):
        tokens = np.where(state.done, pad_id, choose(logits)).astype(np.int64)  # [b]
        lp = chosen_logprobs(logits, tokens) if want_logprobs else None  # [b]
        yield StepRecord([[] if state.done[r] else [int(tokens[r])] for r in range(b)],
                         None if lp is None else [[float(x)] for x in lp], (time.perf_counter() - t0) * 1e3)
        if state.done.all() or i == max_new_tokens - 1:  # the consumer may have marked rows done
            return
        t0 = time.perf_counter()
        logits = decoder.step(tokens)


class Plain(StepStrategy):
    """Prefill the prompt, then feed one token per row per step through one mode's graph chain."""

    batchable = True

    def __init__(self, mode: str, order: int, listed: bool = True):
        self.name, self.uses, self.order, self.listed = mode, (mode,), order, listed

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        return decode_n(rt.pipeline(self.name, opts.adapter), ids, mask, opts.max_new_tokens, sampler, rt.pad_id,
                        want_logprobs, state)


for _order, _mode in enumerate(io_spec.GRAPH_MODES):  # shadow_only, base_shadow
    register(Plain(_mode, _order))
register(Plain(io_spec.MODE_BASE_PLAIN, 90, listed=False))  # the backbone without the adapter (benchmarks)
