"""How far speculative decoding's verify pass is from the one-position decode step, position by position.

    python -m benchmarks.suites.verify_rows --artifact ART [--artifact ART2 ...] [--prompt TEXT] [--positions 12]
        [--threads 2] [--first-node] [--out results.json]

Per artifact, one chat prompt: greedy base_shadow decodes --positions tokens one position per step (the bound decode
step, `DecodeState.step`, as plain decoding runs it); a second decode state over the same prompt feeds those tokens in
one pass of several positions (`DecodeState.verify_bound`, as a speculative round verifies). Both read the same
caches after the prompt, so each position's logits differ only by how the kernels round several positions against
one. Reported per position: the largest |logit difference|, the step's top-2 logit gap, and whether the greedy tokens
agree (a token can differ where the gap is within the difference). On float32 arithmetic the difference is ~1e-5;
with int8 activation arithmetic (`--quant-compute int8`) it is what decides whether speculative output equals
base_shadow's (docs/speculative.md, "Quantized artifacts").

--first-node: where the difference starts. The merged step graph is run with every node's output fetched (graph
optimizations off, so each node runs as written), once on one position and once on two, over the same random
past keys and values; reported: the first nodes, in graph order, whose output for the first position differs
between the two runs (op type, node, largest difference).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.lib.entry import run
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.decode_state import DecodeState

PROMPT = 'Define the word "lantern".'
MODE = "base_shadow"


def say(message: str) -> None:
    print(f"[verify-rows] {message}", file=sys.stderr, flush=True)


def compare(rt: ShadowRuntime, ids: list[int], positions: int) -> list[dict]:
    """Per position after the prompt: the one-position step's logits against the verify pass's."""
    merged = rt.step_graph(MODE)
    if merged is None:
        raise ShadowEdgeError(f"{rt.art_dir}: no merged step graph for {MODE}; the verify pass needs one (re-export)")
    prompt = np.asarray([ids], np.int64)
    one = DecodeState(rt.pipeline(MODE), 1, len(ids) + positions + 1, merged)
    logits = one.prefill(prompt)[0]
    tokens, stepped = [int(logits.argmax())], []
    for _ in range(positions - 1):
        stepped.append(one.step(np.asarray(tokens[-1:], np.int64)).copy())  # the logits after tokens[-1]
        tokens.append(int(stepped[-1][0].argmax()))
    stepped.append(one.step(np.asarray(tokens[-1:], np.int64)).copy())
    many = DecodeState(rt.pipeline(MODE), 1, len(ids) + positions + 1, merged)
    many.prefill(prompt)
    many.verify_bound(np.asarray([tokens], np.int64))
    verified = many.step_logits[0]  # [positions, V]
    rows = []
    for i, (a, b) in enumerate(zip(stepped, verified)):
        a = a[0]
        top2 = np.sort(a)[-2:]
        rows.append({"position": i, "max_abs_diff": float(np.abs(a - b).max()), "top2_gap": float(top2[1] - top2[0]),
                     "same_token": int(a.argmax()) == int(b.argmax())})
    return rows


def first_differences(rt: ShadowRuntime, most: int = 5) -> list[dict]:
    """The first `most` nodes of the merged step graph (graph order) whose output for a position differs between a
    one-position and a two-position pass over the same past (empty: none differs)."""
    import onnx
    import onnxruntime as ort

    merged = rt.step_graph(MODE)
    if merged is None:
        raise ShadowEdgeError(f"{rt.art_dir}: no merged step graph for {MODE}; re-export")
    model = onnx.load(str(merged.path))  # with its weights: saved again below, beside the added outputs
    shown = {o.name for o in model.graph.output}
    nodes = [(o, n.op_type, n.name) for n in model.graph.node for o in n.output if o and o not in shown]
    model.graph.output.extend(onnx.ValueInfoProto(name=o) for o, _, _ in nodes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.use_per_session_threads = False  # the runtime's process-wide pool, as its own sessions
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/g.onnx", save_as_external_data=True, location="g.data")
        sess = ort.InferenceSession(f"{tmp}/g.onnx", options, providers=["CPUExecutionProvider"])
    rng, past = np.random.default_rng(0), 5
    kv = {i.name: rng.standard_normal([1, i.shape[1], past, i.shape[3]]).astype(np.float32)
          for i in sess.get_inputs() if i.name.startswith("past_key_values")}
    names = [o.name for o in sess.get_outputs()]

    def run(ids: list[int]) -> dict:
        t = len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, past + t), np.int64),
                 "position_ids": np.arange(past, past + t, dtype=np.int64)[None], **kv}
        return dict(zip(names, sess.run(None, feeds)))

    one, two = run([1]), run([1, 2])
    found = []
    for name, op, node in nodes:
        a, b = one[name], two[name]
        axes = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        if a.dtype != np.float32 or a.ndim != b.ndim or len(axes) != 1:
            continue  # not a per-position float tensor
        diff = float(np.abs(a - np.take(b, [0], axis=axes[0])).max())
        if diff > 0:
            found.append({"op": op, "node": node, "max_abs_diff": diff})
            if len(found) == most:
                break
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, action="append", required=True)
    p.add_argument("--prompt", default=PROMPT, help=f"the user's message (default {PROMPT!r})")
    p.add_argument("--positions", type=int, default=12, help="positions verified in one pass (default 12)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--first-node", action="store_true",
                   help="also run the step graph node by node and name the first nodes whose output differs")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.positions < 1:
        p.error(f"--positions {args.positions}: expected at least 1")
    results = {}
    print("| artifact | arithmetic | max |diff| first / worst position | smallest top-2 gap | tokens agree |",
          file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for art in args.artifact:
        rt = ShadowRuntime.load(art, threads=args.threads, verify=False)
        ids = rt.codec.encode(rt.chat_text([{"role": "user", "content": args.prompt}]))
        rows = compare(rt, ids, args.positions)
        arithmetic = (rt.manifest.execution_target.quant_compute or "float32") if rt.manifest.quantization \
            else "float32"
        results[str(art)] = {"arithmetic": arithmetic, "positions": rows}
        if args.first_node:
            results[str(art)]["first_nodes"] = first = first_differences(rt)
            say(f"{art.name}: first differing nodes: " + ("none" if not first else ", ".join(
                f"{d['op']} {d['node']} ({d['max_abs_diff']:.1e})" for d in first)))
        agree = sum(r["same_token"] for r in rows)
        print(f"| {art.name} | {arithmetic} | {rows[0]['max_abs_diff']:.2e} / "
              f"{max(r['max_abs_diff'] for r in rows):.2e} | {min(r['top2_gap'] for r in rows):.3f} | "
              f"{agree} / {len(rows)} |", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    run(main)
