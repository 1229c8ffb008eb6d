"""Where a decode step's time goes: onnxruntime's per-node profile of one mode, summed by op type.

    python benchmarks/profile_ops.py ART --mode base_shadow [--prompt-len 64] [--new-tokens 32] [--threads 2]

Runs one untimed generation (warm-up), then one profiled generation through the shadow-edge
runtime with onnxruntime profiling switched on for every graph of the mode, drops the
prefill run, and prints ms per decoded token by (graph, op type) with its share. Profiling
adds overhead of its own: read the shares, not the absolute times. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


import shadow_edge.runtime.session as session_mod
from shadow_edge.bench.runner import prompt_ids
from shadow_edge.runtime import ShadowRuntime


def profile(art: Path, mode: str, prompt_len: int, new_tokens: int, threads: int) -> list[tuple]:
    tmp = tempfile.mkdtemp(prefix="se-profile-")
    plain = session_mod.session_options

    def profiled(n):
        so = plain(n)
        so.enable_profiling = True
        so.profile_file_prefix = f"{tmp}/ort"
        return so

    session_mod.session_options = profiled
    try:
        rt = ShadowRuntime.load(art, threads=threads, verify=False, modes=(mode,))
    finally:
        session_mod.session_options = plain
    ids = prompt_ids(int(rt.manifest.model["vocab_size"]), 1, prompt_len, 0)[0].tolist()
    rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=())  # warm-up: profiled too, dropped below
    rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=())
    decode_steps = new_tokens - 1
    rows = []
    for name, graph in rt._graphs.items():
        events = json.loads(Path(graph.session.end_profiling()).read_text())
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
        # runs per generation: 1 prefill + decode_steps; keep the decode runs of the second generation
        per_gen = len(runs) // 2
        keep = runs[per_gen + 1:]
        by_op = defaultdict(float)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                if any(a <= e["ts"] <= b for a, b in keep):
                    by_op[e["args"].get("op_name", "?")] += e["dur"]
        run_ms = sum(b - a for a, b in keep) / 1e3 / max(decode_steps, 1)
        for op, us in by_op.items():
            rows.append((name, op, us / 1e3 / max(decode_steps, 1), run_ms))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--mode", default="base_shadow")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="rows to print (default 12)")
    args = p.parse_args(argv)
    rows = profile(args.artifact, args.mode, args.prompt_len, args.new_tokens, args.threads)
    total = sum(r[2] for r in rows)
    graphs = {r[0]: r[3] for r in rows}
    print(f"{args.mode}: decode step, ms per token by graph (model_run): "
          + ", ".join(f"{g} {ms:.2f}" for g, ms in graphs.items()) + f"; kernels total {total:.2f} ms")
    print(f"{'graph':<16}{'op type':<34}{'ms/token':>10}{'share':>8}")
    for g, op, ms, _ in sorted(rows, key=lambda r: -r[2])[:args.top]:
        print(f"{g:<16}{op:<34}{ms:>10.3f}{ms / total * 100:>7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
