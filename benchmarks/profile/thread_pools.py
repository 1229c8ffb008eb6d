"""Decode time of one mode under three onnxruntime threading set-ups (one process per set-up).

    python -m benchmarks.profile.thread_pools ART [--modes shadow_only,base_shadow] [--threads 2]

A mode runs 1-3 sessions one after another (shadow, backbone, head). With one intra-op pool
per session (onnxruntime's default; the runtime's before it moved to one global pool) the
idle pools' threads keep spinning while the next session runs, on the same cores. Set-ups:
  per-session   one intra-op pool per session (onnxruntime's default)
  no-spin       + session.intra_op.allow_spinning = 0
  global        one process-wide pool (ort.set_global_thread_pool_sizes + use_per_session_threads=False)
Each set-up runs in a fresh process (the global pool is process-wide); 1 warm-up and 3
timed generations of --new-tokens tokens; medians of the per-step decode times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, numpy as np, onnxruntime as ort
art, mode, setup, threads, prompt, new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if setup == "global":
    ort.set_global_thread_pool_sizes(threads, 1)
import shadow_edge.runtime.session as sm
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.bench.runner import prompt_ids
def opts(n, prepack=True):  # the runtime's options, with the thread set-up under test
    so = ort.SessionOptions()
    if setup == "global":
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads, so.inter_op_num_threads = n, 1
    if setup == "no-spin":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so
sm.session_options = opts
rt = ShadowRuntime.load(art, threads=threads, verify=False, modes=(mode,))
ids = prompt_ids(rt.vocab_size, 1, prompt, 0)[0].tolist()
rt.generate(ids, mode=mode, max_new_tokens=min(new, 8), eos=())
steps, prefill = [], []
for _ in range(3):
    t = rt.generate(ids, mode=mode, max_new_tokens=new, eos=()).timings
    steps += t.decode_ms_per_token; prefill.append(t.prefill_ms)
print(json.dumps({"decode_ms_p50": float(np.median(steps)), "prefill_ms": float(np.median(prefill))}))
"""
SETUPS = ("per-session", "no-spin", "global")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--modes", default="shadow_only,base_shadow")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    print(f"{'mode':<13}{'set-up':<13}{'decode ms/token p50':>20}{'tok/s':>8}{'prefill ms':>12}")
    for mode in args.modes.split(","):
        for setup in SETUPS:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(args.artifact), mode, setup, str(args.threads),
                                   str(args.prompt_len), str(args.new_tokens)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{mode:<13}{setup:<13} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{mode:<13}{setup:<13}{r['decode_ms_p50']:>20.1f}{1e3 / r['decode_ms_p50']:>8.1f}"
                  f"{r['prefill_ms']:>12.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
