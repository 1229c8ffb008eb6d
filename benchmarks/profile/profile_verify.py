"""Why a speculative verify pass costs more than one decode step: the backbone and the head over n positions.

    python -m benchmarks.profile.profile_verify ART [--prompt-len 64] [--positions 1,2,3,5,9] [--reps 7] [--threads 2]

After a prompt of prompt-len tokens through base_shadow, the script runs, interleaved per
repetition, for every n in --positions (n = k + 1 of a draft of k tokens) from the same cache
state (the cache length is moved back after every call, as speculative's rollback does):
the backbone over n new positions (fed shadow states, as verify feeds them) and the lm_head
over n positions, plus one draft step (shadow graph + head over 1 position). The head runs
twice: in the runtime's session (weights not prepacked: best for one position) and in a
session that prepacks its weights. Wall times are medians over the repetitions. Then the
same calls run once more in sessions with onnxruntime profiling on, and the backbone's
kernel time per n is split by op type (profiling adds its own overhead: read the ratios).
Torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.lib.timing import run_rounds
from benchmarks.profile.profile_ops import _load as load_profiled
from shadow_edge.bench.runner import prompt_ids
from shadow_edge.io_spec import MODE_BASE_SHADOW, SHADOW_HIDDEN
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.generate import prefill
from shadow_edge.runtime.session import GraphSession, ov


def say(message: str) -> None:
    print(f"[profile_verify] {message}", file=sys.stderr, flush=True)


class Bench:
    """One runtime with a prompt prefilled; calls that leave the caches as they found them."""

    def __init__(self, rt: ShadowRuntime, prompt_len: int, most: int):
        self.rt = rt
        self.pipe = pipe = rt.pipeline(MODE_BASE_SHADOW)
        ids = prompt_ids(rt.vocab_size, 1, prompt_len, 0)
        mask = np.ones_like(ids)
        _, (self.s_cache, self.b_cache), pos = prefill(pipe, ids, mask, capacity=prompt_len + most + 1)
        self.t = prompt_len
        self.fed = prompt_ids(rt.vocab_size, 1, most, 1)  # [1, most]
        self.pos = pos[:, None] + np.arange(most)  # [1, most]
        hidden = []
        for j in range(most):  # real shadow states of the fed tokens
            hidden.append(self.shadow_step(j).numpy().copy())
        self.hidden = np.concatenate(hidden, axis=1)  # [1, most, d]
        self.s_cache.length = self.t

    def mask(self, n: int) -> np.ndarray:
        return np.ones((1, self.t + n), np.int64)

    def shadow_step(self, j: int = 0):
        pipe = self.pipe
        feed = {"input_ids": ov(self.fed[:, j:j + 1]), "attention_mask": ov(self.mask(j + 1)),
                "position_ids": ov(self.pos[:, j:j + 1])}
        out = pipe.run(pipe.shadow, feed, self.s_cache.tensors)
        self.s_cache.length += 1
        return out

    def draft_step(self, head: GraphSession) -> None:
        s = self.shadow_step()
        self.s_cache.length = self.t
        head.run({head.input_names[0]: s})

    def backbone(self, n: int):
        pipe = self.pipe
        feed = {"input_ids": ov(self.fed[:, :n]), "attention_mask": ov(self.mask(n)),
                "position_ids": ov(self.pos[:, :n]), SHADOW_HIDDEN: ov(self.hidden[:, :n])}
        out = pipe.run(pipe.backbone, feed, self.b_cache.tensors)
        self.b_cache.length = self.t  # roll back
        return out

    @staticmethod
    def head(head: GraphSession, h):
        return head.run({head.input_names[0]: h})[0]


def wall_times(bench: Bench, positions: list[int], reps: int, packed: GraphSession) -> dict:
    head = bench.pipe.head
    states = {n: bench.backbone(n) for n in positions}
    calls = {"draft": lambda: bench.draft_step(head)}
    for n in positions:
        calls |= {(n, "backbone"): lambda n=n: bench.backbone(n), (n, "head"): lambda n=n: bench.head(head, states[n]),
                  (n, "head_prepacked"): lambda n=n: bench.head(packed, states[n])}
    keys = {str(k): k for k in calls}
    # every call once per round, their order rotated each round; one warm-up round (benchmarks.lib.timing)
    result = run_rounds({str(k): fn for k, fn in calls.items()}, reps=reps, warmup=1)
    ms = {keys[k]: statistics.median(smp.ms for smp in v) for k, v in result.samples.items()}
    med = {n: {name: ms[(n, name)] for name in ("backbone", "head", "head_prepacked")} for n in positions}
    return {"draft_step_ms": ms["draft"], "per_positions": med}


def op_profile(art: Path, threads: int, prompt_len: int, positions: list[int], reps: int) -> dict:
    """Backbone kernel ms per call by op type, per n (onnxruntime profiler)."""
    rt = load_profiled(art, MODE_BASE_SHADOW, threads, tempfile.mkdtemp(prefix="se-profile-verify-"))
    bench = Bench(rt, prompt_len, max(positions))
    order = []
    for _ in range(reps):
        for n in positions:
            bench.backbone(n)
            order.append(n)
    graph = bench.pipe.backbone
    events = json.loads(Path(graph.session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    runs = runs[-len(order):]  # the prefill and the state-making calls come first
    by_n: dict[int, dict[str, float]] = {n: defaultdict(float) for n in positions}
    run_ms: dict[int, float] = defaultdict(float)
    nodes = sorted((e["ts"], e["dur"], e["args"].get("op_name", "?")) for e in events
                   if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    i = 0
    for (a, b), n in zip(runs, order):
        run_ms[n] += (b - a) / 1e3 / reps
        while i < len(nodes) and nodes[i][0] < a:
            i += 1
        while i < len(nodes) and nodes[i][0] <= b:
            by_n[n][nodes[i][2]] += nodes[i][1] / 1e3 / reps
            i += 1
    return {n: {"run_ms": run_ms[n], "ops": dict(sorted(by_n[n].items(), key=lambda kv: -kv[1]))}
            for n in positions}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--positions", default="1,2,3,5,9", help="numbers of positions n = k + 1 (default 1,2,3,5,9)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ops", action="store_true", help="skip the onnxruntime op profile")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    positions = [int(x) for x in args.positions.split(",")]
    say(f"{args.artifact}: loading")
    rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=False, modes=(MODE_BASE_SHADOW,))
    head = rt.pipeline(MODE_BASE_SHADOW).head
    packed = GraphSession(head.name, head.entry, rt.art_dir, rt.providers, rt.threads, prepack=True,
                          contract=head.contract)
    bench = Bench(rt, args.prompt_len, max(positions))
    say("timing")
    wall = wall_times(bench, positions, args.reps, packed)
    one = wall["per_positions"][positions[0]]
    step = one["backbone"] + one["head"] + wall["draft_step_ms"]  # ~ a base_shadow decode step's three calls
    print(f"draft step (shadow + head, 1 position): {wall['draft_step_ms']:.2f} ms; "
          f"~decode step (draft + backbone + head at n={positions[0]}): {step:.2f} ms")
    print(f"{'n':>3} {'backbone ms':>12} {'x n=1':>6} {'head ms':>9} {'x n=1':>6} {'head prepacked':>15} "
          f"{'verify ms':>10} {'verify / decode step':>21}")
    for n, m in wall["per_positions"].items():
        verify = m["backbone"] + m["head"]
        print(f"{n:>3} {m['backbone']:>12.2f} {m['backbone'] / one['backbone']:>6.2f} {m['head']:>9.2f} "
              f"{m['head'] / one['head']:>6.2f} {m['head_prepacked']:>15.2f} {verify:>10.2f} {verify / step:>21.2f}")
    report = {"artifact": str(args.artifact), "threads": args.threads, "prompt_len": args.prompt_len,
              "wall": wall}
    if not args.no_ops:
        del rt, bench, packed
        say("op profile")
        ops = op_profile(args.artifact, args.threads, args.prompt_len, positions, args.reps)
        report["backbone_ops"] = ops
        kinds = list(ops[positions[0]]["ops"])[:8]
        print("backbone kernel ms per call by op type (profiled):")
        print(f"{'n':>3} {'run':>8} " + " ".join(f"{k[:16]:>16}" for k in kinds))
        for n, o in ops.items():
            print(f"{n:>3} {o['run_ms']:>8.2f} " + " ".join(f"{o['ops'].get(k, 0.0):>16.2f}" for k in kinds))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
