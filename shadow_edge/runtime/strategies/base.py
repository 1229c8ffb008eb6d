"""What every generation strategy shares: its registration (options, stats), the step record and the loop driver.

A strategy registers under its mode name with its options dataclass (`Options`: every field has
`metadata={"help": ...}` and an optional public `name`; validated in `__post_init__`) and its stats
type (`Stats`, with `to_dict()`); the CLI flags (`run`, `bench`), the server's extra body fields,
`inspect` and the runtime's keyword arguments are generated from that registration
(runtime/options.py, commands/strategy_flags.py, serve/schemas.py).

A step strategy yields one `StepRecord` per step; a step may append several tokens to a row
(speculative decoding) or one (plain decoding). `consume` feeds the steps to one `RowLoop` per
row (runtime/token_loop.py: eos, stop strings, text, limits, deadline, cancel), yields text
pieces (and a `TICK` after each step) and builds the timings. Strategies that combine whole
passes (cascade) override `Strategy.run` instead of `steps`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Generator, Iterator

import numpy as np

from shadow_edge.runtime.result import Timings
from shadow_edge.runtime.sampling import Sampler
from shadow_edge.runtime.token_loop import TICK, RowLoop

if TYPE_CHECKING:
    from shadow_edge.runtime.options import GenerationOptions
    from shadow_edge.runtime.runtime import ShadowRuntime

Pieces = Generator[tuple[int, str], None, "Rows"]  # yields (row, text piece) and TICKs, returns the rows


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
    """Rows that are finished; the consumer marks rows done (eos, stop strings, limits, control) between steps."""

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
        self.stats: object | None = None  # the strategy's Stats (speculative acceptance, cascade decision, ...)

    def confidence(self, r: int) -> float:
        lp = self.logprobs[r]
        return float(np.exp(np.mean(lp))) if lp else 0.0


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options of its own."""


_REGISTRY: dict[str, "Strategy"] = {}


def public_names(options_type: type) -> dict[str, str]:
    """{public name: field name} of an Options dataclass (a field's `metadata["name"]`, else its own name)."""
    return {f.metadata.get("name", f.name): f.name for f in fields(options_type)}


def option_owners() -> dict[str, "Strategy"]:
    """{public option name: the strategy that owns it}, over every registered strategy."""
    return {name: s for s in _REGISTRY.values() for name in public_names(s.Options)}


def register(strategy: "Strategy") -> "Strategy":
    """Make `strategy` available under `strategy.name` (called at import by its module), with its options."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"a generation strategy named {strategy.name!r} is already registered")
    for f in fields(strategy.Options):
        if f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"{strategy.Options.__name__}.{f.name} needs a default (options are optional)")
        if "help" not in f.metadata:
            raise ValueError(f"{strategy.Options.__name__}.{f.name} needs metadata={{'help': ...}} (CLI/server docs)")
    from shadow_edge.runtime.options import GenerationOptions

    taken = {**{f.name: "GenerationOptions" for f in fields(GenerationOptions)},
             **{n: s.name for n, s in option_owners().items()}}
    for name in public_names(strategy.Options):
        if name in taken:
            raise ValueError(f"option {name!r} of strategy {strategy.name!r} is already used by {taken[name]}; "
                             "give it another public name (metadata={'name': ...})")
    _REGISTRY[strategy.name] = strategy
    return strategy


def registry() -> dict[str, "Strategy"]:
    """Registered strategies, by `order` then name."""
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


class Strategy(ABC):
    """One way to generate. Subclasses set `name`, `uses` (and `order`, `listed`, `Options`, `Stats`) and
    implement `run`."""

    name: str = ""
    uses: tuple[str, ...] = ()  # the manifest (graph) modes it runs, e.g. ("shadow_only", "base_shadow")
    order: int = 100  # position in mode lists
    listed: bool = True  # False: accepted but not advertised (benchmark-only modes)
    Options: type = NoOptions  # its options (a frozen dataclass; see the module docstring)
    Stats: type | None = None  # what it reports besides tokens (a dataclass with to_dict()), built from its figures
    batchable: bool = False  # one graph chain, one token per row per step: the server batches it continuously

    def make_options(self, values: dict) -> object:
        """The Options instance from {public name: value} (validated by its `__post_init__`)."""
        names = public_names(self.Options)
        return self.Options(**{names[k]: v for k, v in values.items()})

    def make_stats(self, figures: dict) -> object | None:
        """The Stats of one run from the figures its steps recorded (None without a Stats type or figures)."""
        return self.Stats(**figures) if self.Stats is not None and figures else None

    def graph_modes(self, opts: "GenerationOptions | None" = None) -> tuple[str, ...]:
        """The graph modes a run with these options needs (default: `uses`)."""
        return self.uses

    def available(self, graph_modes, opts: "GenerationOptions | None" = None) -> bool:
        """Whether an artifact with these manifest modes (graph chains) can run this strategy."""
        return set(self.graph_modes(opts)) <= set(graph_modes)

    def needs(self, opts: "GenerationOptions | None" = None) -> str:
        """What `available` requires, for error messages."""
        uses = self.graph_modes(opts)
        return "the graphs of " + " and ".join(uses) if uses else "nothing"

    def check(self, rt: "ShadowRuntime", opts: "GenerationOptions", prompt_len: int) -> None:
        """Strategy-specific checks of the options against the runtime and the longest prompt (default: none)."""

    @abstractmethod
    def run(self, rt: "ShadowRuntime", ids: np.ndarray, mask: np.ndarray, opts: "GenerationOptions",
            incremental: bool, want_logprobs: bool = False) -> Pieces:
        """Generate for a left-padded batch (ids, mask: [b, t]); yields (row, piece) and TICKs, returns `Rows`."""


class StepStrategy(Strategy):
    """A strategy defined by its steps; `consume` does the rest."""

    @abstractmethod
    def steps(self, rt: "ShadowRuntime", ids: np.ndarray, mask: np.ndarray, opts: "GenerationOptions",
              sampler: Sampler, eos_ids: tuple[int, ...], want_logprobs: bool, state: LoopState,
              stats: dict) -> Iterator[StepRecord]:
        """Yield steps until every row is done or has max_new_tokens tokens; rows in `state.done` get none.
        `stats`: a dict that receives the run's figures (the fields of `Stats`)."""

    def run(self, rt, ids, mask, opts, incremental, want_logprobs=False) -> Pieces:
        return (yield from drive(rt, ids.shape[0], opts, incremental, lambda sampler, eos, state, stats: self.steps(
            rt, ids, mask, opts, sampler, eos, want_logprobs, state, stats), self))


