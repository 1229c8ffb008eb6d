"""Timing records and their summaries, shared by `shadow-edge bench` and benchmarks/suites/compare.py.

One `RunTiming` is one generate call: ttft_ms from the call to the first new token
(prompt pass + first token), decode_ms one entry per later token step, wall_ms the
whole call. `summarize` pools the decode steps of every timed repetition (warm-up runs
are never passed in) for p50/p90 and takes medians over repetitions for the rest.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunTiming:
    ttft_ms: float  # call start -> first new token available
    decode_ms: tuple[float, ...]  # one per later token step (new_tokens - 1 entries)
    wall_ms: float  # the whole call
    new_tokens: int  # per row
    batch: int = 1


def pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def summarize(runs: list[RunTiming]) -> dict:
    """ttft (median, p90), decode ms/token (p50, p90, mean over all steps), tokens/s, end-to-end."""
    if not runs:
        raise ValueError("no timed runs to summarize")
    steps = [ms for r in runs for ms in r.decode_ms]
    batch = runs[0].batch
    p50 = pct(steps, 50)
    return {
        "reps": len(runs),
        "decode_steps": len(steps),
        "ttft_ms": statistics.median(r.ttft_ms for r in runs),
        "ttft_ms_p90": pct([r.ttft_ms for r in runs], 90),
        "decode_ms_p50": p50,
        "decode_ms_p90": pct(steps, 90),
        "decode_ms_mean": float(np.mean(steps)) if steps else None,
        "decode_tok_s": 1e3 * batch / p50 if p50 else None,  # tokens per second while decoding (all rows)
        "e2e_ms": statistics.median(r.wall_ms for r in runs),
        "e2e_tok_s": statistics.median(1e3 * batch * r.new_tokens / r.wall_ms for r in runs),
    }
