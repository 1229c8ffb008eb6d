"""Speculative decoding vs base_shadow, side by side in one process: tokens/s, acceptance, cost per round.

Per artifact (e.g. fp32 and int4): one runtime; per repetition base_shadow and `speculative`
for every draft setting, interleaved, their order rotated each repetition (benchmarks.lib.timing);
greedy, eos ignored, random prompt ids. Reported per setting (medians over repetitions):
decode tokens/s (tokens after the first / their time, prefill excluded), the speedup over
base_shadow of the same repetition, acceptance rate, mean accepted length, whether the
tokens equal base_shadow's, and the cost of a round: draft ms per drafted token (shadow
step + shadow head), verify ms per pass (backbone + lm_head over k + 1 positions) and the
rest (acceptance, masks, the extra shadow step of the last draft token is in `draft`).

Break-even acceptance for k: the per-token acceptance rate a at which a round's expected
tokens (1 - a^(k+1)) / (1 - a) take as long as base_shadow needs for them, i.e.
E(a) * base_ms_per_token = round_ms(k); above it speculative is faster. `projected` gives
the speedup the measured costs imply at a few acceptance rates (what a trained pair with
that acceptance would see; a projection, not a measurement).

    python -m benchmarks.suites.speculative --artifact /work/cache/artifacts/qwen3-0.6b-shape \\
        --artifact /work/cache/artifacts/qwen3-0.6b-shape-int4 --prompt-len 64 --new-tokens 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

from benchmarks.lib.timing import run_rounds
from shadow_edge.bench.machine import machine_info, versions
from shadow_edge.bench.runner import artifact_info, prompt_ids
from shadow_edge.manifest import read_manifest

PROJECTED_RATES = (0.5, 0.7, 0.8, 0.9)


def say(message: str) -> None:
    print(f"[speculative] {message}", file=sys.stderr, flush=True)


def draft_setting(text: str) -> int | None:
    return None if text == "adaptive" else int(text)


def expected_tokens(rate: float, k: int) -> float:
    return float(k + 1) if rate >= 1 else (1 - rate ** (k + 1)) / (1 - rate)


def break_even(round_ms: float, base_ms: float, k: int) -> float | None:
    """Smallest acceptance rate a with E(a) * base_ms >= round_ms (bisection); None if even a = 1 is too slow."""
    if expected_tokens(1.0, k) * base_ms < round_ms:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) * base_ms < round_ms else (lo, mid)
    return hi


def decode_figures(result) -> tuple[float, int]:
    """(decode ms, decode tokens) of one result: every token after the first."""
    t = result.timings
    return sum(t.decode_ms_per_token), len(t.decode_ms_per_token)


def bench_artifact(art: Path, settings: list[int | None], args) -> dict:
    from shadow_edge.runtime import ShadowRuntime

    manifest = read_manifest(art)
    say(f"{art}: loading ({manifest.quantization})")
    rt = ShadowRuntime.load(art, threads=args.threads, verify=False, modes=("speculative",))
    if args.prompt_file:  # rep r uses the r-th window of prompt_len tokens of the file
        text_ids = rt.codec.encode(args.prompt_file.read_text(encoding="utf-8"))
        if len(text_ids) < args.reps * args.prompt_len:
            raise SystemExit(f"error: {args.prompt_file} has {len(text_ids)} tokens; need reps x prompt-len")
        prompts = [text_ids[r * args.prompt_len:(r + 1) * args.prompt_len] for r in range(args.reps)]
    else:
        prompts = [prompt_ids(int(manifest.model["vocab_size"]), 1, args.prompt_len, args.seed)[0].tolist()] * args.reps
    ids = prompts[0]
    label = lambda k: "adaptive" if k is None else f"k={k}"  # noqa: E731
    kw = dict(max_new_tokens=args.new_tokens, eos=())
    for k in [None] + settings:  # warm-up (short)
        rt.generate(ids, mode="base_shadow" if k is None else "speculative", max_new_tokens=4, eos=(),
                    **({} if k is None else {"draft_tokens": k}))

    def contestant(k, mode="speculative"):  # round r generates from prompts[r]: its call count is the round
        calls = []

        def run():
            calls.append(None)
            return rt.generate(prompts[len(calls) - 1], mode=mode, **kw, **({} if k is None else {"draft_tokens": k}))
        return run

    # base_shadow and every setting interleaved, their order rotated each round (benchmarks.lib.timing)
    contestants = {"base_shadow": contestant(None, "base_shadow")} | {label(k): contestant(k) for k in settings}
    result = run_rounds(contestants, args.reps, warmup=0, progress=say)
    runs = {"base_shadow": []} | {label(k): [] for k in settings}
    for rep, smp in enumerate(result.samples["base_shadow"]):
        base = smp.value
        ms, n = decode_figures(base)
        runs["base_shadow"].append({"tok_s": 1e3 * n / ms, "ms_per_token": ms / n, "tokens": base.token_ids})
        for k in settings:
            out = result.samples[label(k)][rep].value
            ms, n = decode_figures(out)
            s = out.speculative
            runs[label(k)].append({
                "tok_s": 1e3 * n / ms, "speedup": (1e3 * n / ms) / runs["base_shadow"][-1]["tok_s"],
                "identical": out.token_ids == base.token_ids, "acceptance_rate": s.acceptance_rate,
                "mean_accepted_length": s.mean_accepted_length, "rounds": s.rounds, "drafted": s.drafted,
                "accepted": s.accepted, "round_ms": ms / s.rounds if s.rounds else None,
                "draft_ms_per_token": s.draft_ms / s.drafted if s.drafted else None,
                "verify_ms_per_round": s.verify_ms / s.rounds if s.rounds else None,
                "other_ms_per_round": (ms - s.draft_ms - s.verify_ms) / s.rounds if s.rounds else None,
                "mean_k": float(np.mean(s.draft_lengths)) if s.draft_lengths else 0.0})
            r = runs[label(k)][-1]
            say(f"rep {rep + 1}/{args.reps}: {label(k)} {r['tok_s']:.2f} tok/s ({r['speedup']:.2f}x), acceptance "
                f"{_fmt(r['acceptance_rate'], '.2f')}, identical {r['identical']}")
    med = lambda rows, key: statistics.median(r[key] for r in rows) if all(r[key] is not None for r in rows) \
        else None  # noqa: E731
    base_ms = med(runs["base_shadow"], "ms_per_token")
    rows = []
    for k in settings:
        rs = runs[label(k)]
        row = {"setting": label(k), "draft_tokens": k, "mean_k": med(rs, "mean_k"), "tok_s": med(rs, "tok_s"),
               "speedup": med(rs, "speedup"), "identical": all(r["identical"] for r in rs)}
        for key in ("acceptance_rate", "mean_accepted_length", "round_ms", "draft_ms_per_token",
                    "verify_ms_per_round", "other_ms_per_round"):
            row[key] = med(rs, key)
        if k is not None and row["round_ms"] is not None:
            row["break_even_acceptance"] = break_even(row["round_ms"], base_ms, k)
            row["projected_speedup"] = {str(a): expected_tokens(a, k) * base_ms / row["round_ms"]
                                        for a in PROJECTED_RATES}
        rows.append(row)
    return {"artifact": artifact_info(art, manifest), "base_shadow": {
        "tok_s": med(runs["base_shadow"], "tok_s"), "ms_per_token": base_ms}, "settings": rows, "runs": runs}


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    lines = []
    for a in result["artifacts"]:
        art, base = a["artifact"], a["base_shadow"]
        lines.append(f"\n{Path(art['path']).name} ({art['dtype']}, quantization {art['quantization']}): base_shadow "
                     f"{base['tok_s']:.2f} tok/s ({base['ms_per_token']:.1f} ms/token)\n")
        lines.append("| setting | tok/s | speedup | identical | acceptance | accepted/round | draft ms/token | "
                     "verify ms/round | other ms/round | break-even acceptance | projected at 0.7 / 0.9 |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in a["settings"]:
            proj = r.get("projected_speedup") or {}
            lines.append(
                f"| {r['setting']} | {_fmt(r['tok_s'], '.2f')} | {_fmt(r['speedup'], '.2f')}x | "
                f"{'yes' if r['identical'] else 'NO'} | {_fmt(r['acceptance_rate'], '.3f')} | "
                f"{_fmt(r['mean_accepted_length'], '.2f')} | {_fmt(r['draft_ms_per_token'], '.1f')} | "
                f"{_fmt(r['verify_ms_per_round'], '.1f')} | {_fmt(r['other_ms_per_round'], '.1f')} | "
                f"{_fmt(r.get('break_even_acceptance'), '.2f') if 'break_even_acceptance' in r else '-'} | "
                f"{_fmt(proj.get('0.7'), '.2f')} / {_fmt(proj.get('0.9'), '.2f')} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result["artifacts"]), figsize=(6 * len(result["artifacts"]), 4.5),
                             squeeze=False)
    for ax, a in zip(axes[0], result["artifacts"]):
        fixed = [r for r in a["settings"] if r["draft_tokens"] is not None]
        ks = [r["draft_tokens"] for r in fixed]
        ax.plot(ks, [r["speedup"] for r in fixed], "o-", color="#c44e52",
                label=f"measured (acceptance {', '.join(_fmt(r['acceptance_rate'], '.2f') for r in fixed)})")
        for rate, style in zip(PROJECTED_RATES, (":", "-.", "--", "-")):
            ax.plot(ks, [r["projected_speedup"][str(rate)] for r in fixed], style, color="#4878a8",
                    label=f"projected at acceptance {rate}")
        adaptive = [r for r in a["settings"] if r["draft_tokens"] is None]
        if adaptive:
            ax.axhline(adaptive[0]["speedup"], color="#6a9f58", linestyle="--", label="adaptive (measured)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("draft tokens k")
        ax.set_ylabel("decode tokens/s vs base_shadow")
        ax.set_title(f"{Path(a['artifact']['path']).name}: base_shadow {a['base_shadow']['tok_s']:.1f} tok/s",
                     fontsize=10)
        ax.legend(fontsize=7)
    w = result["workload"]
    fig.suptitle(f"speculative vs base_shadow, prompt {w['prompt_len']}, {w['new_tokens']} new tokens, "
                 f"{result['threads']} threads (shared, noisy machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, action="append", required=True, help="artifact directory (repeatable)")
    p.add_argument("--draft-tokens", default="1,2,4,8,adaptive", help="settings (default %(default)s)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids (without --prompt-file)")
    p.add_argument("--prompt-file", type=Path, help="text whose tokens are the prompts (rep r: the r-th window)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speculative")
    args = p.parse_args(argv)
    settings = [draft_setting(t.strip()) for t in args.draft_tokens.split(",") if t.strip()]
    started = time.perf_counter()
    result = {"schema": "shadow-edge-speculative/1", "created_utc": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "command": "python -m benchmarks.suites.speculative " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(), "versions": versions(), "threads": args.threads,
        "workload": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps,
                     "greedy": True, "seed": args.seed, "batch": 1,
                     "prompts": str(args.prompt_file) if args.prompt_file else "random ids"},
        "artifacts": [bench_artifact(a, settings, args) for a in args.artifact]}
    result["elapsed_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "summary.md").write_text(table(result) + "\n")
    plot(result, args.out / "speedup.png")
    print(table(result))
    say(f"wrote {args.out}/results.json, summary.md, speedup.png in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
