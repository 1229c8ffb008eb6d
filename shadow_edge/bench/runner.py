"""`run_bench`: time each mode of an artifact in this process, one freshly loaded runtime per mode.

Per mode: reset the peak-RSS mark, load only that mode's graphs (load time), run
`warmup` untimed and `reps` timed greedy generations of the same random prompt (eos
ignored, so every run makes exactly `new_tokens` tokens), read the peak RSS, free the
runtime. With adapter packs (`BenchOptions.adapters`, a base artifact) the runtime loads
them all and each rep runs the artifact's own adapter and then every pack, so their
records compare side by side. The memory read bandwidth is probed once, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from shadow_edge import io_spec
from shadow_edge.bench.machine import (machine_info, peak_rss_bytes, read_bandwidth_gbs, release_freed_memory,
                                       reset_peak_rss, rss_bytes, versions)
from shadow_edge.bench.options import SPECULATIVE, BenchOptions
from shadow_edge.bench.stats import RunTiming, summarize
from shadow_edge.bench.weights import weight_bytes_per_token
from shadow_edge.errors import InputError
from shadow_edge.manifest import MANIFEST_NAME, Manifest, read_manifest, verify_files

SCHEMA = "shadow-edge-bench/1"
BANDWIDTH_METHOD = ("numpy streaming read: np.bitwise_or.reduce in 8 MiB blocks over an int64 array (1 GiB by "
                    "default) split across N threads (GIL released), best of 7 passes, GB = 1e9 bytes")


def stderr_progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def artifact_info(art: Path, manifest: Manifest) -> dict:
    m = manifest.model
    return {
        "path": str(art),
        "manifest_sha256": hashlib.sha256((art / MANIFEST_NAME).read_bytes()).hexdigest(),
        "tool_version": manifest.tool_version,
        "dtype": manifest.dtype,
        "quantization": manifest.quantization,
        "vocab_size": m.get("vocab_size"),
        "hidden_size": m.get("hidden_size"),
        "base_layers": m.get("base", {}).get("num_layers"),
        "shadow_layers": m.get("shadow", {}).get("num_layers"),
        "shadow_kind": m.get("shadow_kind"),
    }


def prompt_ids(vocab_size: int, batch: int, length: int, seed: int) -> np.ndarray:
    """[batch, length] random token ids, the same for every mode and system of a run."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, length), dtype=np.int64)


def needed_modes(mode: str) -> tuple[str, ...]:
    """The manifest (graph) modes a benchmarked mode runs."""
    return io_spec.GRAPH_MODES if mode == SPECULATIVE else (mode,)


def check_artifact(art: Path, manifest: Manifest, options: BenchOptions, progress: Callable[[str], None]) -> None:
    """Refuse an artifact that lacks a benchmarked mode or whose context is too short; verify files if asked."""
    missing = [m for m in options.modes if not set(needed_modes(m)) <= set(manifest.modes)]
    if missing:
        hint = " (base_plain needs an artifact exported with plain_backbone=True)" if "base_plain" in missing else ""
        raise InputError(f"{art}: mode(s) {', '.join(missing)} not in this artifact; it has "
                         f"{', '.join(manifest.modes)}{hint}")
    limit = int(manifest.model["max_positions"])
    if options.prompt_len + options.new_tokens > limit:
        raise InputError(f"{art}: prompt_len {options.prompt_len} + new_tokens {options.new_tokens} > the model's "
                         f"max_positions {limit}; lower one of them")
    if options.verify:
        progress(f"verifying {art}'s files (sha256)")
        verify_files(art, manifest)


def probe_bandwidth(options: BenchOptions, threads: int, progress: Callable[[str], None]) -> float | None:
    """The machine's measured read bandwidth in GB/s (None when options.bandwidth_mib is 0)."""
    if not options.bandwidth_mib:
        return None
    progress(f"measuring memory read bandwidth ({options.bandwidth_mib} MiB, {threads} threads)")
    bandwidth = read_bandwidth_gbs(threads, options.bandwidth_mib)
    progress(f"read bandwidth {bandwidth:.1f} GB/s")
    return bandwidth


def run_bench(art_dir: str | Path, options: BenchOptions = BenchOptions(),
              progress: Callable[[str], None] = stderr_progress) -> list[dict]:
    """One record per mode in `options.modes` (see `report.RECORD_KEYS` for the fields)."""
    art = Path(art_dir)
    manifest = read_manifest(art)
    check_artifact(art, manifest, options, progress)
    threads = options.threads or os.cpu_count() or 1
    bandwidth = probe_bandwidth(options, threads, progress)
    common = {"schema": SCHEMA, "tool": "shadow-edge bench", "versions": versions(), "machine": machine_info(),
              "threads": threads, "read_bandwidth_gbs": bandwidth, "bandwidth_method": BANDWIDTH_METHOD,
              "artifact": artifact_info(art, manifest)}
    ids = prompt_ids(int(manifest.model["vocab_size"]), options.batch, options.prompt_len, options.seed)
    return [{**common, **record} for mode in options.modes
            for record in bench_mode(art, manifest, mode, ids, options, threads, bandwidth, progress)]


