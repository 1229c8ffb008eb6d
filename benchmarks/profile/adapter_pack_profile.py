"""Where an adapter pack's decode cost goes: the shadow graph's decode step, full artifact vs base artifact + pack.

    python -m benchmarks.profile.adapter_pack_profile --out /work/cache/packs-small --steps 400
    python -m benchmarks.profile.adapter_pack_profile --out /work/cache/packs-small --ort-profile 10

`--out` is a directory written by `benchmarks/suites/adapter_packs.py` (full/, base_art/, pack0/).
Default: one process, threads 1, the shadow graph's decode step alone, variants interleaved
step by step: the full artifact (adapter weights are constant initializers, which onnxruntime
prepacks), the base artifact with its own adapter (its twin graph, slots constant), the base
with the pack (the pack's own session: its weights given with SessionOptions.add_initializer,
prepacked; runtime/pack_sessions.py), the same session with prepacking off, and the old
mechanism: the base's shadow graph (slots overridable) fed the pack's weights per run, which
onnxruntime does not prepack.
`--ort-profile N`: each variant (full / base / pack / fed) in its own process under onnxruntime's
profiler for N shadow_only generations of 16 tokens; prints the median kernel time per step of
each MatMul of the shadow graph.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.lib.timing import run_rounds

PROMPT = [[5 + i for i in range(16)]]

PROFILE_CHILD = """
import sys
import warnings
import shadow_edge.runtime.session as S
root, variant, n, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
plain = S.session_options
def profiled(threads, prepack=True):
    so = plain(threads, prepack)
    so.enable_profiling, so.profile_file_prefix = True, prefix
    return so
S.session_options = profiled
from shadow_edge.runtime import ShadowRuntime
art = f"{root}/full" if variant == "full" else f"{root}/base_art"
rt = ShadowRuntime.load(art, threads=1, modes=("shadow_only",))
if variant == "fed":  # the fallback for base artifacts without the twin graph: the shared session, fed
    warnings.simplefilter("ignore")  # its "export the base again" warning
    rt.twins = {}
    rt._graphs.clear()
    rt._pipes.clear()
if variant != "full":
    rt.load_adapter("a0", f"{root}/pack0")
for _ in range(n):
    rt.generate(%r, mode="shadow_only", adapter=None if variant in ("full", "base") else "a0", max_new_tokens=16)
sessions = list(rt._graphs.values()) + (list(rt.adapters.get("a0").sessions.values()) if variant != "full" else [])
for g in sessions:
    g.session.end_profiling()
""" % (PROMPT,)


def ort_profile(root: Path, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("full", "base", "pack", "fed"):
            prefix = f"{tmp}/{variant}"
            subprocess.run([sys.executable, "-c", PROFILE_CHILD, str(root), variant, str(n), prefix], check=True)
            per_node = collections.defaultdict(list)
            for f in glob.glob(f"{prefix}*.json"):
                events = [e for e in json.loads(Path(f).read_text()) if e.get("cat") == "Node"]
                if not any(e["args"].get("op_name") == "GroupQueryAttention" for e in events):
                    continue  # the head graph
                for e in events:
                    if e["name"].endswith("_kernel_time"):
                        per_node[(e["args"]["op_name"], e["name"])].append(e["dur"])
            mm = {k[1].split("/")[-2]: float(np.median(v)) for k, v in per_node.items() if k[0].startswith("MatMul")}
            whole = sum(float(np.median(v)) for v in per_node.values())
            print(f"| {variant} | {sum(mm.values()):.0f} us ({', '.join(f'{k} {v:.0f}' for k, v in mm.items())}) | "
                  f"{whole:.0f} us |")


def step_times(root: Path, steps: int) -> None:
    from shadow_edge.runtime import ShadowRuntime
    from shadow_edge.runtime.generate import Pipeline, prefill
    from shadow_edge.runtime.session import GraphSession, ov

    full = ShadowRuntime.load(root / "full", threads=1, modes=("shadow_only",))
    rt = ShadowRuntime.load(root / "base_art", threads=1, modes=("shadow_only",), adapters={"a0": root / "pack0"})
    pack = rt.adapters.get("a0")
    head = rt.pipeline("shadow_only").head
    overridable = GraphSession("shadow", rt.manifest.graphs["shadow"], rt.art_dir, threads=1,
                               contract=rt.manifest.contract("shadow"))  # shadow.onnx: slots are graph inputs
    unpacked = GraphSession("shadow", rt.twins["shadow"], rt.art_dir, threads=1, prepack=False,
                            contract=rt.manifest.contract("shadow"), initializers=pack.feeds["shadow"])
    variants = {"full artifact (constant, prepacked)": full.pipeline("shadow_only"),
                "base, own adapter (twin graph, constant)": rt.pipeline("shadow_only"),
                "base + pack (its own session, add_initializer)": rt.pipeline("shadow_only", "a0"),
                "base + pack, its own session not prepacked": Pipeline(head, unpacked),
                "base + pack fed per run (overridable, old)": Pipeline(head, overridable,
                                                                       params={"shadow": pack.feeds["shadow"]})}
    ids = np.array(PROMPT, dtype=np.int64)  # [1, 16]
    state = {}
    for key, pipe in variants.items():
        _, caches, pos = prefill(pipe, ids, np.ones_like(ids), capacity=64)
        state[key] = pipe, caches[0], {"input_ids": ov(np.array([[7]])), "attention_mask": ov(np.ones((1, 17), np.int64)),
                                       "position_ids": ov(pos[:, None])}
    def step(key: str):
        pipe, cache, feed = state[key]

        def run():
            cache.length = 16  # the same decode position every time (set inside the timed call: a field write)
            pipe.run(pipe.shadow, feed, cache.tensors)
        return run

    result = run_rounds({k: step(k) for k in variants}, reps=steps, warmup=1)  # interleaved, order rotated
    times = {k: [smp.ms * 1e3 for smp in v] for k, v in result.samples.items()}  # us
    for key, v in times.items():
        print(f"| {key} | {np.median(v):.0f} us | {np.percentile(v, 25):.0f} us |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="a directory written by benchmarks/suites/adapter_packs.py")
    p.add_argument("--steps", type=int, default=400, help="decode steps per variant (interleaved)")
    p.add_argument("--ort-profile", type=int, metavar="N", help="profile N generations per variant instead")
    args = p.parse_args()
    if args.ort_profile:
        print("| variant | shadow-layer MatMuls per step (median per node) | shadow graph per step |\n|---|---:|---:|")
        ort_profile(args.out, args.ort_profile)
    else:
        print("| variant | shadow decode step, median | p25 |\n|---|---:|---:|")
        step_times(args.out, args.steps)


if __name__ == "__main__":
    main()
