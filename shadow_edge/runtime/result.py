"""What `ShadowRuntime.generate` returns: new tokens, text, timings, and the strategy's stats.

Shape convention: a single prompt (a string, or one flat list of ids) gives flat fields
(`token_ids: list[int]`, `text: str`, ...); a batch (a list of prompts) gives one entry per
prompt, in order (`token_ids: list[list[int]]`, `text: list[str]`, ...).
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator


@dataclass(frozen=True)
class Timings:
    """Wall-clock timings of one generation (perf_counter; tokenization excluded).

    prefill_ms: prompt pass + first token (time to first token). decode_ms_per_token: every
    later token position (model + sampling); a step that made n tokens per row at once
    (speculative decoding) counts as n entries of its time / n. tokens_per_s: decode throughput,
    rows x decode steps / decode time (prefill excluded); for a single step, 1 token / prefill.
    """

    prefill_ms: float
    decode_ms_per_token: list[float]
    batch: int = 1

    @property
    def decode_ms_median(self) -> float | None:
        return statistics.median(self.decode_ms_per_token) if self.decode_ms_per_token else None

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + sum(self.decode_ms_per_token)

    @property
    def tokens_per_s(self) -> float:
        if self.decode_ms_per_token:
            return 1e3 * self.batch * len(self.decode_ms_per_token) / sum(self.decode_ms_per_token)
        return 1e3 * self.batch / self.prefill_ms if self.prefill_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "decode_ms_median": self.decode_ms_median, "total_ms": self.total_ms,
                "tokens_per_s": self.tokens_per_s}

    @classmethod
    def combine(cls, parts: list["Timings"]) -> "Timings":
        """Stages run one after another (cascade): prefills add up, decode steps concatenate."""
        return cls(sum(p.prefill_ms for p in parts), [ms for p in parts for ms in p.decode_ms_per_token],
                   max(p.batch for p in parts))


@dataclass(frozen=True)
class SpeculativeStats:
    """How speculative decoding went in one call, summed over rows (a row's verify pass is one round).

    drafted: tokens the shadow proposed; accepted: those the combined model agreed with;
    draft_ms / verify_ms: wall time of the drafting (shadow steps + shadow head) and of the
    verify passes (backbone + head over the drafted positions), summed over rounds;
    draft_lengths: k of each round (adaptive or fixed).
    """

    rounds: int
    drafted: int
    accepted: int
    draft_ms: float
    verify_ms: float
    draft_lengths: list[int]

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted (None when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_accepted_length(self) -> float | None:
        """Draft tokens accepted per round; each round also emits one token of the combined model's own."""
        return self.accepted / self.rounds if self.rounds else None

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate,
                "mean_accepted_length": self.mean_accepted_length}

    def counters(self) -> dict[str, int]:
        """Events a server counts (metrics)."""
        return {"drafted": self.drafted, "accepted": self.accepted}


@dataclass(frozen=True)
class GenerationResult:
    """New tokens only (the prompt is not repeated). See the module docstring for flat vs batch shapes.

    token_ids include the eos token when a row ended on one (like HF generate); `text`
    skips special tokens and ends before the first stop string. finish_reason per row:
    "eos", "stop" (a stop string appeared) or "length" (max_new_tokens reached); with a
    `Control` (the server): also "timeout", "cancelled" or "shutdown".
    `stats`: what the mode's strategy reports (its registered Stats: `SpeculativeStats`,
    `CascadeStats`, ...; None for plain modes). Shortcuts: cascade's `answered_by`, `confidence`
    and `stages` (each stage's timings; `timings` adds them up), speculative's `speculative`.
    """

    mode: str
    token_ids: list
    text: str | list[str]
    finish_reason: str | list[str]
    prompt_tokens: int | list[int]
    timings: Timings
    stats: object | None = None

    def _row_field(self, name: str):
        value = getattr(self.stats, name, None)
        if value is None or not isinstance(value, list):
            return value
        return value[0] if isinstance(self.text, str) else list(value)

    @property
    def answered_by(self):
        """cascade: who answered each row ("shadow_only", "base_shadow" or "remote"); else None."""
        return self._row_field("answered_by")

    @property
    def confidence(self):
        """cascade: the shadow's confidence per row (geometric mean of its tokens' probabilities); else None."""
        return self._row_field("confidence")

    @property
    def stages(self) -> dict[str, Timings]:
        return getattr(self.stats, "stages", None) or {}

    @property
    def speculative(self):
        """speculative: its drafting and acceptance figures (`SpeculativeStats`); else None."""
        return self.stats if isinstance(self.stats, SpeculativeStats) else None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("mode", "token_ids", "text", "finish_reason", "prompt_tokens",
                                           "answered_by", "confidence")}
        d["timings"] = self.timings.to_dict()
        if self.stages:
            d["stages"] = {k: v.to_dict() for k, v in self.stages.items()}
        if self.stats is not None:
            d[self.mode] = self.stats.to_dict()
        return d


class GenerationStream:
    """What `ShadowRuntime.stream` returns: iterate it for text pieces; then `.result` is this call's result.

    The result belongs to this object, so concurrent streams in other threads never see it.
    Advancing one stream from several threads is serialized by a lock.
    """

    def __init__(self, steps: Iterator[tuple[int, str]], finish: Callable[[object], GenerationResult]):
        self._steps, self._finish = steps, finish  # steps yields (row, piece) and returns the rows
        self._lock = threading.Lock()
        self.result: GenerationResult | None = None  # set when the iteration ends

    def __iter__(self) -> "GenerationStream":
        return self

    def __next__(self) -> str:
        with self._lock:
            if self.result is not None:
                raise StopIteration
            while True:
                try:
                    row, piece = next(self._steps)
                except StopIteration as done:
                    self.result = self._finish(done.value)
                    raise StopIteration from None
                if row >= 0:  # not a step boundary (TICK)
                    return piece