def bench_mode(art: Path, manifest: Manifest, mode: str, ids: np.ndarray, options: BenchOptions, threads: int,
               bandwidth: float | None, progress: Callable[[str], None]) -> list[dict]:
    """One record for the artifact's own adapter, then one per adapter pack, timed rep by rep in turn."""
    from shadow_edge.runtime import ShadowRuntime

    release_freed_memory()
    scoped = reset_peak_rss()
    rss_before = rss_bytes()
    progress(f"{mode}: loading")
    t0 = time.perf_counter()
    rt = ShadowRuntime.load(art, threads=threads, verify=False, modes=(mode,), adapters=dict(options.adapters))
    extra = options.options_by_mode().get(mode, {})  # the mode's own options (e.g. draft_tokens)
    load_ms = (time.perf_counter() - t0) * 1e3
    provider = rt.pipeline(needed_modes(mode)[-1]).head.session.get_providers()[0]
    prompt = ids[0].tolist() if ids.shape[0] == 1 else ids.tolist()
    adapters = (None, *(name for name, _ in options.adapters))
    pack_bytes = {a: rt.adapters.get(a).manifest.nbytes for a in adapters if a is not None}
    runs, prefill, drafting = ({a: [] for a in adapters} for _ in range(3))
    for i in range(options.warmup + options.reps):
        for a in adapters:
            t0 = time.perf_counter()
            out = rt.generate(prompt, mode=mode, max_new_tokens=options.new_tokens, eos=(), adapter=a, **extra)
            wall = (time.perf_counter() - t0) * 1e3
            steps = tuple(out.timings.decode_ms_per_token)
            timed = i >= options.warmup
            label = f"rep {i - options.warmup + 1}/{options.reps}" if timed else f"warm-up {i + 1}/{options.warmup}"
            progress(f"{mode}{'' if a is None else ' @' + a}: {label}: prefill {out.timings.prefill_ms:.1f} ms, "
                     f"decode {np.median(steps):.2f} ms/token, {wall:.0f} ms total")
            if timed:
                runs[a].append(RunTiming(wall - sum(steps), steps, wall, options.new_tokens, options.batch))
                prefill[a].append(out.timings.prefill_ms)
                if out.speculative is not None:
                    drafting[a].append(out.speculative)
    peak = peak_rss_bytes()
    del rt, out
    release_freed_memory()
    shared = {"load_ms": load_ms, "peak_rss_bytes": peak, "peak_rss_scope": "mode" if scoped else "process",
              "rss_before_load_bytes": rss_before, "provider": provider}
    return [{**_record(art, manifest, mode, options, runs[a], prefill[a], drafting[a], bandwidth, shared),
             "adapter": a, "adapter_bytes": pack_bytes.get(a)} for a in adapters]


def _record(art: Path, manifest: Manifest, mode: str, options: BenchOptions, runs: list[RunTiming],
            prefill: list[float], drafting: list, bandwidth: float | None, shared: dict) -> dict:
    figures = summarize(runs)
    figures["prefill_ms"] = float(np.median(prefill))
    speculative = None
    if mode == SPECULATIVE:  # tokens per verify pass vary, so weight bytes per token are not fixed
        weights = achieved = None
        total = {k: sum(getattr(d, k) for d in drafting) for k in ("rounds", "drafted", "accepted", "draft_ms",
                                                                   "verify_ms")}  # over the timed runs
        rounds = total["rounds"] or None
        own = options.options_by_mode().get(mode, {})
        speculative = {"draft_tokens": own.get("draft_tokens"), "rounds": total["rounds"],
                       "acceptance_rate": total["accepted"] / total["drafted"] if total["drafted"] else None,
                       "mean_accepted_length": total["accepted"] / rounds if rounds else None,
                       "draft_ms_per_round": total["draft_ms"] / rounds if rounds else None,
                       "verify_ms_per_round": total["verify_ms"] / rounds if rounds else None}
    else:
        weights = weight_bytes_per_token(art, manifest, mode)
        achieved = weights / (figures["decode_ms_p50"] / 1e3) / 1e9
    return {
        "mode": mode,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workload": {"prompt_len": options.prompt_len, "new_tokens": options.new_tokens, "batch": options.batch,
                     "reps": options.reps, "warmup": options.warmup, "greedy": True, "seed": options.seed},
        **shared,
        **figures,
        "artifact_bytes": manifest.mode_bytes(*needed_modes(mode)),
        "weight_bytes_per_token": weights,
        "achieved_gbs": achieved,
        "bandwidth_fraction": achieved / bandwidth if bandwidth and achieved else None,
        "speculative": speculative,
    }