def drive(rt: "ShadowRuntime", b: int, opts: "GenerationOptions", incremental: bool, make_steps,
          owner: Strategy | None = None) -> Pieces:
    """A fresh sampler, loop state and rows for `b` rows; `make_steps(sampler, eos_ids, state, stats)` -> steps.
    `owner`: the strategy whose Stats are built from the figures the steps put in `stats`."""
    eos = opts.eos if opts.eos is not None else rt.eos_ids
    sampler = Sampler(opts.do_sample, opts.temperature, opts.top_k, opts.top_p, opts.seed)
    state = LoopState(np.zeros(b, dtype=bool))
    rows, figures = Rows(b), {}
    rows = yield from consume(rt, make_steps(sampler, eos, state, figures), rows, opts, eos, state, incremental)
    rows.stats = owner.make_stats(figures) if owner is not None else None
    return rows


def consume(rt: "ShadowRuntime", steps: Iterator[StepRecord], rows: Rows, opts: "GenerationOptions",
            eos_ids: tuple[int, ...], state: LoopState, incremental: bool) -> Pieces:
    """Feed each step's tokens to the rows' token loops; yields (row, piece), and a TICK after each step."""
    b = len(rows.ids)
    loops = [RowLoop(rt.codec, opts.max_new_tokens, opts.stop, eos_ids, incremental, opts.control) for _ in range(b)]
    for rec in steps:
        for r in range(b):
            loop = loops[r]
            for j, tok in enumerate(rec.tokens[r]):
                if loop.done:
                    break
                piece = loop.push(tok, None if rec.logprobs is None else rec.logprobs[r][j])
                if piece:
                    yield r, piece
            loop.poll()
            state.done[r] = loop.done
        state.steps.append(rec)
        yield TICK
    for r, loop in enumerate(loops):
        piece = loop.close()
        rows.ids[r], rows.logprobs[r], rows.finish[r], rows.text[r] = loop.ids, loop.logprobs, loop.finish, loop.text
        if piece:
            yield r, piece
    first, later = state.steps[0], state.steps[1:]
    # A step that advanced n positions counts as n decode entries of ms / n (amortized per token).
    per_token = [s.ms / s.width for s in later for _ in range(s.width)]
    rows.timings = Timings(first.ms, per_token, b)
    return rows


def ticks(gen: Pieces) -> Pieces:
    """Run a pass forwarding only its TICKs (its text is held); return its value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if item[0] < 0:
            yield item


@dataclass(frozen=True)
class OptionSpec:
    """One strategy option as the CLI, the server and `inspect` see it (from its dataclass field)."""

    strategy: str  # the mode that owns it
    name: str  # public name: keyword argument, server body field
    field: str  # the dataclass field
    type: type  # int, float, str or bool (from metadata["type"] or the annotation)
    default: object
    help: str
    flag: str  # CLI flag (metadata["flag"], else --public-name)
    server: bool  # a server body field (metadata["server"], default True)


def option_specs(modes=None) -> list[OptionSpec]:
    """The options of the registered strategies (or of `modes`), in registry order."""
    import typing

    out = []
    for s in registry().values():
        if modes is not None and s.name not in modes:
            continue
        hints = typing.get_type_hints(s.Options)
        for f in fields(s.Options):
            kind = f.metadata.get("type") or hints.get(f.name)
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = args[0] if args else kind
            public = f.metadata.get("name", f.name)
            default = f.default if f.default is not MISSING else f.default_factory()
            out.append(OptionSpec(s.name, public, f.name, kind if kind in (int, float, str, bool) else str, default,
                                  f.metadata["help"], f.metadata.get("flag", "--" + public.replace("_", "-")),
                                  f.metadata.get("server", True)))
    return out
