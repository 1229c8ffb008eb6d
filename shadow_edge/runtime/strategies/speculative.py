"""Self-speculative decoding: the detached shadow drafts k tokens, the combined model verifies them in one pass.

The shadow graph and its KV cache are shared by shadow_only and base_shadow, so a draft
costs the shadow step and the shadow's head only. One round, for last token x (emitted,
not yet fed) at slot L of both caches:

    draft   shadow(x), shadow(d1) ... shadow(dk): k + 1 shadow steps (seq 1) fill shadow
            slots L..L+k and give shadow_hidden_states s0..sk; the shadow head on s0..s(k-1)
            proposes d1..dk
    verify  backbone([x, d1..dk], [s0..sk]): one pass over k + 1 positions (the shadow is
            never run twice for a position) fills backbone slots L..L+k; lm_head -> p0..pk
    accept  n drafts (greedy: longest agreeing prefix; sampling: min(1, p/q) rule), then
            the combined model's own token (correction from p_n, or bonus from p_k)
    roll    both caches' length -> L + width: a pointer move, nothing is copied

Batches stay aligned by slot, not by acceptance: every row owns the same slots, and
`width` is the most slots any row keeps (n + 1). A row that kept fewer marks its
remaining slots of the round 0 in its attention mask: holes, like left padding, which
the attention bias never lets a query see; positions are per row (explicit position_ids),
so a hole does not shift them. Stale keys/values past the length are overwritten later.
onnxruntime's CPU GroupQueryAttention takes seq > 1 with a past only for batch 1, so
with batch > 1 on such a backbone the verify pass runs row by row on views of the cache.

One call per step where the artifact allows (`Rounds.bound`: its merged step graph, and one row or an attention
kind that takes several positions in a batch): the verify pass is ONE call of base_shadow's merged step graph
(`step_base_shadow.onnx`: shadow + backbone + head + ArgMax) over the k + 1 positions, through buffers bound once
(`DecodeState.verify_bound`): it returns the greedy token after each position, so the k + 1 logits rows stay in
onnxruntime (fetched only to sample or for logprobs). It runs the shadow over the k + 1 positions itself, so the
draft makes k shadow steps, not k + 1, and keeps no hidden states; a greedy draft step is one call of the draft's
merged graph (the shadow and the draft head with their ArgMax: `step_draft.onnx` of a reduced draft vocabulary, or
shadow_only's `step_shadow_only.onnx`), whose token crosses into Python, not its logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from shadow_edge.errors import InputError
from shadow_edge.io_spec import ATTENTION_GQA, MODE_BASE_SHADOW, MODE_SHADOW_ONLY
from shadow_edge.runtime.acceptance import AdaptiveDraft, accept_greedy, accept_greedy_tokens, accept_sampled, draw
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.draft_vocab import DraftHead, cost_ratio, draft_graph, draft_head
from shadow_edge.runtime.generate import Pipeline
from shadow_edge.runtime.inputs import as_int
from shadow_edge.runtime.result import SpeculativeStats
from shadow_edge.runtime.sampling import chosen_logprobs, shaped_probs
from shadow_edge.runtime.strategies.base import StepRecord, StepStrategy, register

ADAPTIVE_MAX = 8  # adaptive k ranges over 0..ADAPTIVE_MAX


@dataclass(frozen=True)
class SpeculativeOptions:
    """Speculative decoding's own option."""

    draft_tokens: int | None = field(default=None, metadata={
        "help": "speculative: tokens the shadow drafts per verify pass (>= 1); default: adaptive (0..8, from the "
                "running acceptance rate)", "type": int})

    full_draft_vocab: bool = field(default=False, metadata={
        "help": "speculative: draft over the shadow's whole vocabulary even when the artifact has a reduced draft "
                "vocabulary (export --draft-vocab); same output, slower drafts", "type": bool})

    def __post_init__(self) -> None:
        if not isinstance(self.full_draft_vocab, bool):
            raise InputError(f"full_draft_vocab is {self.full_draft_vocab!r}; it must be true or false")
        if self.draft_tokens is not None:
            object.__setattr__(self, "draft_tokens", as_int(self.draft_tokens, "draft_tokens", 1,
                                                            " (or None for adaptive)"))


