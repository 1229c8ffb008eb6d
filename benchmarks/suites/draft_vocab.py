"""Reduced draft vocabulary (export --draft-vocab N, FR-Spec): acceptance lost against draft cost saved, per N.

    python -m benchmarks.suites.draft_vocab --artifact ART_2048 --artifact ART_8192 ... [--k 1 --k adaptive]
        [--new-tokens 64] [--reps 3] [--threads 2] [--stop-at-eos] [--heldout 24] [--genai GENAI_DIR]
        [--out results.json]

Every artifact is the same pair exported with a different --draft-vocab N (their other graphs are identical). In one
process, per repetition and chat prompt (in-domain definitions whose words are not in the demo pair's held-out file,
and off-domain requests; --heldout N: also the demo pair's last N held-out questions, the quality suite's generation
prompts), greedy, eos ignored (every run decodes --new-tokens, past the answer's end; --stop-at-eos: the answers
only, as a chat ends them): base_shadow, then speculative over the full vocabulary
(`full_draft_vocab`, on the first artifact), then speculative with each artifact's reduced head, for each --k; the
artifact order rotates per repetition. Reported (medians over repetitions and prompts): decode tok/s over base_shadow's
of the same repetition and prompt, acceptance rate, whether the tokens equal base_shadow's, and the cost of a round:
draft ms per drafted token, verify ms per pass, the rest (Python: acceptance, masks, feeds). Also the draft head alone:
one position through the full head vs the reduced one (median µs over 200 calls, interleaved).
--genai DIR (repeatable): also onnxruntime-genai's plain model in DIR (its model builder's folder), greedy, on the
same prompt in the same repetition, decoding as many tokens as base_shadow did (its decode speed does not depend on
the tokens); every row then also gives speculative's and base_shadow's decode tok/s over the plain runtime's.
Human table on stderr, JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.entry import run
from benchmarks.lib.systems import OrtGenai
from benchmarks.suites.quality import prompts as heldout_questions
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.draft_vocab import draft_head
from shadow_edge.runtime.session import ov

PROMPTS = {  # in-domain: the demo adapter's task on words absent from its held-out file; off-domain: anything else
    "in": ['Define the word "lantern".', 'What is the meaning of the word "harbor"?',
           'What is the meaning of the word "orchard"?', 'Define the word "glacier".'],
    "off": ["Write a short poem about the sea.", "Explain how a bicycle works."],
}


def say(message: str) -> None:
    print(f"[draft-vocab] {message}", file=sys.stderr, flush=True)


def _median(values: list) -> float | None:
    """The median of the values that exist (a run too short to draft has no acceptance), None when none does."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def decode_tok_s(result) -> float:
    t = result.timings.decode_ms_per_token
    return 1e3 * len(t) / sum(t)


def genai_tok_s(g: OrtGenai, ids: list[int], n: int) -> float | None:
    """The plain runtime's decode tok/s over n new tokens after ids (None below 2: no decode step to time)."""
    if n < 2:
        return None
    timing, _ = g.generate(np.asarray([ids], np.int64), n)
    return 1e3 * (n - 1) / (timing.wall_ms - timing.ttft_ms)


