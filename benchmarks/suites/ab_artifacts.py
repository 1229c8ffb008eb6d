"""Before/after on a shared machine: several artifacts' decode speed per mode, run interleaved in one process.

    python -m benchmarks.suites.ab_artifacts OLD_ART NEW_ART [--modes shadow_only,base_shadow,base_plain] \\
        [--rounds 7] [--new-tokens 64] [--prompt-len 64] [--threads 2]

Every round generates once per (artifact, mode), round-robin, so machine noise hits all of them
alike, and each round starts at the next artifact; one untimed round first. Caveat: the artifact
loaded first in the process measured up to ~10% slower at W1 in every order tried (the same artifact
0.89-0.91x the others' speed when loaded first, 1.01-1.11x when loaded last): confirm a difference under ~15% across fresh processes
(`shadow-edge bench ART` per artifact, alternating). Prints per mode and artifact the median over rounds of each run's
p50 decode ms/token, the speed-up against the first artifact, the median prefill (TTFT) and whether
the greedy tokens equal the first artifact's. Torch-free.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from shadow_edge.bench.runner import prompt_ids
from shadow_edge.runtime import ShadowRuntime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", type=Path, nargs="+")
    p.add_argument("--modes", default="shadow_only,base_shadow,base_plain", help="modes (default %(default)s)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rts = [ShadowRuntime.load(a, threads=args.threads, verify=False, modes=tuple(modes)) for a in args.artifacts]
    ids = prompt_ids(rts[0].vocab_size, 1, args.prompt_len, 0)[0].tolist()
    step: dict[tuple, list[float]] = {}
    ttft: dict[tuple, list[float]] = {}
    tokens: dict[tuple, list[int]] = {}
    for r in range(args.rounds + 1):
        start = r % len(rts)  # each round starts at the next artifact: runs late in a round were measured faster
        for a in list(range(start, len(rts))) + list(range(start)):
            rt = rts[a]
            for m in modes:
                out = rt.generate(ids, mode=m, max_new_tokens=args.new_tokens, eos=())
                tokens[(a, m)] = list(out.token_ids)
                if r:  # round 0 is the warm-up
                    step.setdefault((a, m), []).append(statistics.median(out.timings.decode_ms_per_token))
                    ttft.setdefault((a, m), []).append(out.timings.prefill_ms)
    print(f"{'mode':<13}{'artifact':<48}{'ms/token':>9}{'tok/s':>8}{'x first':>8}{'TTFT ms':>9}  tokens = first")
    for m in modes:
        first = statistics.median(step[(0, m)])
        for a, art in enumerate(args.artifacts):
            ms = statistics.median(step[(a, m)])
            print(f"{m:<13}{str(art):<48}{ms:>9.2f}{1e3 / ms:>8.1f}{first / ms:>8.2f}"
                  f"{statistics.median(ttft[(a, m)]):>9.1f}  {tokens[(a, m)] == tokens[(0, m)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
