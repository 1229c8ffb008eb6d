"""What onnxruntime's CPU MatMulNBits kernels offer on this machine: one decode-step matmul per configuration.

    python -m benchmarks.profile.matmulnbits_kernels --shapes w1          # Qwen3-0.6B shape's five matmuls
    python -m benchmarks.profile.matmulnbits_kernels --shapes small --bits 8 --blocks 32,128 --levels 4
    python -m benchmarks.profile.matmulnbits_kernels --shapes smollm2 --bits 4 --blocks 32 --levels 4 --asymmetric
    python -m benchmarks.profile.matmulnbits_kernels --shapes smollm2 --bits 4 --blocks 32 --levels 4 --zero-points

Each configuration is a one-node graph: float32 MatMul ([K, N] weights, prepacked) or
MatMulNBits (bits 4/8, block size, accuracy_level 1 = float32 arithmetic / 4 = int8
activations), x [1, K] -> [1, N], random weights; --asymmetric adds each MatMulNBits configuration with the
exporter's asymmetric-block path (export/graphs.py: + block sums of x @ per-block offsets, 4 more nodes);
--zero-points adds each with MatMulNBits' own zero points, uint8 (4-bit, packed) and float32 (one per block, which
could hold a Q4_1 block's minimum exactly). All
sessions of one shape run interleaved (one call each per round, so machine noise hits them alike) on onnxruntime's process-wide pool of
--threads threads; medians in microseconds and as a ratio to float32. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.lib.timing import run_rounds

SHAPES = {  # name: [(matmul, N, K)] as the exporter emits them (q|k|v and gate|up fused)
    "small": [("qkv", 1024, 512), ("gate|up", 3072, 512), ("down", 512, 1536), ("head", 32000, 512)],
    "w1": [("qkv", 4096, 1024), ("o", 1024, 2048), ("gate|up", 6144, 1024), ("down", 1024, 3072),
           ("head", 151936, 1024)],
    "smollm2": [("qkv", 960, 576), ("o", 576, 576), ("gate|up", 3072, 576), ("down", 576, 1536), ("head", 49152, 576)],
}


VARIANTS = {"": "", "offsets": " asym", "uint8 zp": " zp-u8", "float zp": " zp-f32"}  # variant -> column suffix


def session(n: int, k: int, bits: int | None, block: int, level: int, variant: str = "") -> ort.InferenceSession:
    """One-node graph x [1, K] -> y [1, N]: float32 MatMul when bits is None, else MatMulNBits (variant: "",
    "offsets" (+ the exporter's offsets path), "uint8 zp" / "float zp" (MatMulNBits' zero points input))."""
    asym = variant == "offsets"
    rng = np.random.default_rng(0)
    if bits is None:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]  # [K, N]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    else:
        packed = rng.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)  # [N, K/block, bytes]
        scales = rng.random(n * k // block).astype(np.float32) * 0.01  # [N * K/block]
        inits = [numpy_helper.from_array(packed, "q"), numpy_helper.from_array(scales, "s")]
        if variant == "uint8 zp":  # [N * ceil(K/block * bits / 8)] packed codes
            inits.append(numpy_helper.from_array(
                rng.integers(0, 256, n * -(-(k // block) * bits // 8), dtype=np.uint8), "z"))
        elif variant == "float zp":  # [N * K/block], as the scales
            inits.append(numpy_helper.from_array(rng.random(n * k // block).astype(np.float32) * 2 ** bits, "z"))
        inputs = ["x", "q", "s"] + (["z"] if variant.endswith("zp") else [])
        node = helper.make_node("MatMulNBits", inputs, ["y0" if asym else "y"], domain="com.microsoft", K=k,
                                N=n, bits=bits, block_size=block, accuracy_level=level)
    nodes = [node]
    if asym:  # + (x's block sums [1, K/block]) @ offsets [K/block, N], as the exporter builds it
        inits += [numpy_helper.from_array((rng.random((k // block, n)).astype(np.float32) - 0.5) * 0.01, "o"),
                  numpy_helper.from_array(np.array([0, k // block, block], np.int64), "shape"),
                  numpy_helper.from_array(np.array([-1], np.int64), "axes")]
        nodes += [helper.make_node("Reshape", ["x", "shape"], ["xb"]),
                  helper.make_node("ReduceSum", ["xb", "axes"], ["sums"], keepdims=0),
                  helper.make_node("MatMul", ["sums", "o"], ["c"]), helper.make_node("Add", ["y0", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.use_per_session_threads = False
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", choices=list(SHAPES), default="w1", help="matmul shapes (default %(default)s)")
    p.add_argument("--bits", type=int_list, default=[4, 8], help="comma-separated (default 4,8)")
    p.add_argument("--blocks", type=int_list, default=[32, 64, 128], help="block sizes (default 32,64,128)")
    p.add_argument("--levels", type=int_list, default=[1, 4], help="accuracy levels (default 1,4)")
    p.add_argument("--rounds", type=int, default=100, help="interleaved rounds; the head gets a fifth (default 100)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default %(default)s)")
    p.add_argument("--asymmetric", action="store_true",
                   help="also time each MatMulNBits configuration with the asymmetric blocks' offsets path")
    p.add_argument("--zero-points", action="store_true",
                   help="also time each MatMulNBits configuration with uint8 and with float32 zero points")
    args = p.parse_args(argv)
    ort.set_global_thread_pool_sizes(args.threads, 1)
    variants = [""] + (["offsets"] if args.asymmetric else []) + (["uint8 zp", "float zp"] if args.zero_points else [])
    configs = [("fp32", None, 0, 0, "")] + [
        (f"int{b} b{blk} acc{lv}" + VARIANTS[v], b, blk, lv, v) for b in args.bits
        for blk in args.blocks for lv in args.levels for v in variants]
    print(f"onnxruntime {ort.__version__}, {args.threads} threads; median us per call (ratio to float32)",
          file=sys.stderr)
    print("| matmul (N x K) | " + " | ".join(c[0] for c in configs) + " |")
    print("|---|" + "---:|" * len(configs))
    for name, n, k in SHAPES[args.shapes]:
        sessions = {c[0]: session(n, k, *c[1:]) for c in configs if c[1] is None or k % c[2] == 0}
        x = {"x": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
        result = run_rounds({c: (lambda s=s: s.run(None, x)) for c, s in sessions.items()},
                            max(5, args.rounds // 5 if n > 100_000 else args.rounds), warmup=1)  # interleaved, rotated
        med = {c: float(np.median([smp.ms for smp in v])) * 1e3 for c, v in result.samples.items()}
        print(f"| {name} ({n} x {k}) | " + " | ".join(
            f"{med[c[0]]:.0f} ({med[c[0]] / med['fp32']:.2f})" if c[0] in med else "-" for c in configs) + " |",
            flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
