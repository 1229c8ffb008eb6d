"""Where a decode step's time goes: per op (onnxruntime's profiler) and per step in Python, for one mode.

    python -m benchmarks.profile.profile_ops ART --mode base_shadow [--prompt-len 64] [--new-tokens 32] [--threads 2]
    python -m benchmarks.profile.profile_ops ART --mode base_plain --genai ORT_GENAI_MODEL_DIR   # + its graph, same steps

Two generations per system after a warm-up, through the shadow-edge runtime:
1. unprofiled, with each graph's session timed from Python: ms per decoded token spent in
   onnxruntime's run call per graph, in binding inputs/outputs around it, and in the rest of the
   Python step loop (feeds, sampling, mask, bookkeeping);
2. profiled (onnxruntime `enable_profiling` on every graph of the mode): ms per decoded token by
   (graph, op type) and the number of kernels run per step. Profiling adds overhead of its own:
   read the shares, not the absolute times.
`--genai DIR` runs onnxruntime-genai's model.onnx (same prompt, same number of steps) with plain
onnxruntime sessions the same two ways: its graph, without onnxruntime-genai's C++ loop. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import shadow_edge.runtime.session as session_mod
from shadow_edge.bench.runner import prompt_ids
from shadow_edge.runtime import ShadowRuntime


class _TimedSession:
    """Wraps an onnxruntime InferenceSession; records the wall ms of each run call under `name`."""

    def __init__(self, session, name: str, log: list):
        self._s, self._name, self._log = session, name, log

    def __getattr__(self, attr):
        return getattr(self._s, attr)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self._log.append((self._name, (time.perf_counter() - t0) * 1e3))
        return out

    def run_with_iobinding(self, io, *args):
        return self._timed(self._s.run_with_iobinding, io, *args)

    def run_with_ort_values(self, *args):
        return self._timed(self._s.run_with_ort_values, *args)

    def run(self, *args):
        return self._timed(self._s.run, *args)


def _load(art: Path, mode: str, threads: int, profile_dir: str | None) -> ShadowRuntime:
    plain = session_mod.session_options

    def profiled(*args, **kwargs):
        so = plain(*args, **kwargs)
        so.enable_profiling = True
        so.profile_file_prefix = f"{profile_dir}/ort"
        return so

    if profile_dir:
        session_mod.session_options = profiled
    try:
        rt = ShadowRuntime.load(art, threads=threads, verify=False, modes=(mode,))
        rt.step_graph(mode)  # the merged decode step's graph opens on first use: open it here, profiled too
        return rt
    finally:
        session_mod.session_options = plain


def _ops(events: list[dict], keep: list[tuple[int, int]], steps: int, graph: str) -> tuple[list[tuple], float, float]:
    """(graph, op, ms/step) rows of the kernels inside the `keep` runs; model_run ms/step; kernels/step."""
    by_op, kernels = defaultdict(float), 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            if any(a <= e["ts"] <= b for a, b in keep):
                by_op[e["args"].get("op_name", "?")] += e["dur"]
                kernels += 1
    run_ms = sum(b - a for a, b in keep) / 1e3 / steps
    return [(graph, op, us / 1e3 / steps) for op, us in by_op.items()], run_ms, kernels / steps


def shadow_edge_profile(art: Path, mode: str, ids: list[int], new_tokens: int, threads: int) -> dict:
    steps = new_tokens - 1
    rt = _load(art, mode, threads, None)
    log: list[tuple[str, float]] = []
    for g in rt._graphs.values():
        g.session = _TimedSession(g.session, g.name, log)
    rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=())  # warm-up
    log.clear()
    out = rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=())
    step_ms = statistics.median(out.timings.decode_ms_per_token)
    per_graph: dict[str, list[float]] = defaultdict(list)
    for name, ms in log:
        per_graph[name].append(ms)
    # a graph that also runs the prefill ran steps + 1 times ([0] is the prefill); the merged decode step's graph
    # runs the steps only, the split prefill graphs the prefill only (no decode figure)
    session_ms = {name: statistics.median(v[len(v) - steps:]) for name, v in per_graph.items() if len(v) >= steps}
    del rt
    tmp = tempfile.mkdtemp(prefix="se-profile-")
    rt = _load(art, mode, threads, tmp)
    rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=())  # warm-up: profiled too, dropped below
    rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=())
    rows, run_ms, kernels = [], {}, {}
    for name, graph in rt._graphs.items():
        trace = graph.session.end_profiling()
        if not trace:  # a graph this mode loads but never runs (its session was not profiled)
            continue
        events = json.loads(Path(trace).read_text())
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
        per_gen = len(runs) // 2  # per generation: steps (+ 1 where the graph runs the prefill too)
        if per_gen < steps:  # a prefill-only graph (the merged step graph decodes)
            continue
        r, run_ms[name], kernels[name] = _ops(events, runs[-steps:], steps, name)
        rows += r
    return {"step_ms": step_ms, "session_ms": session_ms, "run_ms": run_ms, "kernels": kernels, "ops": rows}


def genai_graph_profile(model_dir: Path, ids: list[int], new_tokens: int, threads: int) -> dict:
    """onnxruntime-genai's decoder graph (model.onnx) driven by plain onnxruntime: prefill + `new_tokens - 1`
    steps, KV in one buffer per past/present pair (its past_present_share_buffer), greedy."""
    import onnxruntime as ort

    cfg = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    layers, kv, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_size"]
    capacity = len(ids) + new_tokens

    def run_all(profile_dir: str | None) -> tuple[list[float], list[float], object]:
        so = session_mod.session_options(threads)
        if profile_dir:
            so.enable_profiling, so.profile_file_prefix = True, f"{profile_dir}/genai"
        sess = ort.InferenceSession(str(model_dir / cfg["filename"]), sess_options=so)
        bufs = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, kv, capacity, hd), np.float32))
                for _ in range(2 * layers)]
        walls, runs = [], []
        for _gen in range(2):
            tokens, mask = np.array([ids], np.int64), np.ones((1, len(ids)), np.int64)
            walls, runs = [], []
            for _ in range(new_tokens):
                t0 = time.perf_counter()
                io = sess.io_binding()
                io.bind_output("logits", "cpu")
                io.bind_cpu_input("input_ids", tokens)
                io.bind_cpu_input("attention_mask", mask)
                for i in range(layers):
                    for j, kind in enumerate(("key", "value")):
                        io.bind_ortvalue_input(f"past_key_values.{i}.{kind}", bufs[2 * i + j])
                        io.bind_ortvalue_output(f"present.{i}.{kind}", bufs[2 * i + j])
                t1 = time.perf_counter()
                sess.run_with_iobinding(io)
                runs.append((time.perf_counter() - t1) * 1e3)
                logits = io.get_outputs()[0].numpy()[0, -1]
                tokens = np.array([[int(np.argmax(logits))]], np.int64)
                mask = np.ones((1, mask.shape[1] + 1), np.int64)
                walls.append((time.perf_counter() - t0) * 1e3)
        return walls, runs, sess

    walls, runs, _ = run_all(None)
    out = {"step_ms": statistics.median(walls[1:]), "session_ms": {"genai": statistics.median(runs[1:])}}
    tmp = tempfile.mkdtemp(prefix="se-profile-")
    _, _, sess = run_all(tmp)
    events = json.loads(Path(sess.end_profiling()).read_text())
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    rows, run_ms, kernels = _ops(events, model_runs[new_tokens + 1:], new_tokens - 1, "genai")
    return {**out, "run_ms": {"genai": run_ms}, "kernels": {"genai": kernels}, "ops": rows}


def report(label: str, res: dict, top: int) -> None:
    session = sum(res["session_ms"].values())
    print(f"\n{label}: decode step p50 {res['step_ms']:.2f} ms = onnxruntime run calls {session:.2f} ("
          + ", ".join(f"{g} {ms:.2f}" for g, ms in res["session_ms"].items())
          + f") + Python loop/binding {res['step_ms'] - session:.2f}")
    print("  profiled: model_run ms/step " + ", ".join(f"{g} {ms:.2f}" for g, ms in res["run_ms"].items())
          + "; kernels/step " + ", ".join(f"{g} {n:.0f}" for g, n in res["kernels"].items()))
    total = sum(r[2] for r in res["ops"])
    print(f"  {'graph':<16}{'op type':<36}{'ms/token':>10}{'share':>8}")
    for g, op, ms in sorted(res["ops"], key=lambda r: -r[2])[:top]:
        print(f"  {g:<16}{op:<36}{ms:>10.3f}{ms / total * 100:>7.1f}%")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--mode", default="base_shadow", help="shadow-edge mode (default %(default)s)")
    p.add_argument("--genai", type=Path, metavar="DIR", help="also profile onnxruntime-genai's model in DIR")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="op rows to print per system (default 12)")
    args = p.parse_args(argv)
    rt_vocab = json.loads((args.artifact / "manifest.json").read_text())["model"]["vocab_size"]
    ids = prompt_ids(int(rt_vocab), 1, args.prompt_len, 0)[0].tolist()
    report(f"shadow-edge {args.mode}", shadow_edge_profile(args.artifact, args.mode, ids, args.new_tokens,
                                                           args.threads), args.top)
    if args.genai:
        report("onnxruntime-genai graph", genai_graph_profile(args.genai, ids, args.new_tokens, args.threads),
               args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
