"""Interop at a real shape: export cost of the interop files, their sizes, and the detached shadow in
onnxruntime-genai vs shadow-edge's runtime (same greedy tokens; decode speed side by side).

    python -m benchmarks.suites.interop --preset qwen3-0.6b-shape --cache-dir .cache --quantize int4 --json out.json

Exports the preset (cached checkpoint under --cache-dir/presets) with --ort-format into a temporary
directory (removed afterwards), timing each export step from its progress messages; then generates
--new greedy tokens from a --prompt-len-token prompt with ShadowRuntime (shadow_only) and with
onnxruntime-genai on model.onnx and model.ort, --runs times each, alternating; reports the median over runs of the
mean decode ms/token (first token excluded) and whether the tokens are identical. Tables to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.presets import PRESETS, build_preset


def say(msg: str) -> None:
    print(f"[interop] {msg}", file=sys.stderr, flush=True)


def export_timed(base: Path, adapter: Path, out: Path, quantize: str) -> dict[str, float]:
    from shadow_edge.export import ExportOptions, export_artifact

    marks: list[tuple[str, float]] = []
    export_artifact(base, adapter, out, options=ExportOptions(quantize=quantize, ort_format=True),
                    progress=lambda m: (marks.append((m, time.perf_counter())), say(f"  export: {m}")))
    steps = {}
    for (msg, t0), (_, t1) in zip(marks, marks[1:]):
        key = msg.split(" (")[0]
        steps[key] = round(steps.get(key, 0.0) + t1 - t0, 2)
    steps["total"] = round(marks[-1][1] - marks[0][1], 2)
    return steps


def genai_run(model, ids: list[int], new: int) -> tuple[list[int], float]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([ids], np.int32))
    gen.generate_next_token()  # first token: prefill, excluded from decode timing
    t0 = time.perf_counter()
    while not gen.is_done():
        gen.generate_next_token()
    dt = time.perf_counter() - t0
    return [int(t) for t in gen.get_sequence(0)[len(ids):]], dt * 1e3 / (new - 1)


def runtime_run(rt, ids: list[int], new: int) -> tuple[list[int], float]:
    out = rt.generate(ids, mode="shadow_only", max_new_tokens=new, eos=[])
    return list(out.token_ids), statistics.mean(out.timings.decode_ms_per_token)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="qwen3-0.6b-shape")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    p.add_argument("--quantize", choices=("none", "int4"), default="int4")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    import onnxruntime_genai as og

    from shadow_edge.runtime import ShadowRuntime

    base, adapter = build_preset(a.preset, a.cache_dir / "presets")
    with tempfile.TemporaryDirectory(dir=a.cache_dir) as tmp:
        art = Path(tmp) / "art"
        steps = export_timed(base, adapter, art, a.quantize)
        m = json.loads((art / "manifest.json").read_text())
        sizes = {n: m["files"][n]["bytes"] for n in ("model.onnx", "model_combined.onnx", "genai_config.json",
                                                       "config.json", "model.ort", "shadow.onnx.data")
                 if n in m["files"]}
        ids = np.random.default_rng(0).integers(0, m["model"]["vocab_size"], a.prompt_len).tolist()
        rt = ShadowRuntime.load(art, threads=a.threads, verify=False, modes=("shadow_only",))
        models = {}
        for file in ("model.onnx", "model.ort"):
            cfg = og.Config(str(art))
            cfg.overlay(json.dumps({"model": {"decoder": {"filename": file, "session_options": {
                "intra_op_num_threads": a.threads}}}}))
            models[f"onnxruntime-genai {file}"] = og.Model(cfg)
        ms: dict[str, list[float]] = {"shadow-edge shadow_only": [], **{k: [] for k in models}}
        tokens: dict[str, list[int]] = {}
        for _ in range(a.runs):
            tokens["shadow-edge shadow_only"], t = runtime_run(rt, ids, a.new)
            ms["shadow-edge shadow_only"].append(t)
            for name, model in models.items():
                tokens[name], t = genai_run(model, ids, a.new)
                ms[name].append(t)
    ref = tokens["shadow-edge shadow_only"]
    rows = {k: {"decode_ms_per_token_median": round(statistics.median(v), 2), "runs": [round(x, 2) for x in v],
                "same_tokens_as_shadow_edge": tokens[k] == ref} for k, v in ms.items()}
    result = {"preset": a.preset, "quantize": a.quantize, "threads": a.threads, "prompt_len": a.prompt_len,
              "new_tokens": a.new, "export_steps_s": steps, "bytes": sizes, "decode": rows}
    say(f"export steps (s): {steps}")
    say(f"sizes (bytes): {sizes}")
    for k, r in rows.items():
        say(f"{k:<36} {r['decode_ms_per_token_median']:>8.2f} ms/token  same tokens: {r['same_tokens_as_shadow_edge']}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
