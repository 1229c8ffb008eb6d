"""Adapter overhead per decode step, measured by running the graphs interleaved in one process.

    python -m benchmarks.profile.adapter_overhead ART [--past 64] [--reps 25] [--threads 2]

ART must be exported with --plain-backbone. Each rep runs one decode step (1 new token,
`--past` cached positions) of `backbone`, `backbone_plain`, `shadow` and the head, back to
back, so machine noise hits all of them alike; medians are printed. The adapter's cost per
combined step = (backbone - backbone_plain) + shadow. Graphs run as the runtime runs them:
its GraphSession, with past/present bound to one preallocated KV buffer.
`interleaved(...)` returns the same figures as a dict (benchmarks/suites/precision_table.py uses it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.lib.timing import run_rounds
from shadow_edge import io_spec
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, ov, prepack_weights

GRAPHS = (io_spec.GRAPH_BACKBONE, io_spec.GRAPH_BACKBONE_PLAIN, io_spec.GRAPH_SHADOW, io_spec.GRAPH_LM_HEAD)


class NotMeasurable(Exception):
    """The artifact lacks a graph this measurement needs."""


def interleaved(art: Path, past: int = 64, reps: int = 25, threads: int = 2) -> dict:
    """Median ms per graph ({name: ms}) and the adapter's cost per combined step (ms and % of a plain step)."""
    m = read_manifest(art)
    missing = [g for g in GRAPHS if g not in m.graphs]
    if missing:
        raise NotMeasurable(f"{art}: no {', '.join(missing)} graph(s); export with --plain-backbone")
    rng = np.random.default_rng(0)
    d = m.model["hidden_size"]
    runs = {}
    for name in GRAPHS:
        g = m.graphs[name]
        sess = GraphSession(name, g, art, threads=threads, prepack=prepack_weights(g, m.quantization),
                            contract=m.contract(name))
        if g.kv_layers:
            feed = {io_spec.INPUT_IDS: np.array([[5]]), io_spec.ATTENTION_MASK: np.ones((1, past + 1), np.int64),
                    io_spec.POSITION_IDS: np.array([[past]])}
            if name == io_spec.GRAPH_BACKBONE:
                feed[io_spec.SHADOW_HIDDEN] = rng.standard_normal((1, 1, d)).astype(np.float32)
            cache = KVCache.empty(1, g.kv_layers, g.kv_heads, g.head_dim, past + 1)  # the step writes slot `past`
            for a in cache.arrays:
                a[:] = rng.standard_normal(a.shape)
            feed = {k: ov(v) for k, v in feed.items()}
            run = (lambda s, f, kv: lambda: s.run_in_place(f, kv))(sess, feed, cache.tensors)
        else:
            run = (lambda s, f: lambda: s.run(f))(sess, {io_spec.HIDDEN: ov(rng.standard_normal((1, 1, d))
                                                                             .astype(np.float32))})
        runs[name] = run
    result = run_rounds(runs, reps=reps, warmup=3)  # the graphs back to back, their order rotated each round
    med = {name: float(np.median([smp.ms for smp in v])) for name, v in result.samples.items()}
    step = med[io_spec.GRAPH_BACKBONE_PLAIN] + med[io_spec.GRAPH_LM_HEAD]
    extra = med[io_spec.GRAPH_BACKBONE] - med[io_spec.GRAPH_BACKBONE_PLAIN] + med[io_spec.GRAPH_SHADOW]
    return {"graph_ms": med, "past": past, "reps": reps, "adapter_ms": extra, "plain_step_ms": step,
            "overhead": extra / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--past", type=int, default=64)
    p.add_argument("--reps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    try:
        r = interleaved(args.artifact, args.past, args.reps, args.threads)
    except NotMeasurable as e:
        sys.exit(str(e))
    for name, ms in r["graph_ms"].items():
        print(f"{name:15s} {ms:7.2f} ms")
    print(f"adapter cost per combined step: {r['adapter_ms']:.2f} ms = {100 * r['overhead']:+.1f}% of a plain step "
          f"({r['plain_step_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
