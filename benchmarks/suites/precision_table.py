"""Issue 14's table: shadow-edge's three modes beside onnxruntime-genai's plain backbone, per preset and precision.

    python -m benchmarks.suites.precision_table --cache-dir /work/cache --bigmem-lock /work/bigmem.lock \\
        --out benchmarks/results/precision --results-md benchmarks/results/precision.md      # the recorded table
    python -m benchmarks.suites.precision_table --presets tiny --precisions fp32,int4 --reps 1 --new-tokens 8  # smoke

For every (preset, precision) group: the preset's shadow-edge artifact at that precision
(exported and validated once, cached; `--artifact PRESET:PRECISION=DIR` uses one as it is) and
onnxruntime-genai's build of the same base (`-p fp32|int8|int4 -e cpu`, defaults). The group's
four systems (shadow-edge shadow_only, backbone_plain, base_shadow; ort-genai plain) are loaded
together and run interleaved (benchmarks.lib.timing), so machine noise hits all of them alike: one
untimed warm-up round after each load, then `--reps` rounds of one timed greedy generation per system
(random prompt ids, exactly `--new-tokens` tokens, batch 1), each round starting one system later. In one
process a system loaded later decoded faster (up to ~10% at the Qwen3-0.6B shape, whichever system it was),
so by default (`--load-orders 2`) each group runs twice, the systems loaded freshly in rotated orders, and
the rounds of both passes are pooled. Decode tok/s = 1000 / the p50 of every decode step of the timed
runs (also recorded at the p10: the least contended steps on a shared machine). The adapter's
overhead per token is base_shadow's p50 over backbone_plain's (same rounds), and also per graph from `adapter_overhead.interleaved` (the decode step's graphs back to back).
Exports and onnxruntime-genai builds of the Qwen3-0.6B shape run under `--bigmem-lock` when given. Targets: issue 14's.
Writes results.json and summary.md into --out; --results-md refreshes the block between this
script's markers. Needs the `export` and `dev` extras and onnxruntime-genai.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.lib.artifacts import DEFAULT_CACHE, ensure_artifact, ensure_ort_genai_model, locked, say
from benchmarks.lib.timing import Contestant, run_rounds

PRECISIONS = ("fp32", "int8", "int4")
QUANTIZE = {"fp32": "none", "int8": "int8", "int4": "int4"}  # precision -> export --quantize
DEFAULT_PRECISIONS = "fp32,int8,int4,int8@128,int4@128"  # NAME@BLOCK: that quantization block on both sides
MODES = ("shadow_only", "base_plain", "base_shadow")
BIG_PRESETS = ("qwen3-0.6b-shape",)  # ~10 GB export peak: exported and built under --bigmem-lock
GENAI = "ort-genai"


def parse_precision(token: str) -> tuple[str, int | None]:
    """"int4" -> ("int4", None) (the exporters' default block); "int4@128" -> ("int4", 128)."""
    name, _, block = token.partition("@")
    if name not in PRECISIONS or (block and (not block.isdigit() or name == "fp32")):
        raise SystemExit(f"error: precision {token!r}: expected one of {', '.join(PRECISIONS)}, optionally "
                         "int8@BLOCK / int4@BLOCK (e.g. int4@128)")
    return name, int(block) if block else None


def artifact_overrides(items: list[str]) -> dict[tuple[str, str], Path]:
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        preset, _, precision = key.partition(":")
        parse_precision(precision)
        if not sep or not Path(path).is_dir():
            raise SystemExit(f"error: --artifact {item!r}: expected PRESET:PRECISION=DIR with an existing directory")
        out[preset, precision] = Path(path)
    return out


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.lib.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,qwen3-0.6b-shape",
                   help=f"comma-separated presets among {', '.join(PRESETS)} (default %(default)s)")
    p.add_argument("--precisions", default=DEFAULT_PRECISIONS,
                   help="comma-separated; NAME@BLOCK exports and builds both sides with that quantization block "
                        "(default %(default)s)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=128, help="new tokens per run (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="timed rounds per group and load order (default %(default)s)")
    p.add_argument("--load-orders", type=int, default=2,
                   help="load passes per group, pass p loading the systems in the order rotated by p, their rounds "
                        "pooled (in one process a system loaded later decoded up to ~10%% faster); 1: one pass "
                        "(default %(default)s)")
    p.add_argument("--overhead-reps", type=int, default=25,
                   help="interleaved graph-level decode steps for the adapter overhead (default %(default)s; 0: skip)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="presets/artifacts cache (default .cache)")
    p.add_argument("--artifact", action="append", default=[], metavar="PRESET:PRECISION=DIR",
                   help="use this artifact (exported with --plain-backbone) instead of the cached export")
    p.add_argument("--bigmem-lock", type=Path,
                   help=f"flock this file around exports and onnxruntime-genai builds of {', '.join(BIG_PRESETS)}")
    p.add_argument("--out", type=Path, default=Path("bench-out/precision"), help="output directory")
    p.add_argument("--results-md", type=Path, help="markdown file whose precision_table.py block is refreshed")
    p.add_argument("--from-json", type=Path, nargs="+", metavar="RESULTS_JSON",
                   help="measure nothing: re-render from results.json files (several: their groups in one table)")
    return p


def run_group(preset: str, token: str, art: Path, genai_dir: Path, ids, args) -> dict:
    """The group's four systems interleaved (benchmarks.lib.timing), `reps` rounds per load order; summaries."""
    from benchmarks.profile import adapter_overhead
    from shadow_edge.bench.stats import pct, summarize
    from benchmarks.lib.systems import OrtGenai, ShadowEdge

    precision, block = parse_precision(token)
    genai = OrtGenai(genai_dir, precision, args.threads)
    genai.note += "" if block is None else f" with --extra_options block_size={block}"
    systems = [ShadowEdge(art, mode, args.threads) for mode in MODES] + [genai]
    contestants = [Contestant(s.key, run=lambda s=s: s.generate(ids, args.new_tokens), load=s.load, close=s.close)
                   for s in systems]
    # one warm-up round after each load; pass p loads the systems in the order rotated by p (a system loaded
    # later decoded up to ~10% faster), round r runs them in that order rotated by r
    result = run_rounds(contestants, args.reps, load_orders=args.load_orders, warmup=1,
                        progress=lambda m: say(f"{preset} {token}: {m}"))
    runs = {k: [smp.value[0] for smp in v] for k, v in result.samples.items()}
    tokens = {k: v[-1].value[1] for k, v in result.samples.items()}
    load_ms = {k: v[0] for k, v in result.load_ms.items()}  # the first load
    for k, v in runs.items():
        say(f"{preset} {token}: {k} decode ms/token, median of each round: "
            + ", ".join(f"{sorted(r.decode_ms)[len(r.decode_ms) // 2]:.1f}" for r in v))
    systems_out = {}
    for s in systems:
        p10 = pct([ms for r in runs[s.key] for ms in r.decode_ms], 10)  # the least contended steps
        systems_out[GENAI if s.family == GENAI else s.mode] = {
            **summarize(runs[s.key]), "decode_ms_p10": p10, "decode_tok_s_p10": 1e3 / p10,
            "load_ms": load_ms[s.key], "tokens": tokens[s.key], "note": s.note}
    overhead = None
    if args.overhead_reps:
        try:
            overhead = adapter_overhead.interleaved(art, past=args.prompt_len, reps=args.overhead_reps,
                                                    threads=args.threads)
        except adapter_overhead.NotMeasurable as e:
            overhead = {"skipped": str(e)}
    from shadow_edge.manifest import read_manifest

    q = read_manifest(art).model.get("quantization") or {}
    return {"preset": preset, "precision": token, "artifact": str(art), "genai": str(genai_dir),
            "quantization": {k: q.get(k) for k in ("scheme", "block_size", "compute")} if q else None,
            "systems": systems_out, "graph_overhead": overhead, "weight_bytes_per_token": bytes_per_token(art, genai_dir)}


def bytes_per_token(art: Path, genai_dir: Path) -> dict[str, int]:
    """Weight bytes one decode step reads, per shadow-edge mode and for onnxruntime-genai's graph."""
    from shadow_edge.bench.weights import weight_bytes, weight_bytes_per_token
    from shadow_edge.manifest import read_manifest

    manifest = read_manifest(art)
    return {**{mode: weight_bytes_per_token(art, manifest, mode) for mode in MODES},
            GENAI: weight_bytes([Path(genai_dir) / "model.onnx"])}


def merge(results: list[dict]) -> dict:
    """Several runs' results as one (e.g. the presets run as separate processes): groups in order, every
    command, load and bandwidth sample kept; workload, machine and versions from the first."""
    if len({json.dumps(r["workload"], sort_keys=True) for r in results}) > 1:
        raise SystemExit("error: --from-json: the runs used different workloads; render them separately")
    out = dict(results[0])
    out["groups"] = [g for r in results for g in r["groups"]]
    for g in out["groups"]:  # runs recorded before the bytes were: read them from the artifacts if still there
        art, genai = Path(g.get("artifact") or "-"), Path(g.get("genai") or "-")
        if "weight_bytes_per_token" not in g and art.is_dir() and genai.is_dir():
            g["weight_bytes_per_token"] = bytes_per_token(art, genai)
    out["command"] = " ; ".join(r["command"] for r in results)
    out["created_utc"] = max(r["created_utc"] for r in results)
    out["elapsed_s"] = sum(r["elapsed_s"] for r in results)
    for key in ("read_bandwidth_samples_gbs", "load_average_1min"):
        out[key] = [x for r in results for x in r[key]]
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmarks.lib.precision_report import write_outputs

    if args.from_json:
        write_outputs(merge([json.loads(p.read_text(encoding="utf-8")) for p in args.from_json]), args.out,
                      args.results_md)
        return 0
    presets = [p for p in args.presets.split(",") if p]
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        parse_precision(p)
    if args.reps < 1 or args.new_tokens < 2 or args.threads < 1:
        raise SystemExit("error: --reps >= 1, --new-tokens >= 2, --threads >= 1")
    overrides = artifact_overrides(args.artifact)
    from benchmarks.lib.presets import build_preset
    from shadow_edge.bench.machine import read_bandwidth_gbs
    from shadow_edge.bench.runner import prompt_ids
    from shadow_edge.runtime.session import session_options

    session_options(args.threads)  # size the process-wide onnxruntime pool before anything loads
    started, groups, bandwidth, load = time.perf_counter(), [], [], [os.getloadavg()[0]]
    result = lambda: _result(args, argv, groups, bandwidth, load, started)  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        base, adapter = build_preset(preset, args.cache_dir / "presets")
        inputs = {}
        big = preset in BIG_PRESETS and any((preset, p) not in overrides for p in precisions)
        with locked(args.bigmem_lock, say) if big else nullcontext():
            for token in precisions:  # exports and builds first, under the lock
                precision, block = parse_precision(token)
                art = overrides.get((preset, token)) or ensure_artifact(
                    preset, base, adapter, args.cache_dir, QUANTIZE[precision], block)
                inputs[token] = art, ensure_ort_genai_model(preset, base, precision, args.cache_dir, block)
        bandwidth.append(read_bandwidth_gbs.__wrapped__(args.threads, 1024))
        say(f"{preset}: memory read bandwidth {bandwidth[-1]:.1f} GB/s")
        from shadow_edge.manifest import read_manifest

        vocab = int(read_manifest(inputs[precisions[0]][0]).model["vocab_size"])
        ids = prompt_ids(vocab, 1, args.prompt_len, 0)
        for precision in precisions:
            groups.append(run_group(preset, precision, *inputs[precision], ids, args))
            write_outputs(result(), args.out, None)  # after every group: a partial table survives an abort
    bandwidth.append(read_bandwidth_gbs.__wrapped__(args.threads, 1024))
    load.append(os.getloadavg()[0])
    write_outputs(result(), args.out, args.results_md)
    return 0


def _result(args, argv, groups: list[dict], bandwidth: list[float], load: list[float], started: float) -> dict:
    from shadow_edge.bench.machine import machine_info, versions

    return {
        "schema": "shadow-edge-precision-table/1",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.suites.precision_table " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "workload": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": args.threads,
                     "reps": args.reps, "load_orders": args.load_orders, "load_order_rule": "rotate", "overhead_reps": args.overhead_reps,
                     "batch": 1, "greedy": True},
        "machine": machine_info(), "versions": versions(), "read_bandwidth_samples_gbs": bandwidth,
        "load_average_1min": load,  # at the start and the end: other users' jobs share the cores
        "groups": groups, "elapsed_s": time.perf_counter() - started,
    }


if __name__ == "__main__":
    sys.exit(main())
