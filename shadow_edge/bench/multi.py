"""`shadow-edge bench ART1 ART2 ...`: several artifacts timed interleaved, load order rotated, ratios vs the first.

Each artifact is one contestant of `rounds.run_rounds`: one runtime with every benchmarked mode loaded;
a round runs each artifact once (all its modes, in the given order), the artifacts' order rotated round
by round; `load_orders` passes load the artifacts in rotated orders (two artifacts: A,B then B,A), so
neither is always loaded first. Per artifact and mode: the usual summary (`stats.summarize`), the spread
of the per-round decode tokens/s, and its ratio to the first artifact's taken round by round (machine
drift hits both runs of a round alike). Torch-free.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from shadow_edge.bench.machine import machine_info, versions
from shadow_edge.bench.options import BenchOptions
from shadow_edge.bench.report import _f
from shadow_edge.bench.rounds import Contestant, Sample, run_rounds, spread, summarize_rounds
from shadow_edge.bench.runner import (BANDWIDTH_METHOD, artifact_info, check_artifact, needed_modes, probe_bandwidth,
                                      prompt_ids, stderr_progress)
from shadow_edge.bench.stats import RunTiming, summarize
from shadow_edge.errors import InputError
from shadow_edge.manifest import read_manifest

SCHEMA = "shadow-edge-bench-compare/1"


class _Artifact:
    """One artifact as a contestant: load() a runtime with the benchmarked modes, run() each mode once."""

    def __init__(self, path: Path, options: BenchOptions, prompt, threads: int):
        self.path, self.options, self.prompt, self.threads = path, options, prompt, threads
        self.modes = tuple(dict.fromkeys(g for m in options.modes for g in needed_modes(m)))
        self.rt = None

    def load(self) -> None:
        from shadow_edge.runtime import ShadowRuntime

        self.rt = ShadowRuntime.load(self.path, threads=self.threads, verify=False, modes=self.modes)

    def run(self) -> dict[str, tuple[RunTiming, list]]:
        o, out = self.options, {}
        for mode in o.modes:
            extra = o.options_by_mode().get(mode, {})
            t0 = time.perf_counter()
            gen = self.rt.generate(self.prompt, mode=mode, max_new_tokens=o.new_tokens, eos=(), **extra)
            wall = (time.perf_counter() - t0) * 1e3
            steps = tuple(gen.timings.decode_ms_per_token)  # as `run_bench`: TTFT is the call less its decode steps
            out[mode] = (RunTiming(wall - sum(steps), steps, wall, o.new_tokens, o.batch), gen.token_ids)
        return out

    def close(self) -> None:
        self.rt = None


def decode_tok_s(mode: str, batch: int) -> Callable[[Sample], float]:
    """A sample's decode tokens/s in `mode`: batch rows / the run's median decode step."""
    return lambda s: 1e3 * batch / statistics.median(s.value[mode][0].decode_ms)


def run_compare(arts: list[str | Path], options: BenchOptions = BenchOptions(), load_orders: int | None = None,
                progress: Callable[[str], None] = stderr_progress) -> dict:
    """The comparison's JSON document: provenance, the rounds' orders, one record per (artifact, mode)."""
    paths = [Path(a) for a in arts]
    if len(paths) < 2:
        raise InputError("comparing artifacts needs two or more; for one, run `shadow-edge bench ART`")
    if options.adapters:
        raise InputError("--adapter applies to one base artifact; bench its packs with one ART, not several")
    manifests = [read_manifest(p) for p in paths]
    for p, m in zip(paths, manifests):
        if m.model.get("task") == "seq_cls":
            raise InputError(f"{p} is a sequence classifier; comparing several artifacts times generation "
                             "(bench a classifier on its own)")
        check_artifact(p, m, options, progress)
    load_orders = len(paths) if load_orders is None else load_orders
    if load_orders < 1:
        raise InputError(f"--load-orders is {load_orders}; it must be >= 1 (default: one per artifact)")
    threads = options.threads or os.cpu_count() or 1
    bandwidth = probe_bandwidth(options, threads, progress)
    vocab = min(int(m.model["vocab_size"]) for m in manifests)  # ids valid in every artifact
    ids = prompt_ids(vocab, options.batch, options.prompt_len, options.seed)
    prompt = ids[0].tolist() if ids.shape[0] == 1 else ids.tolist()
    keys = [f"{i}:{p}" for i, p in enumerate(paths)]
    runners = [_Artifact(p, options, prompt, threads) for p in paths]
    contestants = [Contestant(k, r.run, r.load, r.close) for k, r in zip(keys, runners)]
    result = run_rounds(contestants, options.reps, load_orders=load_orders, warmup=options.warmup, progress=progress)
    records = []
    for mode in options.modes:
        table = summarize_rounds(result, decode_tok_s(mode, options.batch))
        first_tokens = result.samples[keys[0]][-1].value[mode][1]
        for i, (key, path, m) in enumerate(zip(keys, paths, manifests)):
            samples = result.samples[key]
            runs = [s.value[mode][0] for s in samples]
            figures = summarize(runs)
            records.append({
                "artifact_index": i, "path": str(path), "mode": mode, **figures,
                "decode_tok_s_rounds": {k: v for k, v in table[key].items() if k != "ratio"},
                "decode_tok_s_vs_first": table[key]["ratio"],
                "same_tokens_as_first": samples[-1].value[mode][1] == first_tokens,
                "load_ms": result.load_ms.get(key, []),
                "ttft_ms_rounds": spread([r.ttft_ms for r in runs]),
            })
    return {"schema": SCHEMA, "tool": "shadow-edge bench", "created_utc": datetime.now(timezone.utc).isoformat(
                timespec="seconds"),
            "versions": versions(), "machine": machine_info(), "threads": threads, "read_bandwidth_gbs": bandwidth,
            "bandwidth_method": BANDWIDTH_METHOD,
            "workload": {"prompt_len": options.prompt_len, "new_tokens": options.new_tokens, "batch": options.batch,
                         "rounds_per_load_order": options.reps, "load_orders": load_orders,
                         "warmup_rounds": options.warmup, "greedy": True, "seed": options.seed, "vocab_used": vocab,
                         "modes": list(options.modes)},
            "artifacts": [artifact_info(p, m) for p, m in zip(paths, manifests)],
            "rounds": result.to_json(), "records": records}


def format_compare(doc: dict) -> str:
    """The human table: per mode and artifact, decode tok/s (median [p25-p75]) and its ratio to the first."""
    w = doc["workload"]
    head = (f"{len(doc['artifacts'])} artifacts interleaved: {w['load_orders']} load order(s) x "
            f"{w['rounds_per_load_order']} rounds (+{w['warmup_rounds']} warm-up each), prompt {w['prompt_len']}, "
            f"{w['new_tokens']} new tokens, batch {w['batch']}, {doc['threads']} threads; "
            f"CPU {doc['machine']['cpu_model']}, read bandwidth {_f(doc['read_bandwidth_gbs'], '.1f')} GB/s")
    cols = ("mode", "#", "artifact", "decode tok/s [p25-p75]", "x first [min-max]", "TTFT ms", "load ms",
            "tokens = first")
    rows = []
    for r in doc["records"]:
        t, x = r["decode_tok_s_rounds"], r["decode_tok_s_vs_first"]
        rows.append((r["mode"], str(r["artifact_index"]), r["path"],
                     f"{t['median']:.1f} [{t['p25']:.1f}-{t['p75']:.1f}]",
                     f"{x['median']:.3f} [{x['min']:.3f}-{x['max']:.3f}]", f"{r['ttft_ms']:.1f}",
                     _f(statistics.median(r["load_ms"]) if r["load_ms"] else None, ".0f"),
                     "yes" if r["same_tokens_as_first"] else "NO"))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w_) if i in (0, 2) else c.rjust(w_) for i, (c, w_) in
                                   enumerate(zip(cells, widths)))
    note = ("x first: the artifact's decode tok/s over the first artifact's, round by round (median and range); "
            "spread is machine noise, so read a difference inside it as none.")
    return "\n".join([head, line(cols), *(line(r) for r in rows), note])
