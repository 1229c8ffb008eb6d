"""Cascade: answer with the detached shadow; re-answer rows it is unsure about with base_shadow.

The shadow's confidence in its answer is the geometric mean of its probabilities of the
tokens it chose, under the plain softmax of its logits (exp(mean log p)); rows below
`cascade_threshold` are generated again by base_shadow. The shadow's answer is held until
its confidence is known; an escalated answer streams from base_shadow.
"""

from __future__ import annotations

import numpy as np

from shadow_edge import io_spec
from shadow_edge.runtime.result import Timings
from shadow_edge.runtime.strategies.base import Pieces, Strategy, register, registry


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


class Cascade(Strategy):
    name, order = "cascade", 2
    first, second = io_spec.MODE_SHADOW_ONLY, io_spec.MODE_BASE_SHADOW
    uses = (first, second)

    def run(self, rt, ids, mask, opts, incremental, want_logprobs=False) -> Pieces:
        first, second = registry()[self.first], registry()[self.second]
        shadow = silent(first.run(rt, ids, mask, opts, False, want_logprobs=True))
        conf = [shadow.confidence(r) for r in range(ids.shape[0])]
        low = [r for r, c in enumerate(conf) if c < opts.cascade_threshold]
        rows, stages = shadow, {self.first: shadow.timings}
        if low:
            sub_ids, sub_mask = ids[low], mask[low]
            keep = int(np.argmax(sub_mask.any(axis=0)))  # drop columns that are padding in every kept row
            base = yield from remap(second.run(rt, sub_ids[:, keep:], sub_mask[:, keep:], opts, incremental), low)
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
