"""Benchmark options: one frozen dataclass, validated in `__post_init__` (runtime-only, never stored)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shadow_edge import io_spec
from shadow_edge.adapter_pack import adapter_pairs
from shadow_edge.errors import InputError
from shadow_edge.runtime.inputs import thread_count
from shadow_edge.runtime.strategies import strategy
from shadow_edge.runtime.strategies.base import option_owners

SPECULATIVE = "speculative"  # shadow drafts, base_shadow verifies (needs both graph modes)
BENCH_MODES = io_spec.GRAPH_MODES + io_spec.BENCH_MODES + (SPECULATIVE,)  # cascade's cost depends on its threshold
DEFAULT_MODES = io_spec.GRAPH_MODES


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. Defaults: the issue's workload (prompt 64, 32 new tokens, greedy, batch 1)."""

    modes: tuple[str, ...] = field(default=DEFAULT_MODES, metadata={
        "help": "modes to benchmark, in order: shadow_only, base_shadow, base_plain (the backbone without the "
                "adapter; artifacts exported with plain_backbone only), speculative"})
    strategy_options: tuple[tuple[str, object], ...] = field(default=(), metadata={
        "help": "(public name, value) options of the benchmarked modes' strategies (e.g. ('draft_tokens', 4)); "
                "each applies to the mode that owns it"})
    prompt_len: int = field(default=64, metadata={"help": "prompt length in tokens (random ids), >= 1"})
    new_tokens: int = field(default=32, metadata={
        "help": "tokens generated per repetition (greedy, eos ignored), >= 2 so that decoding is timed"})
    batch: int = field(default=1, metadata={"help": "prompts per generate call (same length, no padding), >= 1"})
    reps: int = field(default=5, metadata={"help": "timed repetitions per mode, >= 1"})
    warmup: int = field(default=1, metadata={"help": "untimed repetitions before the timed ones, >= 0"})
    threads: int | None = field(default=None, metadata={
        "help": "onnxruntime intra-op threads and bandwidth-probe threads (default: all cores)"})
    seed: int = field(default=0, metadata={"help": "seed of the random prompt ids"})
    bandwidth_mib: int = field(default=1024, metadata={
        "help": "size of the memory read-bandwidth probe in MiB (0 skips the probe)"})
    verify: bool = field(default=False, metadata={
        "help": "check every artifact file's sha256 before loading (excluded from load time)"})
    adapters: tuple[tuple[str, str], ...] = field(default=(), metadata={
        "help": "(name, PACK) adapter packs of a base artifact: each mode is also timed with each pack active"})

    def __post_init__(self) -> None:
        modes = (self.modes,) if isinstance(self.modes, str) else tuple(self.modes or ())
        object.__setattr__(self, "modes", modes)
        if not modes:
            raise InputError(f"modes is empty; choose one or more of {', '.join(BENCH_MODES)}")
        for m in modes:
            if m not in BENCH_MODES:
                raise InputError(f"mode {m!r} cannot be benchmarked; choose from {', '.join(BENCH_MODES)} "
                                 "(cascade's cost depends on its threshold: time its two modes instead)")
        if len(set(modes)) != len(modes):
            raise InputError(f"modes {list(modes)} lists a mode twice; list each mode once")
        for name, low in (("prompt_len", 1), ("new_tokens", 2), ("batch", 1), ("reps", 1), ("warmup", 0),
                          ("seed", 0), ("bandwidth_mib", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise InputError(f"{name} is {value!r}; it must be an integer >= {low}")
        object.__setattr__(self, "strategy_options", tuple(dict(self.strategy_options).items()))
        for mode, values in self.options_by_mode().items():
            if mode not in modes:
                name = next(iter(values))
                raise InputError(f"{name} applies to mode {mode!r}, which is not benchmarked; add it to modes or "
                                 "drop the option")
            strategy(mode).make_options(values)  # its own checks
        thread_count(self.threads)
        object.__setattr__(self, "adapters", adapter_pairs(self.adapters))

    def options_by_mode(self) -> dict[str, dict]:
        """{mode: {public name: value}} of `strategy_options`; an unknown name is refused."""
        owners = option_owners()
        out: dict[str, dict] = {}
        for name, value in self.strategy_options:
            if name not in owners:
                raise InputError(f"{name} is not an option of any generation mode; strategy options are: "
                                 f"{', '.join(sorted(owners)) or 'none'}")
            out.setdefault(owners[name].name, {})[name] = value
        return out
