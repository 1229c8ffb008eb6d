"""Where a speculative round's time goes: each part of a round against one base_shadow decode step, then whole runs.

    python -m benchmarks.profile.spec_round ART [--k 1] [--reps 30] [--runs 3] [--new-tokens 48] [--threads 2]

Part 1 (calls): after a chat prompt's prefill (batch 1), every call below runs from the same cache state (the
state is rewound after each, as a round's rollback does), interleaved in a shuffled order per repetition; medians
in ms, and each over one base_shadow step (the merged graph, greedy: `step`):
  step              base_shadow's decode step (merged graph, next_token only)
  draft split       one draft token as the split round makes it: shadow graph + draft head (reduced where the
                    artifact has one) + numpy argmax
  draft split full  the same over the full vocabulary head
  shadow alone      the shadow graph alone (the split round's (k+1)-th shadow step, no head)
  draft bound       one draft token through the draft's merged graph (step_draft.onnx or step_shadow_only.onnx)
  verify split      the split round's verify: backbone + prepacked head over k + 1 positions, logits to numpy
  verify bound      one call of step_base_shadow.onnx over k + 1 positions, next_token only
  rewind            the rollback (DecodeState.rewind with a keep mask)
Part 2 (runs): rt.generate over the same prompts, greedy, eos ignored, decode tok/s: base_shadow, speculative with
the split round (draft k + 1 shadow steps, verify through backbone + head) and with the bound round (this
checkout's default), at --k and adaptive; runs rotate their order per repetition; ratios are per repetition
(same prompt) then medians. Tokens must equal base_shadow's (checked). Human table to stderr, JSON to stdout.
Torch-free.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from contextlib import contextmanager

import numpy as np

from shadow_edge.io_spec import MODE_BASE_SHADOW
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.draft_vocab import draft_head
from shadow_edge.runtime.strategies import speculative as spec

PROMPTS = ['Define the word "lantern".', 'What is the meaning of the word "harbor"?',
           "Write a short poem about the sea.", "Explain how a bicycle works."]


def say(message: str) -> None:
    print(f"[spec_round] {message}", file=sys.stderr, flush=True)


@contextmanager
def split_rounds():
    """Speculative's split round (no bound verify, no merged draft): the path before the bound round."""
    bound = spec.Rounds.bound
    spec.Rounds.bound = lambda self, batch: False
    try:
        yield
    finally:
        spec.Rounds.bound = bound


def calls(rt: ShadowRuntime, k: int, reps: int) -> dict[str, list[float]]:
    ids = np.asarray([rt.codec.encode(PROMPTS[0])], np.int64)  # [1, t]
    head = draft_head(rt)
    full = draft_head(rt, full_vocab=True)
    rounds = spec.Rounds(rt, None, 1, ids.shape[1] + 64, head, split_verify=True)  # both verify passes
    full_rounds = spec.Rounds(rt, None, 1, ids.shape[1] + 64, full)
    full_rounds.state = rounds.state  # one state; the full-vocabulary drafters share its shadow cache
    full_rounds.drafter.caches = rounds.state.caches[:1]
    state, drafter = rounds.state, rounds.drafter
    state.fetch_logits = False
    first = state.prefill(ids, np.ones_like(ids))
    x = np.array([int(np.argmax(first[0]))], np.int64)
    L = state.length
    fed, hidden, _ = spec.draft(rounds, x, k, _Greedy(), (1.0, 0, 1.0))  # real drafts and their shadow states
    state.rewind(L)
    keep = np.ones((1, 1), np.int64)

    def step():
        state.step(x)
        state.rewind(L)

    def draft_with(d, r):
        def run():
            d.follow(state)
            d.step(x)
            if d.merged is None:  # the split draft: the head's logits to numpy, argmax, column -> id
                r.draft_head.tokens(np.argmax(d.step_logits[:, 0], axis=-1))
            else:
                _ = d.next_token
        return run

    def shadow_alone():
        drafter.follow(state)
        drafter.step(x, head=False)

    def verify_split():
        state.verify(fed, shadow_states=hidden)
        state.rewind(L)

    def verify_bound():
        state.verify_bound(fed)
        state.rewind(L)

    def rewind():
        state.length += k + 1
        state.rewind(L + 1, keep=keep)
        state.rewind(L)

    parts = {"step": step, "draft split": draft_with(drafter, rounds),
             "draft split full": draft_with(full_rounds.drafter, full_rounds), "shadow alone": shadow_alone,
             "verify split": verify_split, "verify bound": verify_bound, "rewind": rewind}
    if rounds.quick is not None:
        parts["draft bound"] = draft_with(rounds.quick, rounds)
    if full_rounds.quick is not None and head.ids is not None:
        full_rounds.quick.caches = rounds.state.caches[:1]
        parts["draft bound full"] = draft_with(full_rounds.quick, full_rounds)
    times: dict[str, list[float]] = {n: [] for n in parts}
    for fn in parts.values():  # warm-up: sessions, bindings
        fn(), fn()
    names = list(parts)
    for _ in range(reps):
        random.shuffle(names)
        for n in names:
            t0 = time.perf_counter()
            parts[n]()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return times


