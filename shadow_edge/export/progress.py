"""Export progress: step messages on stderr only when it is a terminal, and a byte meter for the weights phase.

The weights are read from the checkpoint, converted (or quantized) and written one tensor at a time,
so those phases interleave; `WeightsMeter` reports them as one line with bytes written, the time spent
in each phase, the rate and an ETA, through the export's `progress(message)` callback, at most once
every `every` seconds (and always at the end).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from shadow_edge.core.spec import ShadowModelSpec
from shadow_edge.export.quantize import Dequantized


def stderr_progress(message: str) -> None:
    """The CLI's progress: `[shadow-edge] message` on stderr when stderr is a terminal, else nothing."""
    if sys.stderr.isatty():
        print(f"[shadow-edge] {message}", file=sys.stderr, flush=True)


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


class WeightsMeter:
    """`on_weight` for `WeightStore.write`: counts bytes and seconds per phase, reports with rate and ETA."""

    def __init__(self, progress: Callable[[str], None], total: int, making: str = "read+convert",
                 every: float = 1.0, clock: Callable[[], float] = time.perf_counter):
        self.progress, self.total, self.making, self.every, self.clock = progress, max(total, 1), making, every, clock
        self.done = 0
        self.make_s = self.write_s = 0.0
        self.started = self.last = clock()

    def __call__(self, nbytes: int, make_s: float, write_s: float) -> None:
        self.done += nbytes
        self.make_s += make_s
        self.write_s += write_s
        if self.clock() - self.last >= self.every:
            self.last = self.clock()
            self.progress(self.line())

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        total = max(self.total, self.done)  # the total is an estimate
        eta = elapsed * (total - self.done) / max(self.done, 1)
        return (f"weights {gb(self.done)} / ~{gb(total)} ({100 * self.done / total:.0f}%), "
                f"{self.making} {self.make_s:.1f}s, write {self.write_s:.1f}s, "
                f"{self.done / elapsed / 1e6:.0f} MB/s, ETA {eta:.0f}s")

    def finish(self) -> None:
        self.total = self.done
        self.progress(self.line().replace(", ETA 0s", ""))


def _nbytes(t) -> int:
    """Bytes a weight takes in the artifact: float32, or packed values plus float32 scales."""
    if isinstance(t, Dequantized):
        return t.numel() * t.bits // 8 + t.numel() // t.block * 4
    return t.numel() * 4


def estimate_weight_bytes(spec: ShadowModelSpec) -> int:
    """About the bytes of weights an export of `spec` writes (each distinct tensor once; fused copies such as
    q|k|v hold the same bytes as their parts); for the meter's ETA and the free-space check."""
    seen: dict[int, int] = {}

    def add(t) -> None:
        if t is not None:
            seen.setdefault(id(t), _nbytes(t))

    for stack in (spec.base, spec.shadow):
        for layer in stack.layers:
            for t in layer.values():
                add(t)
        add(stack.norm)
        add(stack.embed)
    for t in (spec.lm_head, spec.shadow_lm_head, spec.projection, spec.injection_down, spec.injection_up,
              spec.gate_in, spec.gate_out, spec.transform_in, spec.transform_out):
        add(t)
    if spec.classifier is not None:
        for t in (spec.classifier.weight, spec.classifier.shadow_weight):
            add(t)
    return sum(seen.values())