class Speculative(StepStrategy):
    name, order = "speculative", 3
    uses = (MODE_SHADOW_ONLY, MODE_BASE_SHADOW)
    Options, Stats = SpeculativeOptions, SpeculativeStats

    def check(self, rt, opts, prompt_len: int) -> None:
        draft, verify = (rt.manifest.modes[m].get("shadow") for m in self.uses)
        if draft != verify:
            raise InputError(f"{rt.art_dir}: speculative needs one shadow graph shared by shadow_only and "
                             f"base_shadow; this artifact uses {draft!r} and {verify!r}; use base_shadow")
        room = rt.max_positions - prompt_len
        k = opts.strategy.draft_tokens
        if k is not None and k > room:
            raise InputError(f"draft_tokens is {k}, but only {room} positions remain after the "
                             f"{prompt_len}-token prompt (model.max_positions {rt.max_positions}); use at most "
                             f"{room} or leave it unset (adaptive)")

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        b = ids.shape[0]
        rounds = Rounds(rt, opts.adapter, b, ids.shape[1] + opts.max_new_tokens + ADAPTIVE_MAX + 1,
                        draft_head(rt, opts.strategy.full_draft_vocab))
        rows_apart = b > 1 and rounds.state.pipe.backbone.entry.attention == ATTENTION_GQA
        bound = rounds.bound(b)  # the one-call verify pass (and, greedy, one-call draft steps)
        if bound:
            rounds.state.fetch_logits = want_logprobs or not sampler.greedy
        policy = None
        if opts.strategy.draft_tokens is None:
            policy = AdaptiveDraft(cost_ratio(rt, rounds.draft_head), ADAPTIVE_MAX)
        shape = (opts.temperature, opts.top_k, opts.top_p)
        totals = dict(rounds=0, drafted=0, accepted=0, draft_ms=0.0, verify_ms=0.0)
        lengths: list[int] = []
        stats.update(draft_lengths=[], **totals)

        t0 = time.perf_counter()
        logits = rounds.state.prefill(np.ascontiguousarray(ids, dtype=np.int64),
                                      np.ascontiguousarray(mask, dtype=np.int64))
        x = sampler(logits)  # [b] the first token, exactly as base_shadow chooses it
        lp = chosen_logprobs(logits, x) if want_logprobs else None
        made = np.ones(b, dtype=np.int64)  # tokens emitted per row
        yield StepRecord([[] if state.done[r] else [int(x[r])] for r in range(b)],
                         None if lp is None else [[float(v)] for v in lp], (time.perf_counter() - t0) * 1e3)
        while True:
            active = ~state.done & (made < opts.max_new_tokens)  # [b]
            if not active.any():
                break
            t0 = time.perf_counter()
            left = int((opts.max_new_tokens - made[active]).max())
            k = min(policy.next_k() if policy else opts.strategy.draft_tokens, left - 1)
            x = np.where(active, x, rt.pad_id).astype(np.int64)  # finished rows are fed pad (as in plain)
            slots = rounds.state.length
            if bound:  # k shadow steps, then one call over the k + 1 positions (the shadow's included)
                fed, q = draft_bound(rounds, x, k, sampler, shape)
                t1 = time.perf_counter()
                targets = rounds.state.verify_bound(fed)  # [b, k + 1] the greedy token after each position
                p_logits = rounds.state.step_logits if rounds.state.fetch_logits else None  # [b, k + 1, V]
            else:
                fed, hidden, q = draft(rounds, x, k, sampler, shape)
                t1 = time.perf_counter()
                p_logits = verify(rounds, fed, hidden, active if rows_apart else None)  # [b, k + 1, V]
                targets = None
            t2 = time.perf_counter()

            # accept per row, then roll both caches back to the widest row's kept slots
            tokens: list[list[int]] = [[] for _ in range(b)]
            logprobs: list[list[float]] | None = [[] for _ in range(b)] if want_logprobs else None
            kept = np.ones(b, dtype=np.int64)  # slots each row keeps: x and its accepted drafts
            accepted_now = trials_now = 0
            for r in np.flatnonzero(active):
                drafts = fed[r, 1:]
                if sampler.greedy:
                    n, nxt = (accept_greedy_tokens(drafts, targets[r]) if targets is not None
                              else accept_greedy(drafts, p_logits[r]))
                else:
                    n, nxt = accept_sampled(drafts, shaped_probs(p_logits[r], *shape),
                                            np.stack([qj[r] for qj in q]) if k else np.zeros((0, 0)), sampler.rng)
                row = [int(t) for t in drafts[:n]] + [nxt]
                row = row[:opts.max_new_tokens - made[r]]
                tokens[r] = row
                if logprobs is not None:
                    logprobs[r] = [float(v) for v in chosen_logprobs(p_logits[r, :len(row)], np.array(row))]
                kept[r] = len(row)
                made[r] += len(row)
                accepted_now += min(n, len(row))
                trials_now += n + (n < k)
                x[r] = row[-1]
                totals["drafted"] += k
            totals["rounds"] += int(active.sum())
            totals["accepted"] += accepted_now
            lengths.append(k)
            if policy:
                policy.update(accepted_now, trials_now)
            width = int(kept[active].max())
            kept[~active] = width
            # roll back: later slots are stale, then overwritten; a row's unkept slots become holes (mask 0)
            rounds.state.rewind(slots + width, keep=(np.arange(width)[None, :] < kept[:, None]).astype(np.int64))
            t3 = time.perf_counter()
            totals["draft_ms"] += (t1 - t0) * 1e3
            totals["verify_ms"] += (t2 - t1) * 1e3
            stats.update(draft_lengths=list(lengths), **totals)
            yield StepRecord(tokens, logprobs, (t3 - t0) * 1e3)


