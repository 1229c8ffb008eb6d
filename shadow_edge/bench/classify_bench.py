"""`shadow-edge bench` on a sequence-classifier artifact: sequences/s and latency per sequence, per mode.

Per mode: load only that mode's graphs (load time), then `warmup` untimed and `reps` timed
`ShadowRuntime.classify` calls on the same `batch` random sequences of `prompt_len` tokens
(one padded batch per call). Latency per sequence is a call's wall time / batch; p50/p90
over the timed calls; sequences/s = batch / the median call time. Peak RSS per mode.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from shadow_edge.bench.machine import machine_info, peak_rss_bytes, release_freed_memory, reset_peak_rss, versions
from shadow_edge.bench.options import BenchOptions
from shadow_edge.bench.report import label
from shadow_edge.bench.runner import artifact_info, prompt_ids
from shadow_edge.bench.stats import pct
from shadow_edge.errors import InputError
from shadow_edge.manifest import Manifest, read_manifest, verify_files

SCHEMA = "shadow-edge-bench-classify/1"
# Every record has these keys (add, never rename).
RECORD_KEYS = ("schema", "tool", "versions", "machine", "threads", "artifact", "mode", "created_utc", "workload",
               "load_ms", "call_ms_p50", "call_ms_p90", "ms_per_sequence_p50", "ms_per_sequence_p90",
               "sequences_per_s", "reps", "peak_rss_bytes", "peak_rss_scope", "artifact_bytes", "adapter",
               "adapter_bytes")


def run_classify_bench(art_dir: str | Path, options: BenchOptions,
                       progress: Callable[[str], None]) -> list[dict]:
    """One record per mode in `options.modes`; `new_tokens` and the bandwidth probe do not apply."""
    art = Path(art_dir)
    manifest = read_manifest(art)
    missing = [m for m in options.modes if m not in manifest.modes]
    if missing:
        raise InputError(f"{art}: mode(s) {', '.join(missing)} not in this classifier artifact; it has "
                         f"{', '.join(manifest.modes)}")
    if options.prompt_len > int(manifest.model["max_positions"]):
        raise InputError(f"prompt_len {options.prompt_len} > the model's max_positions "
                         f"{manifest.model['max_positions']}; lower it")
    if options.verify:
        progress("verifying artifact files (sha256)")
        verify_files(art, manifest)
    threads = options.threads or os.cpu_count() or 1
    common = {"schema": SCHEMA, "tool": "shadow-edge bench", "versions": versions(), "machine": machine_info(),
              "threads": threads, "artifact": artifact_info(art, manifest)}
    ids = prompt_ids(int(manifest.model["vocab_size"]), options.batch, options.prompt_len, options.seed).tolist()
    return [{**common, **record} for mode in options.modes
            for record in _bench_mode(art, manifest, mode, ids, options, threads, progress)]


def _bench_mode(art: Path, manifest: Manifest, mode: str, ids: list[list[int]], options: BenchOptions,
                threads: int, progress: Callable[[str], None]) -> list[dict]:
    """One record for the artifact's own adapter, then one per adapter pack (timed rep by rep in turn)."""
    from shadow_edge.runtime import ShadowRuntime

    release_freed_memory()
    scoped = reset_peak_rss()
    t0 = time.perf_counter()
    rt = ShadowRuntime.load(art, threads=threads, verify=False, modes=(mode,), adapters=dict(options.adapters))
    load_ms = (time.perf_counter() - t0) * 1e3
    adapters = (None, *(name for name, _ in options.adapters))
    pack_bytes = {a: rt.adapters.get(a).manifest.nbytes for a in adapters if a is not None}
    calls: dict = {a: [] for a in adapters}
    for i in range(options.warmup + options.reps):
        for a in adapters:
            t0 = time.perf_counter()
            rt.classify(ids, mode=mode, batch_size=len(ids), adapter=a)
            ms = (time.perf_counter() - t0) * 1e3
            timed = i >= options.warmup
            progress(f"{mode}{'' if a is None else ' @' + a}: {'rep' if timed else 'warm-up'} {i + 1}: {ms:.1f} ms "
                     f"for {len(ids)} sequences")
            if timed:
                calls[a].append(ms)
    peak = peak_rss_bytes()
    del rt
    release_freed_memory()
    shared = {"load_ms": load_ms, "peak_rss_bytes": peak, "peak_rss_scope": "mode" if scoped else "process"}
    return [{**_record(manifest, mode, options, len(ids), calls[a], shared), "adapter": a,
             "adapter_bytes": pack_bytes.get(a)} for a in adapters]


def _record(manifest: Manifest, mode: str, options: BenchOptions, b: int, calls: list[float], shared: dict) -> dict:
    return {
        "mode": mode,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workload": {"prompt_len": options.prompt_len, "batch": b, "reps": options.reps, "warmup": options.warmup,
                     "seed": options.seed},
        **shared,
        "call_ms_p50": pct(calls, 50),
        "call_ms_p90": pct(calls, 90),
        "ms_per_sequence_p50": pct(calls, 50) / b,
        "ms_per_sequence_p90": pct(calls, 90) / b,
        "sequences_per_s": 1e3 * b / statistics.median(calls),
        "reps": len(calls),
        "artifact_bytes": manifest.mode_bytes(mode),
    }


def format_classify_table(records: list[dict]) -> str:
    r0 = records[0]
    w = r0["workload"]
    head = (f"artifact {r0['artifact']['path']} (sequence classifier), {w['batch']} sequences of "
            f"{w['prompt_len']} tokens per call, {w['reps']} reps after {w['warmup']} warm-up, {r0['threads']} threads")
    cols = ("mode", "load s", "call ms p50/p90", "ms/sequence p50", "sequences/s", "peak RSS MB", "size MB")
    rows = [(label(r), f"{r['load_ms'] / 1e3:.2f}", f"{r['call_ms_p50']:.1f}/{r['call_ms_p90']:.1f}",
             f"{r['ms_per_sequence_p50']:.2f}", f"{r['sequences_per_s']:.1f}", f"{r['peak_rss_bytes'] / 1e6:.0f}",
             f"{r['artifact_bytes'] / 1e6:.2f}") for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(n) if i == 0 else c.rjust(n) for i, (c, n) in enumerate(zip(cells, widths)))
    return "\n".join([head, line(cols), *(line(r) for r in rows)])
