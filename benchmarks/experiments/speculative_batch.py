"""Speculative decoding on a left-padded batch: row-by-row verification (GroupQueryAttention) vs one pass (Attention).

onnxruntime's CPU GroupQueryAttention refuses more than one new position with a past at
batch > 1, so on artifacts exported with it (the default) speculative verifies each row on
its own; the ONNX `Attention` fallback (`shadow-edge export --attention Attention`) takes the
whole batch in one verify pass. Per artifact, per repetition (interleaved): base_shadow and
speculative for each draft setting on the same batch of prompts (windows of a text, cut to
different lengths, left-padded), greedy, eos ignored. Reported: total new tokens / wall time
(prefill included), the speedup over base_shadow of the same repetition (medians), and
whether every row's tokens equal base_shadow's.

    python -m benchmarks.experiments.speculative_batch --artifact /tmp/pair_gqa --artifact /tmp/pair_attention \\
        --prompt-file shadow_edge/demo_model/heldout/fortunes.txt --batch 3 --new-tokens 64 --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.lib.timing import run_rounds
from shadow_edge.runtime import ShadowRuntime


def bench(art: Path, args) -> dict:
    rt = ShadowRuntime.load(art, threads=args.threads, verify=False)
    attention = rt.pipeline("base_shadow").backbone.entry.attention
    text = rt.codec.encode(args.prompt_file.read_text(encoding="utf-8"))
    settings = [None if s == "adaptive" else int(s) for s in args.draft_tokens.split(",")]
    label = lambda k: "adaptive" if k is None else f"k={k}"  # noqa: E731

    def contestant(mode: str, k=None):
        calls = []  # one call per round (warm-up included), so every contestant of a round gets the same prompts

        def run():
            start = len(calls) * args.batch * args.prompt_len
            calls.append(start)
            prompts = [text[start + i * args.prompt_len:start + (i + 1) * args.prompt_len - 7 * i]
                       for i in range(args.batch)]  # different lengths: left padding
            extra = {} if mode == "base_shadow" else {"draft_tokens": k}
            return rt.generate(prompts, mode=mode, max_new_tokens=args.new_tokens, eos=(), **extra)
        return run

    contestants = {"base_shadow": contestant("base_shadow"), **{label(k): contestant("speculative", k)
                                                               for k in settings}}
    result = run_rounds(contestants, reps=args.reps, warmup=1)  # interleaved, order rotated; round 0 warms up
    tok_s = lambda smp: sum(map(len, smp.value.token_ids)) / (smp.ms / 1e3)  # noqa: E731
    base = result.samples["base_shadow"]
    runs: dict[str, list] = {}
    for name in map(label, settings):
        runs[name] = [{"speedup": b.ms / s.ms, "identical": s.value.token_ids == b.value.token_ids,
                       "acceptance": s.value.speculative.acceptance_rate, "tok_s": tok_s(s), "base_tok_s": tok_s(b)}
                      for b, s in zip(base, result.samples[name])]
    return {"artifact": str(art), "attention": attention, "settings": {
        name: {"speedup": statistics.median(r["speedup"] for r in rs),
               "tok_s": statistics.median(r["tok_s"] for r in rs),
               "base_tok_s": statistics.median(r["base_tok_s"] for r in rs),
               "acceptance": statistics.median(r["acceptance"] or 0.0 for r in rs),
               "identical": all(r["identical"] for r in rs)} for name, rs in runs.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, action="append", required=True, help="artifact directory (repeatable)")
    p.add_argument("--prompt-file", type=Path, required=True, help="text whose windows are the prompts")
    p.add_argument("--draft-tokens", default="1,2,adaptive", help="settings (default %(default)s)")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    results = [bench(a, args) for a in args.artifact]
    print(f"| artifact (attention) | setting | base_shadow tok/s | speculative tok/s | vs base_shadow | acceptance "
          f"| identical |\n|---|---|---|---|---|---|---|")
    for r in results:
        for name, s in r["settings"].items():
            print(f"| {Path(r['artifact']).name} ({r['attention']}) | {name} | {s['base_tok_s']:.0f} | "
                  f"{s['tok_s']:.0f} | {s['speedup']:.2f}x | {s['acceptance']:.2f} | "
                  f"{'yes' if s['identical'] else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
