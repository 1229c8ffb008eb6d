"""Cascade: answer with the detached shadow; re-answer rows it is unsure about with a second stage.

The shadow's confidence in its answer is the geometric mean of its probabilities of the
tokens it chose, under the plain softmax of its logits (exp(mean log p)); rows below
`cascade_threshold` are answered again by the second stage: base_shadow in this process
(`LocalStage`), or a `shadow-edge serve` over the network (`escalate_to=URL`: runtime/remote.py's
`RemoteStage`). Local or remote is a choice of stage; the shadow pass, the decision, the token
loop and the result are the same. The shadow's answer is held until its confidence is known;
an escalated answer streams from the second stage. A stage that cannot answer (server down,
slow, another vocabulary, an empty answer) leaves the shadow's answer, with the reason.

The local stage reuses the shadow's work on the prompt: both modes run the same shadow graph,
so the shadow KV cache of the prompt slots (copied for the escalated rows) and the prompt's
shadow_hidden_states from the shadow pass feed base_shadow's prefill, which then runs only
the backbone over the prompt.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from shadow_edge import io_spec
from shadow_edge.errors import InputError
from shadow_edge.runtime.inputs import as_float
from shadow_edge.runtime.result import Timings
from shadow_edge.runtime.strategies.base import Pieces, Strategy, drive, register, ticks
from shadow_edge.runtime.strategies.plain import decode_n
from shadow_edge.runtime.token_loop import ENDED_BY_CONTROL

SHADOW, COMBINED = io_spec.MODE_SHADOW_ONLY, io_spec.MODE_BASE_SHADOW


def silent(gen: Pieces):
    """Run a pass without forwarding its pieces; return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def remap(gen: Pieces, rows: list[int]) -> Pieces:
    """Forward a sub-batch pass's pieces with row indices mapped back to the full batch (TICKs as they are)."""
    while True:
        try:
            r, piece = next(gen)
        except StopIteration as stop:
            return stop.value
        yield (rows[r] if r >= 0 else r), piece


@dataclass(frozen=True)
class CascadeOptions:
    """The cascade's options: when to escalate, and where to (in-process base_shadow, or a server)."""

    threshold: float = field(default=0.5, metadata={
        "name": "cascade_threshold", "help": "cascade: escalate when the shadow's confidence (geometric mean of "
                                             "its chosen tokens' probabilities) is below this, in [0, 1]"})
    escalate_to: object = field(default=None, metadata={
        "server": False, "type": str, "help": "cascade: escalate unsure answers to this OpenAI-compatible server "
        "(a `shadow-edge serve`, e.g. http://host:8000/v1; or a remote.Escalation) instead of base_shadow in "
        "this process; the artifact may then hold only the shadow graphs"})
    escalate_model: str | None = field(default=None, metadata={
        "server": False, "help": "cascade over the network: the server's model id (default: its first "
                                 "NAME:base_shadow)"})
    escalate_timeout: float = field(default=10.0, metadata={
        "server": False, "help": "cascade over the network: give up on the server after this many seconds and "
                                 "keep the shadow's answer"})
    api_key: str | None = field(default=None, metadata={
        "server": False, "help": "cascade over the network: the server's API key"})

    def __post_init__(self) -> None:
        value = as_float(self.threshold, "cascade_threshold", "in [0, 1]")
        if not 0.0 <= value <= 1.0:
            raise InputError(f"cascade_threshold is {value!r}; it must be in [0, 1]")
        object.__setattr__(self, "threshold", value)
        if self.escalate_to is None:
            for name in ("escalate_model", "api_key"):
                if getattr(self, name) is not None:
                    raise InputError(f"{name} is given without escalate_to; it applies to a cascade over the network "
                                     "(escalate_to=URL): add it or drop this option")
            return
        from shadow_edge.runtime.remote import Escalation

        if not isinstance(self.escalate_to, Escalation):  # a URL: the other fields complete it (and are checked)
            if not isinstance(self.escalate_to, str):
                raise InputError(f"escalate_to is {self.escalate_to!r}; give the server's URL, e.g. "
                                 "http://127.0.0.1:8000/v1")
            timeout = self.escalate_timeout
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not math.isfinite(timeout) \
                    or timeout <= 0:
                raise InputError(f"escalate_timeout is {timeout!r}; it must be a finite number of seconds > 0")
            object.__setattr__(self, "escalate_to", Escalation(self.escalate_to, self.api_key, self.escalate_model,
                                                               float(timeout)))

    @property
    def escalation(self):
        """The server to escalate to (remote.Escalation), or None for base_shadow in this process."""
        return self.escalate_to


