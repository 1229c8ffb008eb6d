"""Export memory and time: one `export_artifact` in this process, its allocated memory sampled.

Prints one JSON record: wall seconds, peak RSS (VmHWM) and the high-water mark of anonymous memory
(RssAnon of /proc/self/status, sampled every 5 ms by a thread; mapped checkpoint and artifact pages
are file-backed and reclaimable, so RssAnon is what the export really allocates), both above the
baseline after imports, and the largest float32 tensor of the checkpoint for scale.

    python -m benchmarks.suites.export_memory --base B --adapter A --out ART [--quantize int4] [--no-validate]

--base may be a HF directory or a GGUF file.

Linux only (/proc). tests/export/test_export_bf16.py runs it on a model large enough to show the bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class AnonSampler:
    """The highest RssAnon seen while running (a daemon thread samples every `period` seconds), overall and per
    phase (`phase(name)` starts the next one; the export's progress messages mark them)."""

    def __init__(self, period: float = 0.005):
        self.period, self.peak_kb, self._stop = period, status_kb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.phases: dict[str, int] = {}  # phase -> highest RssAnon (kB) while it ran
        self.seconds: dict[str, float] = {}  # phase -> seconds it ran
        self._phase, self._phase_kb, self._phase_t = "start", self.peak_kb, time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = status_kb("RssAnon")
            self.peak_kb, self._phase_kb = max(self.peak_kb, now), max(self._phase_kb, now)
            time.sleep(self.period)

    def phase(self, name: str) -> None:
        self.phases[self._phase] = max(self.phases.get(self._phase, 0), self._phase_kb, status_kb("RssAnon"))
        now = time.perf_counter()
        self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + now - self._phase_t
        self._phase, self._phase_kb, self._phase_t = name, status_kb("RssAnon"), now

    def __enter__(self) -> "AnonSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.phase("end")
        self.peak_kb = max(self.peak_kb, *self.phases.values())


PHASES = (("reading", "read checkpoint"), ("building", "build graphs"), ("writing weights", "read+convert+write weights"),
          ("weights", "read+convert+write weights"), ("validat", "validate"), ("writing interop", "interop files"))


def phase_of(message: str) -> str:
    """The export phase a progress message starts (or continues)."""
    return next((name for prefix, name in PHASES if message.startswith(prefix)), message.split()[0])


def largest_tensor_bytes(base: Path) -> int:
    """Bytes of the checkpoint's largest tensor in float32 (headers only; a HF directory or a GGUF file)."""
    from shadow_edge.core.checkpoint import read_base

    model = read_base(base)
    tensors = [t for layer in model.weights.layers for t in layer.values()]
    tensors += [t for t in (model.weights.embed, model.weights.norm, model.lm_head) if t is not None]
    return max(t.numel() for t in tensors) * 4


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quantize", default="none", choices=("none", "int8", "int4"))
    p.add_argument("--no-validate", action="store_true")
    p.add_argument("--validation", default="auto", choices=("auto", "full", "streamed"))
    args = p.parse_args(argv)

    from shadow_edge.export import ExportOptions, export_artifact

    base_kb = status_kb("RssAnon")  # after imports
    started = time.perf_counter()
    with AnonSampler() as sampler:
        export_artifact(args.base, args.adapter, args.out, options=ExportOptions(
            force=True, quantize=args.quantize, validate=not args.no_validate, validation=args.validation),
            progress=lambda m: sampler.phase(phase_of(m)))
    record = {"quantize": args.quantize, "validate": not args.no_validate,
              "wall_s": round(time.perf_counter() - started, 2),
              "baseline_anon_mb": base_kb / 1024, "peak_anon_mb": sampler.peak_kb / 1024,
              "anon_above_baseline_mb": (sampler.peak_kb - base_kb) / 1024,
              "peak_rss_mb": status_kb("VmHWM") / 1024,
              "phases_peak_anon_mb": {k: round(v / 1024) for k, v in sampler.phases.items()},
              "phases_s": {k: round(v, 1) for k, v in sampler.seconds.items()},
              "largest_tensor_mb": largest_tensor_bytes(args.base) / 2 ** 20,
              "artifact_mb": sum(f.stat().st_size for f in args.out.iterdir()) / 2 ** 20}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