class Rounds:
    """The decode states of one speculative generation: `state` (base_shadow: its merged step graph where the
    artifact has one, and the split graphs for the prompt and the split verify pass), `drafter` (the shadow and
    the draft head, split) and `quick` (the draft's merged graph, greedy, or None); both drafters share `state`'s
    shadow cache."""

    def __init__(self, rt, adapter: str | None, batch: int, capacity: int, head: DraftHead | None = None,
                 split_verify: bool = False):
        """head: the draft head and its columns' token ids (default: `draft_vocab.draft_head(rt)`, the artifact's
        reduced draft vocabulary if it has one, else shadow_only's head). The split verify pass (`verify`) gets the
        prepacked vocabulary head (`packed_head`: one more copy of its weights) only where rounds verify through
        it: no merged graph, a batch on GroupQueryAttention, or `split_verify` (a caller of `verify`)."""
        pipe = rt.pipeline(MODE_BASE_SHADOW, adapter)
        self.draft_head = head = head if head is not None else draft_head(rt)
        self._merged = merged = rt.step_graph(MODE_BASE_SHADOW) if adapter is None else None
        self.batch_positions = pipe.backbone.entry.attention != ATTENTION_GQA  # several positions at batch > 1
        verify_head = pipe.head if self.bound(batch) and not split_verify else packed_head(rt, pipe)
        self.state = DecodeState(Pipeline(verify_head, pipe.shadow, pipe.backbone, pipe.params), batch, capacity,
                                 merged)
        draft_pipe = Pipeline(head.session, pipe.shadow, params=pipe.params)
        self.drafter = DecodeState(draft_pipe, batch, capacity, caches=self.state.caches[:1])
        quick = draft_graph(rt, head) if merged is not None else None
        self.quick = None if quick is None else DecodeState(draft_pipe, batch, capacity, quick, fetch_logits=False,
                                                            caches=self.state.caches[:1])
        self._fed = np.empty((batch, ADAPTIVE_MAX + 1), np.int64)  # [b, k + 1] a round's fed tokens (grown on demand)

    def fed(self, k: int) -> np.ndarray:
        """[b, k + 1] the buffer of a round's fed tokens (x, d1..dk): made once, grown for a larger k."""
        if self._fed.shape[1] < k + 1:
            self._fed = np.empty((self._fed.shape[0], k + 1), np.int64)
        return self._fed[:, :k + 1]

    def bound(self, batch: int) -> bool:
        """Whether a round verifies in one call of the merged graph (`draft_bound`, `DecodeState.verify_bound`):
        the artifact has one, and one row, or an attention kind that takes several positions in a batch."""
        return self._merged is not None and (batch == 1 or self.batch_positions)


