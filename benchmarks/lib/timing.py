"""The suites' timing rounds: interleaved, rotated, load order rotated — `shadow_edge.bench.rounds`, re-exported.

One helper for the shipped `shadow-edge bench ART1 ART2 ...` and every suite here, so that both measure alike:

    from benchmarks.lib.timing import Contestant, run_rounds, summarize_rounds
"""

from shadow_edge.bench.rounds import (Contestant, Rounds, Sample, paired_ratios, rotate, run_rounds, spread,
                                      summarize_rounds)

__all__ = ["Contestant", "Rounds", "Sample", "paired_ratios", "rotate", "run_rounds", "spread", "summarize_rounds"]