@dataclass(frozen=True)
class CascadeStats:
    """The cascade's decision per row (lists, one entry per row).

    answered_by: "shadow_only", "base_shadow" or "remote"; confidence: the shadow's; reason:
    "confident", "escalated", or why the second stage could not answer (the shadow's answer stands);
    shadow_token_ids / shadow_text: the shadow's own answer; remote: per row, the server's figures
    (model, ms, bytes_sent, bytes_received, usage) when it was asked, else None; stages: each
    stage's timings.
    """

    answered_by: list[str]
    confidence: list[float]
    reason: list[str]
    threshold: float
    shadow_token_ids: list[list[int]]
    shadow_text: list[str]
    remote: list[dict | None]
    stages: dict[str, Timings]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = {k: v.to_dict() for k, v in self.stages.items()}
        return d

    def row(self, r: int) -> dict:
        """Row r's decision, flat (a server request is one row)."""
        d = {k: v[r] for k, v in asdict(self).items() if isinstance(v, list)}
        return {**d, "threshold": self.threshold}

    def counters(self) -> dict[str, int]:
        """Events a server counts (metrics): rows escalated and answered by the second stage."""
        return {"escalations": sum(a != SHADOW for a in self.answered_by)}


class LocalStage:
    """base_shadow in this process, from the shadow pass's prompt work."""

    name = COMBINED

    def answer(self, rt, ids, mask, low: list[int], opts, incremental: bool, shadow_state, prompt_states,
               capacity: int) -> Pieces:
        """Re-answer rows `low`; yields their pieces (full-batch rows); returns {row: (loop-like rows entry)}."""
        keep = int(np.argmax(mask[low].any(axis=0)))  # drop columns that are padding in every kept row
        sub_ids, sub_mask = ids[low, keep:], mask[low, keep:]  # [n, t']
        t0 = time.perf_counter()
        combined = rt.decode_state(COMBINED, len(low), capacity, opts.adapter)
        reuse = {}
        if shadow_state.pipe.shadow is combined.pipe.shadow:  # one shadow graph: its prompt slots carry over
            combined.copy_rows(shadow_state, low, stacks=1, columns=slice(keep, ids.shape[1]))
            reuse = {"shadow_states": prompt_states[0][low, keep:]}  # [n, t', d]
        first = combined.prefill(sub_ids, sub_mask, **reuse)
        base = yield from remap(drive(rt, len(low), opts, incremental, lambda sampler, eos, state, stats: decode_n(
            combined, sub_ids, sub_mask, opts.max_new_tokens, sampler, rt.pad_id, False, state, first, t0)), low)
        return {r: (base.ids[i], base.text[i], base.finish[i], None) for i, r in enumerate(low)}, base.timings


class Cascade(Strategy):
    name, order = "cascade", 2
    first, second = SHADOW, COMBINED
    uses = (first, second)
    Options, Stats = CascadeOptions, CascadeStats

    def graph_modes(self, opts=None) -> tuple[str, ...]:
        remote = opts is not None and opts.strategy is not None and opts.strategy.escalation is not None
        return (self.first,) if remote else self.uses

    def run(self, rt, ids, mask, opts, incremental, want_logprobs=False) -> Pieces:
        o = opts.strategy
        ids, mask = (np.ascontiguousarray(a, dtype=np.int64) for a in (ids, mask))  # [b, t]
        b = ids.shape[0]
        capacity = ids.shape[1] + opts.max_new_tokens
        t0 = time.perf_counter()
        prompt_states: list[np.ndarray] = []  # the shadow's [b, t, d] states of the prompt
        shadow_state = rt.decode_state(self.first, b, capacity, opts.adapter)
        first = shadow_state.prefill(ids, mask, keep_shadow=prompt_states)
        shadow = yield from ticks(drive(rt, b, opts, False, lambda sampler, eos, state, stats: decode_n(
            shadow_state, ids, mask, opts.max_new_tokens, sampler, rt.pad_id, True, state, first, t0)))
        conf = [shadow.confidence(r) for r in range(b)]
        answered = [shadow.finish[r] not in ENDED_BY_CONTROL for r in range(b)]
        low = [r for r in range(b) if answered[r] and conf[r] < o.threshold]
        reason = ["confident" if answered[r] else shadow.finish[r] for r in range(b)]
        answered_by = [self.first] * b
        remote: list[dict | None] = [None] * b
        shadow_ids, shadow_text = [list(x) for x in shadow.ids], list(shadow.text)
        stages = {self.first: shadow.timings}
        rows = shadow
        if low:
            if o.escalation is None:
                stage = LocalStage()
                answers, timings = yield from stage.answer(rt, ids, mask, low, opts, incremental, shadow_state,
                                                           prompt_states, capacity)
            else:
                from shadow_edge.runtime.remote import RemoteStage

                stage = RemoteStage(o.escalation)
                answers, timings = yield from stage.answer(rt, ids, mask, low, opts, incremental)
            stages[stage.name] = timings
            for r in low:
                got_ids, text, finish, info = answers[r]
                remote[r] = info.get("remote") if info else None
                if info and info.get("fallback"):
                    reason[r] = info["fallback"]
                    continue
                rows.ids[r], rows.text[r], rows.finish[r] = got_ids, text, finish
                answered_by[r], reason[r] = stage.name, "escalated"
        for r in range(b):
            if answered_by[r] == self.first and rows.text[r]:
                yield r, rows.text[r]  # the held shadow answer, in one piece
        rows.stats = CascadeStats(answered_by, conf, reason, o.threshold, shadow_ids, shadow_text, remote, stages)
        rows.timings = Timings.combine(list(stages.values()))
        return rows


register(Cascade())