class _Greedy:
    greedy = True


def runs(rt: ShadowRuntime, k: int, reps: int, new_tokens: int, prompts: list[str]) -> dict:
    settings = [("base_shadow", None, False), (f"split k={k}", k, True), (f"bound k={k}", k, False),
                ("split adaptive", None, True), ("bound adaptive", None, False)]
    tok_s: dict[str, list[float]] = {s[0]: [] for s in settings}
    ratio: dict[str, list[float]] = {s[0]: [] for s in settings[1:]}
    accept: dict[str, list[float]] = {s[0]: [] for s in settings[1:]}
    same = True
    for rep in range(reps):
        order = settings[rep % len(settings):] + settings[:rep % len(settings)]
        for prompt in prompts:
            got, toks = {}, {}
            for name, kk, split in order:
                kw = {} if name == "base_shadow" else {"draft_tokens": kk}
                mode = "base_shadow" if name == "base_shadow" else "speculative"
                if split:
                    with split_rounds():
                        r = rt.generate(prompt, mode=mode, max_new_tokens=new_tokens, eos=[], chat=True, **kw)
                else:
                    r = rt.generate(prompt, mode=mode, max_new_tokens=new_tokens, eos=[], chat=True, **kw)
                got[name] = r.timings.tokens_per_s
                toks[name] = r.token_ids
                if r.speculative is not None and r.speculative.drafted:
                    accept[name].append(r.speculative.acceptance_rate)
            for name in got:
                tok_s[name].append(got[name])
                if name != "base_shadow":
                    ratio[name].append(got[name] / got["base_shadow"])
                    same &= toks[name] == toks["base_shadow"]
    return {"tok_s": {n: statistics.median(v) for n, v in tok_s.items()},
            "vs_base_shadow": {n: statistics.median(v) for n, v in ratio.items()},
            "acceptance": {n: statistics.median(v) if v else None for n, v in accept.items()},
            "identical": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--reps", type=int, default=30, help="repetitions of the calls (part 1)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of the generations (part 2; 0 skips it)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts (part 2)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=False)
    quick = spec.Rounds(rt, None, 1, 8).quick
    say(f"{args.artifact}: draft vocabulary {rt.manifest.draft_vocab.get('size', 'full')}, merged draft graph "
        f"{'none' if quick is None else quick.merged.name}")
    times = calls(rt, args.k, args.reps)
    med = {n: statistics.median(v) for n, v in times.items()}
    unit = med["step"]
    say(f"calls (k = {args.k}, medians of {args.reps}; 'x step' = over one base_shadow step {unit:.2f} ms):")
    for n, ms in med.items():
        say(f"  {n:<18} {ms:8.3f} ms  {ms / unit:6.3f} x step")
    out = {"artifact": str(args.artifact), "k": args.k, "calls_ms": med, "mode": MODE_BASE_SHADOW}
    if args.runs:
        r = runs(rt, args.k, args.runs, args.new_tokens, PROMPTS[:args.prompts])
        say(f"runs ({args.runs} x {args.prompts} prompts, {args.new_tokens} new tokens, greedy; identical to "
            f"base_shadow: {r['identical']}):")
        for n, v in r["tok_s"].items():
            extra = "" if n == "base_shadow" else \
                f"  {r['vs_base_shadow'][n]:.3f}x base_shadow, acceptance {r['acceptance'][n]}"
            say(f"  {n:<16} {v:7.1f} tok/s{extra}")
        out["runs"] = r
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
