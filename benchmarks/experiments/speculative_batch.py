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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from shadow_edge.runtime import ShadowRuntime


def bench(art: Path, args) -> dict:
    rt = ShadowRuntime.load(art, threads=args.threads, verify=False)
    attention = rt.pipeline("base_shadow").backbone.entry.attention
    text = rt.codec.encode(args.prompt_file.read_text(encoding="utf-8"))
    settings = [None if s == "adaptive" else int(s) for s in args.draft_tokens.split(",")]
    label = lambda k: "adaptive" if k is None else f"k={k}"  # noqa: E731
    runs: dict[str, list] = {label(k): [] for k in settings}
    for rep in range(args.reps + 1):  # repetition 0 warms up
        start = rep * args.batch * args.prompt_len
        prompts = [text[start + i * args.prompt_len:start + (i + 1) * args.prompt_len - 7 * i]
                   for i in range(args.batch)]  # different lengths: left padding
        t0 = time.perf_counter()
        base = rt.generate(prompts, mode="base_shadow", max_new_tokens=args.new_tokens, eos=())
        base_s = time.perf_counter() - t0
        for k in settings:
            t0 = time.perf_counter()
            out = rt.generate(prompts, mode="speculative", draft_tokens=k, max_new_tokens=args.new_tokens, eos=())
            spec_s = time.perf_counter() - t0
            if rep:
                runs[label(k)].append({"speedup": base_s / spec_s, "identical": out.token_ids == base.token_ids,
                                       "acceptance": out.speculative.acceptance_rate,
                                       "tok_s": sum(map(len, out.token_ids)) / spec_s,
                                       "base_tok_s": sum(map(len, base.token_ids)) / base_s})
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
