"""What the adapter's nodes cost in a decode step: per-node kernel times, and the adapter chain warm and cold.

    python -m benchmarks.profile.adapter_nodes [--rounds 60]
    python -m benchmarks.profile.adapter_nodes --artifact ART [--variants control,nosplit,inject1,skipln] [--rounds 60]

Synthetic graphs of random weights (torch-free), one position, 2 threads, one process-wide pool:
1. *Per node*: a chain of 100 nodes of one kind at d 1024, median µs per node (SkipLayerNormalization
   against Add + LayerNormalization with onnxruntime's SkipLayerNormFusion on and off, the
   SkipSimplifiedLayerNormalization of the base layers, elementwise ops, a d -> 16 -> d MatMul pair).
2. *Adapter chain*: the injection/update nodes of every adapted layer of W1 (d 1024, rank 16, gate 10,
   27 layers) and of `small` (d 512, rank 16, gate 16, 7 layers), as export/graphs.py builds them,
   in variants: G/T output weights zero-padded to [2g, d] (no Split) or a Split; float32 or 8-bit
   MatMulNBits weights. Each is timed warm (run back to back) and cold (after streaming 300 MB
   through the caches, as the base weights do in a real step).
With --artifact: a float32 artifact exported with --plain-backbone instead: its backbone's nodes as onnxruntime
runs them, and rewrites of the adapter's nodes timed in place (benchmarks/profile/adapter_variants.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def _session(nodes, inits, inputs: dict[str, tuple], out: str, disabled=()) -> tuple:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                           for n, s in inputs.items()],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.use_per_session_threads = False
    so.log_severity_level = 3  # the chains that do not read the shared norm weights
    sess = ort.InferenceSession(model.SerializeToString(), so, disabled_optimizers=list(disabled))
    feed = {n: RNG.standard_normal(s).astype(np.float32) for n, s in inputs.items()}
    return sess, feed


def _weight(inits: list, name: str, shape: tuple) -> str:
    inits.append(numpy_helper.from_array((RNG.standard_normal(shape) * 0.02).astype(np.float32), name))
    return name


def per_node(rounds: int, d: int = 1024, n: int = 100) -> list[tuple[str, float]]:
    def chain(make, disabled=()):
        nodes, inits, x = [], [], "x"
        _weight(inits, "w", (d,))
        _weight(inits, "b", (d,))
        for i in range(n):
            x = make(nodes, inits, x, i)
        sess, feed = _session(nodes, inits, {"x": (1, 1, d)}, x, disabled)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) / n * 1e6

    def skip_ln(nodes, inits, x, i):
        nodes.append(helper.make_node("SkipLayerNormalization", [x, "x", "w", "b"], [f"y{i}"], domain="com.microsoft",
                                      epsilon=1e-5))
        return f"y{i}"

    def add_ln(nodes, inits, x, i):
        nodes.append(helper.make_node("Add", [x, "x"], [f"a{i}"]))
        nodes.append(helper.make_node("LayerNormalization", [f"a{i}", "w", "b"], [f"y{i}"], axis=-1, epsilon=1e-5))
        return f"y{i}"

    def skip_rms(nodes, inits, x, i):
        nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [x, "x", "w"], [f"y{i}"],
                                      domain="com.microsoft", epsilon=1e-6))
        return f"y{i}"

    def unary(op):
        def make(nodes, inits, x, i):
            nodes.append(helper.make_node(op, [x] if op == "Sigmoid" else [x, "x"], [f"y{i}"]))
            return f"y{i}"
        return make

    def matmul_pair(nodes, inits, x, i):
        nodes.append(helper.make_node("MatMul", [x, _weight(inits, f"d{i}", (d, 16))], [f"z{i}"]))
        nodes.append(helper.make_node("MatMul", [f"z{i}", _weight(inits, f"u{i}", (16, d))], [f"y{i}"]))
        return f"y{i}"

    return [("SkipLayerNormalization", chain(skip_ln)),
            ("Add + LayerNormalization, fused by onnxruntime (pair)", chain(add_ln)),
            ("Add + LayerNormalization, SkipLayerNormFusion off (pair)", chain(add_ln, ["SkipLayerNormFusion"])),
            ("SkipSimplifiedLayerNormalization", chain(skip_rms)),
            ("Add", chain(unary("Add"))), ("Mul", chain(unary("Mul"))), ("Sigmoid", chain(unary("Sigmoid"))),
            ("MatMul d -> 16 -> d (pair)", chain(matmul_pair))]


def adapter_chain(d: int, rank: int, gate: int, layers: int, split: bool, int8: bool) -> tuple:
    """The adapter's nodes of `layers` adapted layers (injection, LayerNorm, update), fed h and s [1, 1, d]."""
    nodes, inits = [], []

    def matmul(x, name, shape, out):
        name += ".weight"  # beside the node outputs' names
        if not int8:
            return helper.make_node("MatMul", [x, _weight(inits, name, shape)], [out])
        k, n = shape
        blocks = (k + 31) // 32
        inits.append(numpy_helper.from_array(RNG.integers(0, 255, (n, blocks, 32), dtype=np.uint8), name + ".q"))
        inits.append(numpy_helper.from_array((RNG.random(n * blocks) * 0.01).astype(np.float32), name + ".s"))
        return helper.make_node("MatMulNBits", [x, name + ".q", name + ".s"], [out], domain="com.microsoft", K=k, N=n,
                                bits=8, block_size=32, accuracy_level=4)

    h, s = "h", "s"
    for j in range(layers):
        p = f"l{j}."
        nodes += [helper.make_node("Sub", [h, s], [p + "hs"]), matmul(p + "hs", p + "down", (d, rank), p + "dn"),
                  matmul(p + "dn", p + "up", (rank, d), p + "up"), helper.make_node("Add", [h, p + "up"], [p + "h"]),
                  helper.make_node("LayerNormalization", [p + "h", _weight(inits, p + "lnw", (d,)),
                                                          _weight(inits, p + "lnb", (d,))], [p + "u"], axis=-1,
                                   epsilon=1e-5),
                  matmul(p + "u", p + "in", (d, 2 * gate), p + "x"),
                  helper.make_node("Sigmoid", [p + "x"], [p + "sx"]),
                  helper.make_node("Mul", [p + "x", p + "sx"], [p + "a"])]
        if split:
            inits.append(numpy_helper.from_array(np.array([gate, gate], np.int64), p + "halves"))
            nodes += [helper.make_node("Split", [p + "a", p + "halves"], [p + "ag", p + "at"], axis=-1),
                      matmul(p + "ag", p + "gout", (gate, d), p + "g"),
                      matmul(p + "at", p + "tout", (gate, d), p + "t")]
        else:
            nodes += [matmul(p + "a", p + "gout", (2 * gate, d), p + "g"),
                      matmul(p + "a", p + "tout", (2 * gate, d), p + "t")]
        nodes += [helper.make_node("Sigmoid", [p + "g"], [p + "sg"]), helper.make_node("Sub", [p + "t", s], [p + "ts"]),
                  helper.make_node("Mul", [p + "sg", p + "ts"], [p + "m"]),
                  helper.make_node("Add", [s, p + "m"], [p + "s"])]
        h, s = p + "h", p + "s"
    nodes.append(helper.make_node("Add", [h, s], ["out"]))
    sess, feed = _session(nodes, inits, {"h": (1, 1, d), "s": (1, 1, d)}, "out")
    return sess, feed, len(nodes)