def head_us(rt: ShadowRuntime, full: bool, calls: int = 200) -> list[float]:
    head = draft_head(rt, full_vocab=full).session
    d = int(rt.manifest.model["hidden_size"])
    x = {head.input_names[0]: ov(np.random.default_rng(0).standard_normal((1, 1, d)).astype(np.float32))}
    for _ in range(10):
        head.run(x)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        head.run(x)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, action="append", required=True)
    p.add_argument("--k", action="append", help="draft tokens per round: an integer or `adaptive` (default 1, adaptive)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stop-at-eos", action="store_true",
                   help="stop at the chat's end token, as a chat does (default: ignore it and decode --new-tokens)")
    p.add_argument("--heldout", type=int, default=0, metavar="N",
                   help="also the demo pair's last N held-out questions (the quality suite's generation prompts, the "
                        "prompts of its acceptance figure), reported as the domain `heldout`")
    p.add_argument("--genai", type=Path, action="append", default=[], metavar="DIR",
                   help="also onnxruntime-genai's plain model in DIR (a model builder output folder); repeatable")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.heldout < 0:
        p.error(f"--heldout {args.heldout}: expected a number of held-out questions >= 0")
    for i, d in enumerate(args.genai):
        if not (d / "genai_config.json").is_file():
            p.error(f"--genai {d}: expected an onnxruntime-genai model folder (with genai_config.json); build one "
                    "with `python -m onnxruntime_genai.models.builder -i BASE -o DIR -p int4 -e cpu`")
        if d.name in [e.name for e in args.genai[:i]]:  # the folder's name keys its columns
            p.error(f"--genai {d}: another --genai folder is also named {d.name!r}; give each model its own name")
    domains = {**PROMPTS, **({"heldout": [q[0]["content"] for q in heldout_questions(args.heldout)]}
                             if args.heldout > 0 else {})}
    eos = None if args.stop_at_eos else ()  # None: the artifact's own end tokens
    ks = [None if k == "adaptive" else int(k) for k in (args.k or ["1", "adaptive"])]
    label = lambda k: "adaptive" if k is None else f"k={k}"  # noqa: E731
    rts = {}
    for art in args.artifact:
        rt = ShadowRuntime.load(art, threads=args.threads, verify=False)
        n = rt.manifest.draft_vocab.get("size")
        if n is None:
            raise SystemExit(f"error: {art} has no draft vocabulary; export it with --draft-vocab N")
        if f"N={n}" in rts:  # the artifacts are one pair's exports at several N (the first's full head is the baseline)
            raise SystemExit(f"error: {art} has the draft vocabulary size {n} of an earlier --artifact; pass one "
                             "artifact per size (compare two adapters with one run each)")
        rts[f"N={n}"] = rt
        say(f"loaded {art} (N={n}, coverage {rt.manifest.draft_vocab.get('coverage')})")
    first = next(iter(rts.values()))
    vocab = first.vocab_size
    prompts = [(dom, first.codec.encode(first.chat_text([{"role": "user", "content": text}])))
               for dom, texts in domains.items() for text in texts]
    genai = {}
    for d in args.genai:
        g = genai[f"genai {d.name}"] = OrtGenai(d, d.name, args.threads)
        g.load()
        g.generate(np.asarray([prompts[0][1]], np.int64), 4)  # warm-up
    for rt in rts.values():  # warm-up
        rt.generate(prompts[0][1], mode="speculative", max_new_tokens=4, eos=(), draft_tokens=1)
        rt.generate(prompts[0][1], mode="base_shadow", max_new_tokens=4, eos=())
    heads = {f"N={vocab} (full)": [], **{name: [] for name in rts}}
    for _ in range(3):  # head alone, interleaved
        heads[f"N={vocab} (full)"] += head_us(first, True)
        for name, rt in rts.items():
            heads[name] += head_us(rt, False)
    for name, us in heads.items():
        say(f"draft head alone, {name}: {statistics.median(us):.0f} us per position")
    runs: list[dict] = []
    setups = [("full", first, True)] + [(name, rt, False) for name, rt in rts.items()]
    for rep in range(args.reps):
        order = setups[rep % len(setups):] + setups[:rep % len(setups)]
        for dom, ids in prompts:
            base = first.generate(ids, mode="base_shadow", max_new_tokens=args.new_tokens, eos=eos)
            base_tok_s = decode_tok_s(base)
            plain = {name: genai_tok_s(g, ids, len(base.token_ids)) for name, g in genai.items()}
            for name, rt, full in order:
                for k in ks:
                    out = rt.generate(ids, mode="speculative", max_new_tokens=args.new_tokens, eos=eos, draft_tokens=k,
                                      full_draft_vocab=full)
                    s, t = out.speculative, out.timings
                    ms = sum(t.decode_ms_per_token)
                    runs.append({"draft_vocab": name, "k": label(k), "domain": dom, "rep": rep,
                                 "speedup": decode_tok_s(out) / base_tok_s, "tok_s": decode_tok_s(out),
                                 "base_tok_s": base_tok_s, "new_tokens": len(base.token_ids),
                                 **{f"{who} over {name}": tok_s / v for name, v in plain.items() if v is not None
                                    for who, tok_s in (("speculative", decode_tok_s(out)), ("base_shadow", base_tok_s))},
                                 "identical": out.token_ids == base.token_ids,
                                 "acceptance": s.acceptance_rate, "rounds": s.rounds, "drafted": s.drafted,
                                 "draft_ms_per_token": s.draft_ms / max(s.drafted + s.rounds, 1),
                                 "verify_ms_per_round": s.verify_ms / max(s.rounds, 1),
                                 "other_ms_per_round": (ms - s.draft_ms - s.verify_ms) / max(s.rounds, 1),
                                 "mean_k": float(np.mean(s.draft_lengths)) if s.draft_lengths else 0.0})
        say(f"rep {rep + 1}/{args.reps} done")
    over = [f"{who} over {name}" for name in genai for who in ("speculative", "base_shadow")]  # tok/s ratios
    rows = []
    for name, _, _ in setups:
        for k in ks:
            for dom in ("all", *domains):
                rs = [r for r in runs if r["draft_vocab"] == name and r["k"] == label(k) and dom in ("all", r["domain"])]
                med = {key: _median([r.get(key) for r in rs]) for key in
                       ("speedup", "tok_s", "base_tok_s", "acceptance", "draft_ms_per_token", "verify_ms_per_round",
                        "other_ms_per_round", "mean_k", *over)}
                rows.append({"draft_vocab": name, "k": label(k), "domain": dom,
                             "identical": all(r["identical"] for r in rs), **med})
    ratio_heads = "".join(o.replace(" over ", " / ") + " | " for o in over)
    print(f"| draft vocab | k | prompts | speculative / base_shadow | {ratio_heads}tok/s | acceptance | identical "
          "| draft ms/step | verify ms/round | other ms/round | mean k |", file=sys.stderr)
    print("|---" * (11 + len(over)) + "|", file=sys.stderr)
    for r in rows:
        acceptance = "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        ratios = "".join("- | " if r[o] is None else f"{r[o]:.3f}x | " for o in over)
        print(f"| {r['draft_vocab']} | {r['k']} | {r['domain']} | {r['speedup']:.3f}x | {ratios}{r['tok_s']:.1f} | "
              f"{acceptance} | {r['identical']} | {r['draft_ms_per_token']:.2f} | "
              f"{r['verify_ms_per_round']:.2f} | {r['other_ms_per_round']:.2f} | {r['mean_k']:.2f} |", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"stop_at_eos": args.stop_at_eos,
                                        "heads_us": {k: statistics.median(v) for k, v in heads.items()},
                                        "rows": rows, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    run(main)
