"""Speculative decoding measured on a text: how many of the shadow's drafts the combined model accepts, per k.

Teacher-forced, through the speculative strategy's own `draft` and `verify`: for every
scored position s of every window, the caches hold the text's tokens before s, the text's
token ids[s] is fed, the shadow drafts k_max tokens greedily from there (its own
continuation, as in generation), and one verify pass scores them with base_shadow. A round
accepts n drafts (the longest prefix equal to base_shadow's argmax); with a draft of k <=
k_max tokens it would have accepted min(n, k), as greedy drafting and verifying are
deterministic, so one k_max round per position measures every k. The caches then roll back
to ids[:s + 1] (a length move, as in generation) and the next position follows.

The verify pass's first row predicts the text's next token ids[s + 1]: those rows (plus
the prefill's last row for the window's first scored position) give speculative's own
teacher-forced perplexity over exactly the positions and contexts of base_shadow's, which
it must equal (speculative emits base_shadow's tokens; the multi-position verify pass only
changes float rounding).

Also recorded, for adaptive drafting: each draft token that was verified in context
(every earlier draft accepted) with the shadow's probability of it, binned, so the table
shows whether the shadow's confidence predicts acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadow_edge.runtime.acceptance import accept_greedy
from shadow_edge.runtime.draft_vocab import draft_head
from shadow_edge.runtime.sampling import Sampler
from shadow_edge.runtime.strategies.speculative import Rounds, draft, verify

CONFIDENCE_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DraftLength:
    """Acceptance of drafts of k tokens over the rounds that had room for k."""

    k: int
    rounds: int
    acceptance_rate: float  # accepted drafts / drafted (k per round)
    accepted_per_round: float  # mean drafts accepted per verify pass; the pass also emits one token of its own


@dataclass(frozen=True)
class ConfidenceBin:
    """Draft tokens verified in context whose shadow probability lies in [low, high)."""

    low: float
    high: float
    drafts: int
    acceptance_rate: float | None  # None: no draft fell in this bin


@dataclass(frozen=True)
class SpeculativeEval:
    """`eval`'s speculative figures (the perplexity row is `EvalReport.modes['speculative']`)."""

    draft_tokens: int  # k_max drafted per position
    per_k: list[DraftLength]
    accepted_histogram: list[int]  # rounds (with room for k_max) that accepted n = 0..k_max drafts
    by_confidence: list[ConfidenceBin]
    max_logprob_diff: float | None  # max |log p_speculative - log p_base_shadow| of the text's tokens


@dataclass
class Scan:
    """Raw outcome of `scan`: per position, what one k_max round did."""

    accepted: list[int]  # drafts accepted (of the round's own k)
    room: list[int]  # the round's k (k_max, fewer near the end of the model's context)
    logits: list[np.ndarray]  # per window, [targets, V]: speculative's logits for the window's scored targets
    confidence: list[float]  # shadow probability of each draft token verified in context
    verdict: list[bool]  # whether that token was accepted


def scan(rt, ids: np.ndarray, spans: list[tuple[int, int, int]], k_max: int, progress=None,
         full_draft_vocab: bool = False) -> Scan:
    """One k_max draft/verify round per scored position of `spans` ((begin, end, first), as in evaluate.windows),
    drafting as speculative does (through the artifact's reduced draft vocabulary when it has one, unless
    `full_draft_vocab`)."""
    greedy = Sampler(False)
    out = Scan([], [], [], [], [])
    for w, (begin, end, first) in enumerate(spans):
        context = ids[None, begin:first]  # [1, c]
        rounds = Rounds(rt, None, 1, end - begin + k_max + 1, draft_head(rt, full_draft_vocab), split_verify=True)
        logits = rounds.state.prefill(context)
        rows = [logits[0]]  # predicts ids[first]
        for s in range(first, end - 1):
            k = min(k_max, rt.max_positions - (s - begin) - 1)  # the drafts' positions stay in the context
            slots = rounds.state.length
            conf: list[np.ndarray] = []
            fed, hidden, _ = draft(rounds, ids[s:s + 1], k, greedy, (), confidence=conf)
            p_logits = verify(rounds, fed, hidden, None)[0]  # [k + 1, V]
            n, _ = accept_greedy(fed[0, 1:], p_logits)
            out.accepted.append(n)
            out.room.append(k)
            for j in range(min(n + 1, k)):  # drafts verified in context: the accepted ones and the first rejected
                out.confidence.append(float(conf[j][0]))
                out.verdict.append(j < n)
            rows.append(p_logits[0])  # predicts ids[s + 1]
            rounds.state.rewind(slots + 1)  # back to the text: keep ids[s]
        out.logits.append(np.stack(rows))
        if progress:
            progress(w + 1)
    return out


def summarize(result: Scan, k_max: int, max_logprob_diff: float | None) -> SpeculativeEval:
    n, room = np.asarray(result.accepted), np.asarray(result.room)  # [positions]
    per_k = []
    for k in range(1, k_max + 1):
        has = room >= k
        if has.any():
            got = np.minimum(n[has], k)
            per_k.append(DraftLength(k, int(has.sum()), float(got.sum() / (k * has.sum())), float(got.mean())))
    full = room == k_max
    histogram = np.bincount(n[full], minlength=k_max + 1).tolist() if full.any() else [0] * (k_max + 1)
    conf, ok = np.asarray(result.confidence), np.asarray(result.verdict, dtype=bool)
    bins = []
    for low, high in zip(CONFIDENCE_BINS, CONFIDENCE_BINS[1:]):
        inside = (conf >= low) & ((conf < high) if high < 1.0 else (conf <= high))
        bins.append(ConfidenceBin(low, high, int(inside.sum()), float(ok[inside].mean()) if inside.any() else None))
    return SpeculativeEval(k_max, per_k, histogram, bins, max_logprob_diff)