def warm_cold(sess, feed, rounds: int, flush: np.ndarray) -> tuple[float, float]:
    warm, cold = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sess.run(None, feed)
        warm.append(time.perf_counter() - t0)
        np.bitwise_or.reduce(flush)  # 300 MB through the caches, like a step's base weights
        t0 = time.perf_counter()
        sess.run(None, feed)
        cold.append(time.perf_counter() - t0)
    return statistics.median(warm) * 1e3, statistics.median(cold) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--artifact", type=Path, help="an artifact exported with --plain-backbone: its adapter's nodes")
    p.add_argument("--variants", default="control,nosplit,inject1,skipln",
                   help="with --artifact: the rewrites to time (comma-separated; empty: the node table only)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        p.error("--rounds and --threads must be >= 1")
    if args.artifact is not None:
        from benchmarks.profile import adapter_variants as av

        names = [v for v in args.variants.split(",") if v]
        if set(names) - set(av.VARIANTS):
            p.error(f"--variants: choose from {', '.join(av.VARIANTS)}")
        print(av.node_table(args.artifact, args.threads))
        if names:
            print()
            print(av.variant_table(av.time_variants(args.artifact, names, args.rounds, threads=args.threads)))
            print()
            print(av.kernel_table(av.kernel_times(args.artifact, names, args.rounds, threads=args.threads)))
        return 0
    ort.set_global_thread_pool_sizes(args.threads, 1)
    print("| node (d 1024, one position) | µs per node |\n|---|---:|")
    for label, us in per_node(args.rounds):
        print(f"| {label} | {us:.2f} |")
    flush = np.ones(300 * 2**20 // 8, np.int64)
    print("\n| adapter chain | nodes | warm ms | cold ms |\n|---|---:|---:|---:|")
    for name, shape in (("W1", (1024, 16, 10, 27)), ("small", (512, 16, 16, 7))):
        for split, int8 in ((False, False), (True, False), (True, True)):
            sess, feed, n = adapter_chain(*shape, split, int8)
            warm, cold = warm_cold(sess, feed, args.rounds, flush)
            weights = "8-bit MatMulNBits" if int8 else "float32"
            label = f"{name}: {'Split' if split else 'zero-padded [2g, d]'}, {weights}"
            print(f"| {label} | {n} | {warm:.3f} | {cold:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
