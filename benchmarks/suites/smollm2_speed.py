"""Decode speed on the real demo pair, side by side in one run: shadow-edge vs onnxruntime-genai vs llama.cpp.

    .venv/bin/python -m benchmarks.suites.smollm2_speed --llama-cpp DIR/build/bin --rounds 4 --out bench-out/smollm2

Systems, greedy, batch 1, 2 threads, the same chat prompt, --new-tokens tokens:
  - shadow-edge: the demo pair (SmolLM2-135M-Instruct + the shipped shadow) at fp32 / int8 / int4 (exported once
    into --cache-dir, validated), modes shadow_only, base_shadow, speculative (adaptive draft length);
  - onnxruntime-genai: its own model builder's plain SmolLM2 from the same float32 checkpoint (-p fp32/int8/int4);
  - llama.cpp (when --llama-cpp names the folder of its `llama-bench` and `llama-quantize`): the package's shipped
    Q4_1 GGUF, and F32 / Q8_0 / Q4_0 made from it with `llama-quantize --allow-requantize`, timed by
    `llama-bench -t 2 -p 0 -n N` (decode only; reported tok/s).
Decode tok/s = (new tokens - 1) / (wall time - time to the first token), median over --rounds rounds; each round
runs the systems in a rotated order (load order is rotated too: one half of the rounds loads the systems in
the order rotated by one; benchmarks.lib.timing). Ratios are taken within the run. Results: --out/results.json
and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.artifacts import REPO, demo_pair_artifact, ensure_ort_genai_model
from benchmarks.lib.systems import OrtGenai
from benchmarks.lib.timing import Contestant, run_rounds

from shadow_edge.core.smollm2 import smollm2_checkpoint, smollm2_gguf
from shadow_edge.runtime import ShadowRuntime

# precision -> (--quantize, llama.cpp's closest type, onnxruntime-genai's -p, more export options). int4 is the
# exporter's default (asymmetric base blocks, int8 vocabulary: within 5% perplexity); int4-zp has integer zero points
# instead of the float minima (no offsets path); int4-sym is symmetric round-to-nearest everywhere, the same
# quantizer class as onnxruntime-genai's int4 and llama.cpp's Q4_0.
PRECISIONS = {"fp32": ("none", "F32", "fp32", {}), "int8": ("int8", "Q8_0", "int8", {}),
              "int4": ("int4", "Q4_0", "int4", {}), "int4-zp": ("int4", "Q4_0", "int4", {"quant_scheme": "zero-point"}),
              "int4-sym": ("int4", "Q4_0", "int4", {"quant_scheme": "symmetric", "vocab_quantize": "int4"})}
MODES = ("shadow_only", "base_shadow", "speculative")
PROMPT = 'Define the word "lantern".'


def say(msg: str) -> None:
    print(f"[smollm2-speed] {msg}", file=sys.stderr, flush=True)


class Ours:
    def __init__(self, art: Path, mode: str, precision: str, threads: int):
        self.key, self.art, self.mode, self.threads = f"shadow-edge/{mode}/{precision}", art, mode, threads

    def load(self):
        self.rt = ShadowRuntime.load(self.art, threads=self.threads, verify=False)

    def decode_tok_s(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        out = self.rt.generate(ids, mode=self.mode, max_new_tokens=n, eos=())
        wall = time.perf_counter() - t0
        return (n - 1) / (wall - out.timings.prefill_ms / 1e3), list(out.token_ids)


class Genai:
    def __init__(self, model_dir: Path, precision: str, threads: int):
        self.key, self.inner = f"ort-genai/plain/{precision}", OrtGenai(model_dir, precision, threads)

    def load(self):
        self.inner.load()

    def decode_tok_s(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        timing, tokens = self.inner.generate(np.asarray([ids], dtype=np.int64), n)
        return (n - 1) / ((timing.wall_ms - timing.ttft_ms) / 1e3), tokens


def llama_cpp(bin_dir: Path, gguf: Path, work: Path, n: int, rounds: int) -> dict:
    """{quant: decode tok/s} from llama-bench (median of its repetitions), GGUFs made once with llama-quantize."""
    out = {}
    files = {"Q4_1 (shipped)": gguf}
    for quant in dict.fromkeys(spec[1] for spec in PRECISIONS.values()):
        path = work / f"smollm2-{quant}.gguf"
        if not path.is_file():
            subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(gguf), str(path), quant],
                           check=True, capture_output=True)
        files[quant] = path
    for quant, path in files.items():
        proc = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(path), "-t", "2", "-p", "0", "-n", str(n),
                               "-r", str(rounds), "-o", "json"], check=True, capture_output=True, text=True)
        runs = json.loads(proc.stdout)
        out[quant] = {"tok_s": float(runs[0]["avg_ts"]), "stddev": float(runs[0]["stddev_ts"]),
                      "bytes": path.stat().st_size}
        say(f"llama.cpp {quant}: {out[quant]['tok_s']:.1f} tok/s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "quality")
    p.add_argument("--out", type=Path, default=REPO / "bench-out" / "smollm2")
    p.add_argument("--llama-cpp", type=Path, help="folder holding llama.cpp's llama-bench and llama-quantize")
    p.add_argument("--precisions", default="fp32,int8,int4",
                   help=f"comma-separated, of {', '.join(PRECISIONS)} (default fp32,int8,int4)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapter", type=Path, help="the SmolLM2 adapter to measure (default: the shipped one)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base = smollm2_checkpoint(log=say)
    precisions = [q.strip() for q in args.precisions.split(",")]
    unknown = [q for q in precisions if q not in PRECISIONS]
    if unknown:
        p.error(f"--precisions: {', '.join(unknown)} unknown; choose from {', '.join(PRECISIONS)}")
    systems = []
    for q in precisions:
        quantize, _, _, extra = PRECISIONS[q]
        art = demo_pair_artifact(args.cache_dir, quantize=quantize, extra=extra or None, adapter=args.adapter)
        systems += [Ours(art, mode, q, args.threads) for mode in MODES]
    for g in dict.fromkeys(PRECISIONS[q][2] for q in precisions):  # one genai build per its precision
        systems.append(Genai(ensure_ort_genai_model("smollm2", base, g, args.cache_dir), g, args.threads))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ids = list(tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"])
    # interleaved (benchmarks.lib.timing): two load orders (the second rotated by one), a warm-up round after
    # each load, then half the rounds each, every round starting one system later
    result = run_rounds([Contestant(s.key, run=lambda s=s: s.decode_tok_s(ids, args.new_tokens), load=s.load)
                         for s in systems], args.rounds // 2 or 1, load_orders=2, warmup=1, progress=say)
    rates = {k: [smp.value[0] for smp in v] for k, v in result.samples.items()}
    tokens = {k: v[0].value[1] for k, v in result.samples.items()}
    results = {"systems": {k: {"tok_s_median": statistics.median(v), "tok_s": v} for k, v in rates.items()},
               "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "threads": args.threads}
    for q in precisions:  # speculative decoding is exact: same tokens as base_shadow
        results["systems"][f"shadow-edge/speculative/{q}"]["identical_to_base_shadow"] = (
            tokens[f"shadow-edge/speculative/{q}"] == tokens[f"shadow-edge/base_shadow/{q}"])
    if args.llama_cpp:
        results["llama.cpp"] = llama_cpp(args.llama_cpp, smollm2_gguf(), args.out, args.new_tokens, args.rounds)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(render(results, precisions))
    return 0


def render(results: dict, precisions: list[str]) -> str:
    s = results["systems"]
    lines = ["| precision | shadow_only | base_shadow | speculative | genai plain | llama.cpp | base_shadow / genai | "
             "base_shadow / llama.cpp | speculative / base_shadow | shadow_only / base_shadow |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for q in precisions:
        so, bs, sp = (s[f"shadow-edge/{m}/{q}"]["tok_s_median"] for m in MODES)
        ga = s[f"ort-genai/plain/{PRECISIONS[q][2]}"]["tok_s_median"]
        lc = results.get("llama.cpp", {}).get(PRECISIONS[q][1], {}).get("tok_s")
        lines.append(f"| {q} | {so:.1f} | {bs:.1f} | {sp:.1f} | {ga:.1f} | "
                     + (f"{lc:.1f} ({PRECISIONS[q][1]})" if lc else "-") + f" | {bs / ga:.2f}x | "
                     + (f"{bs / lc:.2f}x" if lc else "-") + f" | {sp / bs:.2f}x | {so / bs:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
