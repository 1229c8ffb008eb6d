"""Split vs merged decode steps: base_shadow through its split graphs (3 sessions per token) or its merged step graph
(1 session, greedy ArgMax inside), against onnxruntime-genai's plain backbone, in one process.

    python -m benchmarks.experiments.decode_step ART [--genai DIR --precision int4] [--rounds 8] [--new-tokens 64]

ART: an artifact whose manifest has `interop.step` (exports since the merged step graph). Systems, greedy, batch 1,
2 threads: shadow-edge `base_shadow` loaded with decode_step="split" and with "auto" (merged), and, with --genai, the
onnxruntime-genai model builder's plain model of the same base (benchmarks.lib.artifacts.ensure_ort_genai_model).
Decode tok/s = (new tokens - 1) / (wall time - time to the first token); rounds through benchmarks.lib.timing
(two load orders, rotated rounds); medians, and ratios paired by round. The merged and split tokens must be identical. Torch-free.
On a shared machine give the process priority: `echo -15 > /proc/$PID/autogroup`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.lib.timing import Contestant, run_rounds, summarize_rounds
from shadow_edge.runtime import ShadowRuntime

PROMPT = 'Define the word "lantern".'


class Ours:
    def __init__(self, art: Path, step: str, mode: str, threads: int):
        self.art, self.step, self.mode, self.threads = art, step, mode, threads
        self.key = f"shadow-edge/{mode}/{'merged' if step == 'auto' else step}"

    def load(self) -> None:
        self.rt = ShadowRuntime.load(self.art, threads=self.threads, verify=False, decode_step=self.step)
        if self.step == "auto" and self.rt.step_graph(self.mode) is None:
            raise SystemExit(f"error: {self.art} has no merged step graph for {self.mode}; re-export it")

    def decode_tok_s(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        out = self.rt.generate(ids, mode=self.mode, max_new_tokens=n, eos=())
        wall = time.perf_counter() - t0
        return (n - 1) / (wall - out.timings.prefill_ms / 1e3), list(out.token_ids)


def prompt(rt: ShadowRuntime) -> list[int]:
    try:
        return rt.encode(rt.chat_text(PROMPT)).input_ids[0].tolist()
    except Exception:  # no tokenizer or chat template (presets): fixed ids
        return list(range(3, 27))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--genai", type=Path, help="onnxruntime-genai model folder of the same base (plain backbone)")
    p.add_argument("--precision", default="fp32", help="label of the genai model's precision (fp32, int8, int4)")
    p.add_argument("--modes", default="base_shadow", help="modes to time (default %(default)s)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    systems: list = [Ours(args.artifact, step, m, args.threads) for m in args.modes.split(",")
                     for step in ("split", "auto")]
    if args.genai:
        from benchmarks.suites.smollm2_speed import Genai

        systems.append(Genai(args.genai, args.precision, args.threads))
    probe = ShadowRuntime.load(args.artifact, threads=args.threads, verify=False, modes=())
    ids = prompt(probe)
    # interleaved (benchmarks.lib.timing): two load orders, a warm-up round after each load, every round rotated
    result = run_rounds([Contestant(s.key, run=lambda s=s: s.decode_tok_s(ids, args.new_tokens), load=s.load)
                         for s in systems], args.rounds // 2 or 1, load_orders=2, warmup=1)
    table = summarize_rounds(result, lambda smp: smp.value[0])  # ratios paired by round, against the first (split)
    tokens = {k: v[0].value[1] for k, v in result.samples.items()}
    genai = next((k for k in table if k.startswith("ort-genai")), None)
    genai_ratio = summarize_rounds(result, lambda smp: smp.value[0], first=genai) if genai else {}
    print(f"| {args.artifact.name} {args.precision} | decode tok/s (median of {args.rounds}) | vs split (paired) | "
          "vs genai (paired) |")
    print("|---|---:|---:|---:|")
    for key, row in table.items():
        print(f"| {key} | {row['median']:.1f} | {row['ratio']['median']:.2f}x | "
              + (f"{genai_ratio[key]['ratio']['median']:.2f}x" if genai else "-") + " |")
    for m in args.modes.split(","):
        same = tokens[f"shadow-edge/{m}/merged"] == tokens[f"shadow-edge/{m}/split"]
        print(f"{m}: merged tokens {'==' if same else '!='} split tokens", file=sys.stderr)
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
