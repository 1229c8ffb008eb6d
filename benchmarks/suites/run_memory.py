"""Decode speed and peak memory of one artifact in one mode, in a fresh process (prints one JSON line).

    python -m benchmarks.suites.run_memory ART --mode base_shadow [--prompt-len 16 --new-tokens 32 --threads 2]
    python -m benchmarks.suites.run_memory GENAI_DIR --genai            # onnxruntime-genai's build, plain backbone

Loads the artifact (`ShadowRuntime.load`, every graph of it), generates greedily once to warm up
and once measured, and reports the median decode step (tok/s), the process's peak RSS (VmHWM),
its anonymous and file-backed RSS after generating (the runtime still loaded), the artifact's
weight bytes (its external data files) and the KV cache bytes at the final length, and whether
peak RSS <= 1.1 x weights + KV.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BOUND = 1.1  # the runtime goal: peak RSS <= 1.1 x weight bytes + KV cache


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.endswith((".onnx.data", ".onnx")))


def run_artifact(art: Path, mode: str, ids: np.ndarray, new: int, threads: int) -> dict:
    from shadow_edge.manifest import read_manifest
    from shadow_edge.runtime import ShadowRuntime

    t0 = time.perf_counter()
    rt = ShadowRuntime.load(art, threads=threads, verify=False)
    load_s = time.perf_counter() - t0
    loaded = proc_status()  # the peak so far is the load's (prepacking temporaries)
    rt.generate(ids[0, :4].tolist(), mode=mode, max_new_tokens=2)  # warm-up
    out = rt.generate(ids[0].tolist(), mode=mode, max_new_tokens=new)
    end = proc_status()  # while the runtime is alive: what generating holds
    steps = out.timings.decode_ms_per_token
    m = read_manifest(art)
    positions = ids.shape[1] + new
    kv = sum(2 * g.kv_layers * g.kv_heads * g.head_dim * 4 * positions * ids.shape[0]
             for name, g in m.graphs.items() if name in m.modes[mode].values() and g.kv_layers)
    return {"load_s": load_s, "decode_ms_median": statistics.median(steps), "tokens": len(out.token_ids),
            "peak_rss_load": loaded["VmHWM"], "rss_after_load": loaded["VmRSS"],
            "rss_anon": end["RssAnon"], "rss_file": end["RssFile"], "kv_bytes": kv}


def run_genai(model_dir: Path, ids: np.ndarray, new: int, threads: int) -> dict:
    import onnxruntime_genai as og

    t0 = time.perf_counter()
    cfg = og.Config(str(model_dir))
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(cfg)
    load_s = time.perf_counter() - t0
    loaded = proc_status()
    steps = []
    for measured in (False, True):
        params = og.GeneratorParams(model)
        total = ids.shape[1] + new
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids.astype(np.int32))
        last = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
            now = time.perf_counter()
            if measured:
                steps.append((now - last) * 1e3)
            last = now
        del gen
    end = proc_status()  # the model still loaded
    genai = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    kv = 2 * genai["num_hidden_layers"] * genai["num_key_value_heads"] * genai["head_size"] * 4 * total
    return {"load_s": load_s, "decode_ms_median": statistics.median(steps[1:]), "tokens": len(steps),
            "peak_rss_load": loaded["VmHWM"], "rss_after_load": loaded["VmRSS"], "rss_anon": end["RssAnon"],
            "rss_file": end["RssFile"], "kv_bytes": kv}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, help="artifact directory (or onnxruntime-genai model directory with --genai)")
    p.add_argument("--mode", default="base_shadow", help="artifact mode (default base_shadow)")
    p.add_argument("--genai", action="store_true", help="the path is an onnxruntime-genai model (plain backbone)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    ids = np.random.default_rng(0).integers(100, 20000, (1, args.prompt_len))  # [1, prompt]
    r = (run_genai(args.path, ids, args.new_tokens, args.threads) if args.genai
         else run_artifact(args.path, args.mode, ids, args.new_tokens, args.threads))
    mem = proc_status()
    weights = weight_bytes(args.path)
    bound = BOUND * weights + r["kv_bytes"]
    print(json.dumps({"mode": "plain" if args.genai else args.mode, **r,
                      "tok_s": 1e3 / r["decode_ms_median"], "peak_rss": mem["VmHWM"], "weight_bytes": weights,
                      "bound_bytes": bound,
                      "peak_over_weights": mem["VmHWM"] / weights, "within_bound": mem["VmHWM"] <= bound}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