def draft(rounds: Rounds, x: np.ndarray, k: int, sampler, shape: tuple,
          confidence: list | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """k + 1 shadow steps from x [b] at the state's next positions; the draft head on the first k proposes d1..dk.

    Returns fed [b, k + 1] (x, d1..dk), their shadow_hidden_states [b, k + 1, d] and, when
    sampling, the k shaped draft distributions [b, V] (zero outside a reduced draft vocabulary). The
    shadow cache advances by k + 1 (the drafter's bound step: no per-step allocation).
    confidence (greedy): a list that receives, per draft token, the draft head's probability of it [b].
    """
    drafter, head = rounds.drafter, rounds.draft_head
    drafter.follow(rounds.state)
    b = x.shape[0]
    fed = np.empty((b, k + 1), dtype=np.int64)
    fed[:, 0] = x
    hidden, q = None, []  # [b, k + 1, d]; k of [b, V]
    for j in range(k + 1):
        q_logits = drafter.step(fed[:, j], head=j < k)  # [b, V or N] or None
        s = drafter.stack_output(0)  # [b, 1, d]
        if hidden is None:
            hidden = np.empty((b, k + 1, s.shape[-1]), np.float32)
        hidden[:, j] = s[:, 0]
        if j < k:
            if sampler.greedy:
                fed[:, j + 1] = head.tokens(np.argmax(q_logits, axis=-1))
                if confidence is not None:  # max softmax probability: 1 / sum(exp(l - max l))
                    confidence.append(1.0 / np.exp(q_logits - q_logits.max(-1, keepdims=True)).sum(-1))
            else:
                probs = shaped_probs(q_logits, *shape)  # [b, V or N]
                fed[:, j + 1] = head.tokens(np.array([draw(probs[r], sampler.rng) for r in range(b)]))
                q.append(head.full(probs))
    return fed, hidden, q


def draft_bound(rounds: Rounds, x: np.ndarray, k: int, sampler, shape: tuple) -> tuple[np.ndarray, list[np.ndarray]]:
    """k shadow steps from x [b] (x, d1..d(k-1)) at the state's next positions, each proposing the next draft: the
    drafts for a one-call verify pass, which runs the shadow over the k + 1 positions itself.

    Returns fed [b, k + 1] (x, d1..dk) and, when sampling, the k shaped draft distributions [b, V]. Greedy with a
    merged draft graph: one call per step, its token read from `next_token`. The shadow cache advances by k.
    """
    b = x.shape[0]
    fed = rounds.fed(k)  # [b, k + 1], overwritten next round
    fed[:, 0] = x
    q: list[np.ndarray] = []
    if k == 0:
        return fed, q
    quick = rounds.quick if sampler.greedy else None
    drafter = quick if quick is not None else rounds.drafter
    drafter.follow(rounds.state)
    head = rounds.draft_head
    for j in range(k):
        if quick is not None:
            quick.step(fed[:, j])
            fed[:, j + 1] = quick.next_token  # already a vocabulary id (the graph maps draft columns)
            continue
        q_logits = drafter.step(fed[:, j])  # [b, V or N]
        if sampler.greedy:
            fed[:, j + 1] = head.tokens(np.argmax(q_logits, axis=-1))
        else:
            probs = shaped_probs(q_logits, *shape)  # [b, V or N]
            fed[:, j + 1] = head.tokens(np.array([draw(probs[r], sampler.rng) for r in range(b)]))
            q.append(head.full(probs))
    return fed, q


def packed_head(rt, pipe):
    """The vocabulary head for verify passes: a session that prepacks its weights.

    A float32 head runs unpacked by default (fastest for decode's one position, no packed
    copy), but over the k + 1 positions of a verify pass the unpacked product costs 1.7-2.9x its
    one-position time (W1's Gemm head; 2.4-2.6x for the MatMul head on the `small` preset), the
    prepacked one 1.0-1.4x (benchmarks/profile_verify.py). Costs one packed copy of the head's weights.
    """
    return rt.graph(pipe.head.name, prepack=True)


def verify(rounds: Rounds, fed: np.ndarray, hidden: np.ndarray, rows_apart: np.ndarray | None) -> np.ndarray:
    """One backbone pass over the fed positions [b, k + 1] with their shadow states [b, k + 1, d], then the verify
    head on all of them (the state's multi-position step). rows_apart [b] bool: one batch-1 pass per such row
    (GroupQueryAttention). The caches hold the k + 1 positions afterwards (the caller rewinds).
    Returns logits [b, k + 1, V]."""
    return rounds.state.verify(fed, one_row_at_a_time=rows_apart, shadow_states=hidden)


register(Speculative())
