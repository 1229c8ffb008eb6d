"""Latency benchmarks of an artifact (`shadow-edge bench`): torch-free (numpy, onnxruntime, stdlib).

    from shadow_edge.bench import BenchOptions, run_bench
    records = run_bench("ART", BenchOptions(modes=("shadow_only", "base_shadow"), threads=2))

Each record is one (mode, workload) configuration with every figure and its provenance
(versions, provider, threads, CPU, artifact hash). matplotlib is imported only to plot.
"""

from shadow_edge.bench.options import BenchOptions
from shadow_edge.bench.runner import run_bench

__all__ = ["BenchOptions", "run_bench"]
