"""Interleaved timing rounds with load-order rotation: the one helper behind `shadow-edge bench A B` and benchmarks/.

On a shared machine, timing A then B measures the machine's mood as much as A and B. So every
contestant runs once per round, the rounds interleave them, and each round starts one contestant
later (round r runs the load order rotated by r), so none always goes first. The order in which
contestants are *loaded* also biases them (the artifact loaded first in a process measured up to
~10% slower), so with `load_orders=N` the contestants are loaded N times, pass p in the order
rotated by p (two contestants: A,B then B,A), closed after each pass. Warm-up rounds (untimed) follow
each load. Standard library only.

    from shadow_edge.bench.rounds import Contestant, run_rounds, summarize_rounds
    result = run_rounds([Contestant("old", run_old), Contestant("new", run_new)], reps=5, load_orders=2)
    table = summarize_rounds(result, metric=lambda s: s.ms)   # medians, spreads, ratios vs "old"
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


def rotate(items: Sequence, k: int) -> list:
    """`items` rotated left by k (k taken modulo its length): rotate([a, b, c], 1) == [b, c, a]."""
    items = list(items)
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


@dataclass(frozen=True)
class Contestant:
    """One thing timed: `run()` once per round; `load()` before each load pass and `close()` after it (optional)."""

    key: str
    run: Callable[[], Any]
    load: Callable[[], Any] | None = None
    close: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Sample:
    """One timed call: what `run()` returned, its wall time, and where it ran."""

    key: str
    value: Any  # run()'s return value (e.g. the generation's own timings)
    ms: float  # wall time of the run() call by the clock
    load_order: int  # which load pass (0-based)
    round: int  # timed round, counted across passes (0-based); the same for every contestant of a round
    position: int  # place in the round's order (0: ran first)


@dataclass
class Rounds:
    """Everything `run_rounds` observed; `samples[key]` is in round order, so samples pair up by index."""

    keys: tuple[str, ...]
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    load_ms: dict[str, list[float]] = field(default_factory=dict)  # one per load pass (contestants with load())
    load_orders: list[tuple[str, ...]] = field(default_factory=list)
    run_orders: list[tuple[str, ...]] = field(default_factory=list)  # timed rounds only

    def to_json(self) -> dict:
        return {"keys": list(self.keys), "load_orders": [list(o) for o in self.load_orders],
                "run_orders": [list(o) for o in self.run_orders], "load_ms": self.load_ms}


def run_rounds(contestants: Sequence[Contestant] | Mapping[str, Callable[[], Any]], reps: int, *,
               load_orders: int = 1, warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
               progress: Callable[[str], None] | None = None) -> Rounds:
    """`load_orders` passes; each loads every contestant (pass p in the order rotated by p), runs `warmup` untimed
    rounds and `reps` timed ones (timed round r of a pass in the load order rotated by r), then closes them.
    A mapping {key: run} is contestants without load/close. Every timed round is recorded in `run_orders`."""
    if isinstance(contestants, Mapping):
        contestants = [Contestant(k, fn) for k, fn in contestants.items()]
    contestants = list(contestants)
    keys = tuple(c.key for c in contestants)
    if not contestants or len(set(keys)) != len(keys):
        raise ValueError(f"contestants need distinct keys, got {list(keys)}")
    if reps < 1 or warmup < 0 or load_orders < 1:
        raise ValueError(f"reps {reps} (>= 1), warmup {warmup} (>= 0), load_orders {load_orders} (>= 1)")
    out = Rounds(keys, {k: [] for k in keys})
    timed = 0
    for p in range(load_orders):
        order = rotate(contestants, p)
        out.load_orders.append(tuple(c.key for c in order))
        loaded = []
        try:
            for c in order:
                if c.load is not None:
                    t0 = clock()
                    c.load()
                    out.load_ms.setdefault(c.key, []).append((clock() - t0) * 1e3)
                loaded.append(c)
            for w in range(warmup):
                for c in rotate(order, w):
                    c.run()
            for r in range(reps):
                ran = rotate(order, r)
                out.run_orders.append(tuple(c.key for c in ran))
                for pos, c in enumerate(ran):
                    t0 = clock()
                    value = c.run()
                    out.samples[c.key].append(Sample(c.key, value, (clock() - t0) * 1e3, p, timed, pos))
                timed += 1
                if progress is not None:
                    progress(f"load order {p + 1}/{load_orders} ({', '.join(out.load_orders[-1])}): "
                             f"round {r + 1}/{reps} done")
        finally:  # only what was loaded, so a failed load still frees the others
            for c in loaded:
                if c.close is not None:
                    c.close()
    return out


def spread(values: Sequence[float]) -> dict:
    """n, median, min, max and the quartiles (p25, p75; linear interpolation) of `values`."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("no values to summarize")
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "p25": q1, "p75": q3}


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> dict:
    """`spread` of the per-round ratios num[i] / den[i]: both ran in the same round, so machine drift cancels."""
    if len(num) != len(den):
        raise ValueError(f"{len(num)} values against {len(den)}: ratios pair samples of the same rounds")
    return spread([a / b for a, b in zip(num, den)])


def summarize_rounds(result: Rounds, metric: Callable[[Sample], float], first: str | None = None) -> dict[str, dict]:
    """{key: spread of metric over its samples + "ratio": paired ratios of metric against `first`'s (default: the
    first contestant; a larger metric gives a ratio above 1)}."""
    first = result.keys[0] if first is None else first
    ref = [metric(s) for s in result.samples[first]]
    table = {}
    for key in result.keys:
        values = [metric(s) for s in result.samples[key]]
        table[key] = {**spread(values), "ratio": paired_ratios(values, ref)}
    return table
