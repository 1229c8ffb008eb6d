"""Which validation an export runs: full (the PyTorch reference beside the sessions) or streamed (block-wise).

`--validation auto` (the default) picks full validation when the float32 reference and the
artifact's weights (what the onnxruntime sessions hold) fit together in half the memory
available (the kernel's MemAvailable), else streamed validation (export/validate_streamed.py:
one decoder layer of the reference at a time). The half is headroom for activations, kernel
layouts and other processes: the checkpoint is read lazily, so the export holds none of the
reference before validation, and full validation of Qwen3-1.7B/4B shapes chosen without that
headroom either ran past 10 minutes or took 17 GB on a 24 GB machine (benchmarks/results/big-models.md). `full` / `streamed` force a method. The choice and its figures go into the
manifest's `validation.memory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shadow_edge.core.spec import ShadowModelSpec, expected_layer_shapes
from shadow_edge.export.validate import validate_graphs
from shadow_edge.export.validate_streamed import validate_streamed
from shadow_edge.manifest_schema import METHOD_FULL, METHOD_STREAMED

METHOD_AUTO = "auto"
VALIDATORS: dict[str, Callable[..., dict]] = {METHOD_FULL: validate_graphs, METHOD_STREAMED: validate_streamed}
METHODS = (METHOD_AUTO, *VALIDATORS)
FULL_SHARE = 0.5  # auto: full validation only when reference + sessions fit in this share of the memory available


@dataclass(frozen=True)
class ValidationPlan:
    """The method chosen and the figures it was chosen from (bytes)."""

    method: str  # "full" or "streamed"
    requested: str  # "auto", "full" or "streamed"
    reference_bytes: int  # float32 weights of the PyTorch reference
    session_bytes: int  # the artifact's weights, which the sessions hold
    available_bytes: int | None  # None: unknown on this system (auto then picks full)

    def __post_init__(self) -> None:
        if self.method not in VALIDATORS or self.requested not in METHODS:
            raise ValueError(f"validation method {self.method!r} / requested {self.requested!r}: expected one of "
                             f"{', '.join(METHODS)}")

    def reason(self) -> str:
        need = f"reference {self.reference_bytes / 1e9:.2f} GB + sessions {self.session_bytes / 1e9:.2f} GB"
        if self.requested != METHOD_AUTO:
            return f"requested; {need}"
        have = "unknown" if self.available_bytes is None else f"{self.available_bytes / 1e9:.2f} GB"
        return (f"{need} {'fit in' if self.method == METHOD_FULL else 'exceed'} {FULL_SHARE:.0%} of {have} "
                "available")

    def to_dict(self) -> dict:
        return {"requested": self.requested, "reference_bytes": self.reference_bytes,
                "session_bytes": self.session_bytes, "available_bytes": self.available_bytes}


def plan_validation(requested: str, spec: ShadowModelSpec, session_bytes: int) -> ValidationPlan:
    ref = reference_bytes(spec)
    available = available_bytes()
    method = requested
    if requested == METHOD_AUTO:
        fits = available is None or ref + session_bytes <= FULL_SHARE * available
        method = METHOD_FULL if fits else METHOD_STREAMED
    return ValidationPlan(method, requested, ref, session_bytes, available)


def reference_bytes(spec: ShadowModelSpec) -> int:
    """float32 bytes of every weight of the reference; decoder layers from their configs (a lazily read spec
    is not loaded), each shared tensor once."""
    total = 0
    for part in (spec.base, spec.shadow):
        per_layer = sum(math.prod(s) for s in expected_layer_shapes(part.config).values())
        total += per_layer * part.config.num_layers + part.norm.numel()
    seen: set[int] = set()
    for t in (spec.base.embed, spec.shadow.embed, spec.lm_head, spec.shadow_lm_head, spec.projection,
              spec.injection_down, spec.injection_up, spec.gate_in, spec.gate_out, spec.transform_in,
              spec.transform_out):
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return 4 * total


def available_bytes() -> int | None:
    """The kernel's MemAvailable; None where /proc is absent."""
    return _kib_fields(Path("/proc/meminfo")).get("MemAvailable")


def _kib_fields(path: Path) -> dict[str, int]:
    """`Name:  123 kB` lines of a /proc file, in bytes; {} where it cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024
    return out
