"""Side-by-side generation benchmark: shadow-edge vs the shadow-peft reference, transformers and onnxruntime-genai.

One process, one machine, one workload (greedy, batch 1, random prompt ids, exactly N new
tokens, the same thread count everywhere, warm-up excluded, medians over repetitions):

    python -m benchmarks.suites.compare --preset qwen3-0.6b-shape --out benchmarks/results \\
        --results-md benchmarks/results/speed.md      # the recorded results (minutes)
    python -m benchmarks.suites.compare --preset tiny --out bench-out/tiny     # smoke run (seconds)
    python -m benchmarks.suites.compare --preset small --sweep                 # + scaling sweep

Systems (--systems picks some, by key or family): shadow-edge/{shadow_only,base_shadow,
base_plain}, shadow-peft/{shadow_only,base_shadow}, transformers/plain, ort-genai/{fp32,int4}
(skipped with a note when onnxruntime_genai is not importable). Writes results.json,
summary.md and PNG plots into --out; --results-md refreshes the generated block of a
markdown file (benchmarks/results/speed.md). Needs the `export` and `dev` extras.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.lib.artifacts import (DEFAULT_CACHE, REPO, ensure_artifact, ensure_ort_genai_model, ort_genai_version,
                                      say)

SYSTEM_KEYS = ("shadow-edge/shadow_only", "shadow-edge/base_shadow", "shadow-edge/base_plain",
               "shadow-edge-int4/shadow_only", "shadow-edge-int4/base_shadow",
               "shadow-peft/shadow_only", "shadow-peft/base_shadow", "transformers/plain",
               "ort-genai/fp32", "ort-genai/int4")
REFERENCE_FAMILY = "shadow-peft"
DEFAULT_SWEEP_SYSTEMS = "shadow-edge,shadow-edge-int4,transformers,ort-genai"


def select(spec: str, what: str) -> list[str]:
    """Comma-separated keys or families -> system keys in canonical order."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in SYSTEM_KEYS and not any(k.startswith(n + "/") for k in SYSTEM_KEYS)]
    if bad or not names:
        raise SystemExit(f"error: {what}: unknown system(s) {', '.join(bad) or '(none)'}; choose keys or families "
                         f"among {', '.join(SYSTEM_KEYS)}")
    return [k for k in SYSTEM_KEYS if k in names or k.split("/")[0] in names]


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.lib.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="qwen3-0.6b-shape",
                   help="model preset: random Qwen3 base + randomized shadow-peft adapter (default %(default)s)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=32, help="new tokens per run (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default %(default)s)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per system (default %(default)s)")
    p.add_argument("--reference-reps", type=int, default=3,
                   help="timed runs of the slow shadow-peft reference (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per system first (default %(default)s)")
    p.add_argument("--warmup-tokens", type=int, default=8,
                   help="new tokens of a warm-up run (at most --new-tokens; default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids (default %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEM_KEYS), help="systems to run: keys or families")
    p.add_argument("--sweep", action="store_true", help="also run the scaling sweep (prompt and new-token lengths)")
    p.add_argument("--sweep-systems", default=DEFAULT_SWEEP_SYSTEMS,
                   help="systems in the sweep (default %(default)s; the shadow-peft reference is very slow at "
                        "long lengths)")
    p.add_argument("--sweep-prompts", type=int_list, default=[16, 64, 256, 1024],
                   help="prompt lengths of the sweep, with --new-tokens new (default 16,64,256,1024)")
    p.add_argument("--sweep-new", type=int_list, default=[16, 64, 256],
                   help="new-token counts of the sweep, with --prompt-len prompt (default 16,64,256)")
    p.add_argument("--sweep-reps", type=int, default=1, help="timed runs per sweep point (default %(default)s)")
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="read-bandwidth probe size (default 1024)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="presets/artifacts cache (default .cache)")
    p.add_argument("--artifact", type=Path, help="use this shadow-edge artifact instead of the cached export")
    p.add_argument("--out", type=Path, help="output directory (default bench-out/<preset>)")
    p.add_argument("--results-md", type=Path,
                   help="markdown file whose generated block (between compare.py markers) is refreshed")
    p.add_argument("--from-json", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: re-render summary.md, plots and --results-md from a saved results.json")
    return p


def make_systems(keys: list[str], art: Path, base: Path, adapter: Path, preset: str, cache: Path,
                 threads: int) -> tuple[list, dict[str, str]]:
    """(systems to run, {key: reason} for those skipped)."""
    from shadow_edge.manifest import read_manifest
    from benchmarks.lib.systems import OrtGenai, ShadowEdge, ShadowPeftReference, TransformersPlain

    systems, skipped = [], {}
    modes = read_manifest(art).modes
    for key in keys:
        family, variant = key.split("/")
        if family == "shadow-edge":
            if variant not in modes:
                skipped[key] = f"the artifact has no {variant} mode (export with plain_backbone=True)"
                continue
            systems.append(ShadowEdge(art, variant, threads))
        elif family == "shadow-edge-int4":
            systems.append(ShadowEdge(ensure_artifact(preset, base, adapter, cache, "int4"), variant, threads, family))
        elif family == "shadow-peft":
            systems.append(ShadowPeftReference(base, adapter, variant))
        elif family == "transformers":
            systems.append(TransformersPlain(base))
        elif family == "ort-genai":
            if ort_genai_version() is None:
                skipped[key] = ("onnxruntime_genai is not installed (pip install onnxruntime-genai onnx_ir); "
                                "anchor skipped")
                continue
            try:
                systems.append(OrtGenai(ensure_ort_genai_model(preset, base, variant, cache), variant, threads))
            except RuntimeError as e:
                skipped[key] = str(e)
    return systems, skipped


def measure(system, ids, n: int, reps: int, warmup: int, warmup_tokens: int, label: str) -> tuple[dict, list]:
    from shadow_edge.bench.stats import summarize

    for i in range(warmup):
        system.generate(ids, max(2, min(n, warmup_tokens)))
    runs, tokens = [], []
    for r in range(reps):
        timing, tokens = system.generate(ids, n)
        runs.append(timing)
        say(f"{system.key}{label}: rep {r + 1}/{reps}: TTFT {timing.ttft_ms:.0f} ms, decode "
            f"{sorted(timing.decode_ms)[len(timing.decode_ms) // 2] if timing.decode_ms else 0:.1f} ms/token, "
            f"{timing.wall_ms / 1e3:.2f} s")
    return summarize(runs), tokens


def run_system(system, args, vocab: int, bandwidth: float | None, sweep: bool) -> dict:
    from shadow_edge.bench.machine import peak_rss_bytes, release_freed_memory, reset_peak_rss, rss_bytes
    from shadow_edge.bench.runner import prompt_ids

    reps = args.reference_reps if system.family == REFERENCE_FAMILY else args.reps
    ids = prompt_ids(vocab, 1, args.prompt_len, args.seed)
    release_freed_memory()
    scoped = reset_peak_rss()
    rss0 = rss_bytes()
    say(f"{system.key}: loading")
    t0 = time.perf_counter()
    system.load()
    load_ms = (time.perf_counter() - t0) * 1e3
    figures, tokens = measure(system, ids, args.new_tokens, reps, args.warmup, args.warmup_tokens, "")
    peak = peak_rss_bytes()
    weights = system.weight_bytes_per_token()
    achieved = weights / (figures["decode_ms_p50"] / 1e3) / 1e9 if weights and figures["decode_ms_p50"] else None
    rec = {"key": system.key, "family": system.family, "mode": system.mode, "weights": system.weights,
           "status": "ok", "note": system.note, "load_ms": load_ms, **figures, "peak_rss_bytes": peak,
           "peak_rss_scope": "system" if scoped else "process", "rss_before_load_bytes": rss0,
           "size_bytes": system.size_bytes(), "weight_bytes_per_token": weights, "achieved_gbs": achieved,
           "bandwidth_fraction": achieved / bandwidth if achieved and bandwidth else None, "tokens": tokens}
    if sweep:
        rec["sweep"] = {"prompt": [], "new": []}
        for p in args.sweep_prompts:
            f, _ = measure(system, prompt_ids(vocab, 1, p, args.seed), args.new_tokens, args.sweep_reps, 0, 0,
                           f" [sweep prompt {p}]")
            rec["sweep"]["prompt"].append({"prompt_len": p, "new_tokens": args.new_tokens, **f})
        for n in args.sweep_new:
            f, _ = measure(system, ids, n, args.sweep_reps, 0, 0, f" [sweep new {n}]")
            rec["sweep"]["new"].append({"prompt_len": args.prompt_len, "new_tokens": n, **f})
    return rec


def package_versions() -> dict:
    from shadow_edge.bench.machine import package_version, versions

    return {**versions(), **{name.replace("-", "_"): package_version(name) for name in
                             ("torch", "transformers", "shadow-peft", "onnxruntime-genai", "onnx-ir")}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        from benchmarks.lib.compare_report import write_outputs

        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        out = args.out or args.from_json.parent
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(result, out, args.results_md)
        return 0
    for name in ("prompt_len", "threads", "reps", "reference_reps", "sweep_reps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.new_tokens < 2 or args.warmup < 0:
        raise SystemExit("error: --new-tokens must be >= 2 and --warmup >= 0")
    keys = select(args.systems, "--systems")
    sweep_keys = select(args.sweep_systems, "--sweep-systems") if args.sweep else []
    out = args.out or REPO / "bench-out" / args.preset
    out.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from benchmarks.lib.presets import PRESETS, build_preset
    from shadow_edge.bench.machine import machine_info, read_bandwidth_gbs
    from shadow_edge.bench.runner import BANDWIDTH_METHOD, artifact_info
    from shadow_edge.manifest import read_manifest

    started = time.perf_counter()
    say(f"preset {args.preset}: building / reusing under {args.cache_dir}")
    base, adapter = build_preset(args.preset, args.cache_dir / "presets")
    art = args.artifact or ensure_artifact(args.preset, base, adapter, args.cache_dir)
    manifest = read_manifest(art)
    vocab = int(manifest.model["vocab_size"])
    systems, skipped = make_systems(keys, art, base, adapter, args.preset, args.cache_dir, args.threads)
    bandwidth, samples = None, []
    if args.bandwidth_mib:  # probed before the systems (and again after them: the machine is shared)
        samples.append(read_bandwidth_gbs.__wrapped__(args.threads, args.bandwidth_mib))
        bandwidth = samples[0]
        say(f"memory read bandwidth ({args.threads} threads): {bandwidth:.1f} GB/s")
    records = []
    for system in systems:
        try:
            records.append(run_system(system, args, vocab, bandwidth, system.key in sweep_keys))
        except Exception as e:  # keep going: one broken anchor must not lose the other numbers
            traceback.print_exc()
            records.append({"key": system.key, "family": system.family, "mode": system.mode,
                            "weights": system.weights, "status": "failed", "note": f"{type(e).__name__}: {e}"})
        finally:
            try:
                system.close()
            except Exception:
                pass
            gc.collect()
    if args.bandwidth_mib:
        samples.append(read_bandwidth_gbs.__wrapped__(args.threads, args.bandwidth_mib))
        bandwidth = max(samples)
        say(f"memory read bandwidth after the systems: {samples[-1]:.1f} GB/s; using the best, {bandwidth:.1f}")
        for r in records:
            if r.get("achieved_gbs"):
                r["bandwidth_fraction"] = r["achieved_gbs"] / bandwidth
    for key, reason in skipped.items():
        family, variant = key.split("/")
        records.append({"key": key, "family": family, "mode": variant, "weights": "fp32", "status": "skipped",
                        "note": reason})
    records.sort(key=lambda r: SYSTEM_KEYS.index(r["key"]))
    model_kw, shadow_kw = PRESETS[args.preset]
    result = {
        "schema": "shadow-edge-compare/1",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.suites.compare " + " ".join(shlex.quote(a) for a in
                                                             (sys.argv[1:] if argv is None else argv)),
        "preset": {"name": args.preset, "base_config": model_kw, "shadow_config": shadow_kw},
        "workload": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch": 1, "greedy": True,
                     "threads": args.threads, "reps": args.reps, "reference_reps": args.reference_reps,
                     "warmup": args.warmup, "warmup_tokens": args.warmup_tokens, "seed": args.seed,
                     "sweep_prompts": args.sweep_prompts if args.sweep else None,
                     "sweep_new": args.sweep_new if args.sweep else None, "sweep_reps": args.sweep_reps},
        "machine": machine_info(),
        "versions": package_versions(),
        "threads": args.threads,
        "read_bandwidth_gbs": bandwidth,
        "read_bandwidth_samples_gbs": samples,  # before and after the systems; the best is used
        "bandwidth_method": BANDWIDTH_METHOD,
        "artifact": artifact_info(art, manifest),
        "records": records,
        "elapsed_s": time.perf_counter() - started,
    }
    from benchmarks.lib.compare_report import write_outputs

    write_outputs(result, out, args.results_md)
    failed = [r["key"] for r in records if r["status"] == "failed"]
    if failed:
        say(f"FAILED: {', '.join(failed)} (see the tracebacks above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
