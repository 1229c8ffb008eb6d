"""The machine under the benchmark: CPU, versions, memory read bandwidth, peak RSS (stdlib + numpy only).

Read bandwidth (`read_bandwidth_gbs`): a numpy streaming-read probe. An array of
`mib` MiB (int64, pages touched once) is split into `threads` contiguous slices; one
Python thread per slice runs `np.bitwise_or.reduce` over its slice in 8 MiB blocks
(numpy releases the GIL inside a large reduction, so the threads read in parallel; OR
is the cheapest reduction, so the loop stays memory-bound, unlike float `sum`'s
pairwise summation). The figure is the best of `passes` passes, bytes / wall time, in
GB/s (1e9 bytes/s), like STREAM's "best". It is measured once per (threads, size) per
process and cached. On a shared machine it is a floor: neighbours' traffic lowers it.

Peak RSS: Linux lets a process reset its high-water mark (`echo 5 > /proc/self/clear_refs`),
so `reset_peak_rss()` before a phase and `peak_rss_bytes()` after it give that phase's
peak (VmHWM). Where the reset is not allowed, the peak is the process lifetime's
(getrusage ru_maxrss) and `reset_peak_rss()` returns False. `release_freed_memory()` (gc +
glibc malloc_trim) runs before each reset so that memory freed by the previous phase
is not counted, nor silently reused, by the next one.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import platform
import resource
import sys
import threading
import time
from importlib import metadata

import numpy as np


def _proc_status(field: str) -> int | None:
    """A `kB` field of /proc/self/status, in bytes (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark; False if the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last successful `reset_peak_rss()` (else since start)."""
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # macOS reports bytes, Linux kB


def rss_bytes() -> int:
    """Current resident set size (0 where unknown)."""
    return _proc_status("VmRSS") or 0


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so the next phase's RSS starts clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that decide CPU kernels (x86: avx2, fma, f16c, avx512*, vnni; arm: asimd, sve...)."""
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile",
              "asimd", "asimddp", "sve", "i8mm")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
            "usable_cores": usable, "memory_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version()}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    import onnxruntime

    from shadow_edge import __version__

    return {"shadow_edge": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


CHUNK_BYTES = 8 << 20  # one reduction per 8 MiB block: >> L2, and enough work per call to release the GIL


def _read_slice(block: np.ndarray) -> None:
    step = CHUNK_BYTES // block.itemsize
    for i in range(0, block.size, step):
        np.bitwise_or.reduce(block[i:i + step])


@functools.cache
def read_bandwidth_gbs(threads: int, mib: int = 1024, passes: int = 7) -> float:
    """Best-of-`passes` streaming read bandwidth with `threads` threads over `mib` MiB, GB/s (cached)."""
    data = np.ones((mib << 20) // 8, dtype=np.int64)  # np.ones touches every page: no page faults while timed
    slices = np.array_split(data, threads)
    best = 0.0
    for _ in range(passes):
        workers = [threading.Thread(target=_read_slice, args=(s,)) for s in slices]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - t0) / 1e9)
    del slices, data
    return best
