"""Drop the resident pages of an artifact's memory-mapped weight files that onnxruntime has finished reading.

onnxruntime maps external weight files (page-aligned `.onnx.data`). Creating a session reads
pages it will not read again: a prepacked weight's original is copied into the kernel's own
layout, and MatMulNBits keeps its scales initializer mapped although the packed copy holds them
too (measured: the scales stayed resident, 0.2 x the int4 weight bytes at block 32). Those clean
file pages count in the process's RSS until the kernel reclaims them under pressure.
`release_mapped(files)` tells the kernel now (`madvise(MADV_DONTNEED)` on this process's mappings
of those files): a page read again later is mapped again from the page cache (a minor fault),
so nothing changes but the resident set. Only mappings without private (copy-on-write) pages
are released, so no written byte is ever discarded. Linux only; elsewhere nothing happens.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable
from pathlib import Path

SMAPS = Path("/proc/self/smaps")
_madvise = None  # libc's madvise, bound on first use (Linux)


def _libc_madvise():
    global _madvise
    if _madvise is None:
        fn = ctypes.CDLL(None, use_errno=True).madvise
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
        _madvise = fn
    return _madvise


def file_mappings(files: Iterable[Path], smaps: Path = SMAPS) -> list[tuple[int, int, str, int, int]]:
    """This process's mappings of `files`: (start, end, path, resident bytes, private-anonymous bytes)."""
    wanted = {os.path.realpath(f) for f in files}
    out: list[tuple[int, int, str, int, int]] = []
    current: list | None = None
    for line in smaps.read_text().splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line: range perms ... path
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            path = head[5] if len(head) > 5 else ""
            current = [lo, hi, path, 0, 0] if path in wanted else None
            if current:
                out.append(current)
        elif current is not None and head[0] in ("Rss:", "Anonymous:"):
            current[3 if head[0] == "Rss:" else 4] = int(head[1]) * 1024
    return [tuple(m) for m in out]


def release_mapped(files: Iterable[Path]) -> int:
    """Drop this process's resident clean pages of `files` (madvise DONTNEED); returns the bytes released."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    try:
        mappings = file_mappings(files)
    except OSError:  # no /proc (a sandbox): keep the pages
        return 0
    released = 0
    for lo, hi, _, resident, private in mappings:
        if resident and not private and _libc_madvise()(lo, hi - lo, mmap.MADV_DONTNEED) == 0:
            released += resident
    return released
