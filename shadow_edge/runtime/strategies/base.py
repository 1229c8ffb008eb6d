"""What every generation strategy shares: the step record, the per-row outcome and the consuming loop.

A step strategy yields one `StepRecord` per step; a step may append several tokens to a
row (speculative decoding) or one (plain decoding). `consume` turns the steps into rows:
it stops a row at eos (keeping the eos token) or when a stop string appears in its text,
streams text pieces, and builds the timings. Strategies that combine whole passes
(cascade) override `Strategy.run` instead of `steps`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator, Iterator

import numpy as np

from shadow_edge.runtime.result import Timings
from shadow_edge.runtime.sampling import Sampler
from shadow_edge.runtime.text import TextStream

if TYPE_CHECKING:
    from shadow_edge.runtime.options import GenerationOptions
    from shadow_edge.runtime.runtime import ShadowRuntime

Pieces = Generator[tuple[int, str], None, "Rows"]  # yields (row, text piece), returns the rows


@dataclass
class StepRecord:
    """What one step appended to every row."""

    tokens: list[list[int]]  # per row, the new tokens in order (empty for a row that is finished)
    logprobs: list[list[float]] | None  # per row, log p(token) under the unshaped distribution, if asked
    ms: float  # wall time of the step (the first step includes the prompt pass)

    @property
    def width(self) -> int:
        """Positions the step advanced: the most tokens any row received."""
        return max((len(t) for t in self.tokens), default=0)


@dataclass
class LoopState:
    """Rows that are finished; the consumer marks rows done (eos, stop strings) between steps."""

    done: np.ndarray  # [b] bool
    steps: list[StepRecord] = field(default_factory=list)


class Rows:
    """Per-row outcome of one generation pass."""

    def __init__(self, b: int):
        self.ids: list[list[int]] = [[] for _ in range(b)]
        self.logprobs: list[list[float]] = [[] for _ in range(b)]
        self.finish = ["length"] * b
        self.text = [""] * b
        self.timings: Timings | None = None
        self.answered_by: list[str] = []  # cascade only
        self.conf: list[float] = []  # cascade only
        self.stages: dict[str, Timings] = {}  # cascade only
        self.stats: dict[str, object] = {}  # strategy-specific figures (e.g. speculative acceptance)

    def confidence(self, r: int) -> float:
        lp = self.logprobs[r]
        return float(np.exp(np.mean(lp))) if lp else 0.0


_REGISTRY: dict[str, "Strategy"] = {}


def register(strategy: "Strategy") -> "Strategy":
    """Make `strategy` available under `strategy.name` (called at import by its module)."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"a generation strategy named {strategy.name!r} is already registered")
    _REGISTRY[strategy.name] = strategy
    return strategy


def registry() -> dict[str, "Strategy"]:
    """Registered strategies, by `order` then name."""
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


class Strategy(ABC):
    """One way to generate. Subclasses set `name`, `uses` (and `order`, `listed`) and implement `run`."""

    name: str = ""
    uses: tuple[str, ...] = ()  # the manifest (graph) modes it runs, e.g. ("shadow_only", "base_shadow")
    order: int = 100  # position in mode lists
    listed: bool = True  # False: accepted but not advertised (benchmark-only modes)

    def available(self, graph_modes) -> bool:
        """Whether an artifact with these manifest modes (graph chains) can run this strategy."""
        return set(self.uses) <= set(graph_modes)

    @property
    def needs(self) -> str:
        """What `available` requires, for error messages."""
        return "the graphs of " + " and ".join(self.uses) if self.uses else "nothing"

    def check(self, rt: "ShadowRuntime", opts: "GenerationOptions", prompt_len: int) -> None:
        """Strategy-specific checks of the options against the runtime and the longest prompt (default: none)."""

    @abstractmethod
    def run(self, rt: "ShadowRuntime", ids: np.ndarray, mask: np.ndarray, opts: "GenerationOptions",
            incremental: bool, want_logprobs: bool = False) -> Pieces:
        """Generate for a left-padded batch (ids, mask: [b, t]); yields (row, piece), returns `Rows`."""


class StepStrategy(Strategy):
    """A strategy defined by its steps; `consume` does the rest."""

    @abstractmethod
    def steps(self, rt: "ShadowRuntime", ids: np.ndarray, mask: np.ndarray, opts: "GenerationOptions",
              sampler: Sampler, eos_ids: tuple[int, ...], want_logprobs: bool, state: LoopState,
              stats: dict) -> Iterator[StepRecord]:
        """Yield steps until every row is done or has max_new_tokens tokens; rows in `state.done` get none."""

    def run(self, rt, ids, mask, opts, incremental, want_logprobs=False) -> Pieces:
        return (yield from drive(rt, ids.shape[0], opts, incremental, lambda sampler, eos, state, stats: self.steps(
            rt, ids, mask, opts, sampler, eos, want_logprobs, state, stats)))


def drive(rt: "ShadowRuntime", b: int, opts: "GenerationOptions", incremental: bool, make_steps) -> Pieces:
    """A fresh sampler, loop state and rows for `b` rows; `make_steps(sampler, eos_ids, state, stats)` -> steps."""
    eos = opts.eos if opts.eos is not None else rt.eos_ids
    sampler = Sampler(opts.do_sample, opts.temperature, opts.top_k, opts.top_p, opts.seed)
    state = LoopState(np.zeros(b, dtype=bool))
    rows = Rows(b)
    return (yield from consume(rt, make_steps(sampler, eos, state, rows.stats), rows, opts, eos, state, incremental))


def consume(rt: "ShadowRuntime", steps: Iterator[StepRecord], rows: Rows, opts: "GenerationOptions",
            eos_ids: tuple[int, ...], state: LoopState, incremental: bool) -> Pieces:
    """Append each step's tokens to the rows, ending rows at eos or a stop string; yields (row, piece)."""
    b = len(rows.ids)
    eos_set = set(eos_ids)
    streams = [TextStream(rt.codec, opts.stop, incremental) for _ in range(b)]
    for rec in steps:
        for r in range(b):
            for j, tok in enumerate(rec.tokens[r]):
                if state.done[r]:
                    break
                rows.ids[r].append(tok)
                if rec.logprobs is not None:
                    rows.logprobs[r].append(rec.logprobs[r][j])
                if tok in eos_set:
                    rows.finish[r], state.done[r] = "eos", True
                    break
                piece = streams[r].push(tok)
                if streams[r].stopped:
                    rows.finish[r], state.done[r] = "stop", True
                if piece:
                    yield r, piece
        state.steps.append(rec)
    for r in range(b):
        piece = streams[r].finish()
        rows.text[r] = streams[r].emitted
        if piece:
            yield r, piece
    first, later = state.steps[0], state.steps[1:]
    # A step that advanced n positions counts as n decode entries of ms / n (amortized per token).
    per_token = [s.ms / s.width for s in later for _ in range(s.width)]
    rows.timings = Timings(first.ms, per_token, b)
    return rows
