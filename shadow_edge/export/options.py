"""Export options: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from shadow_edge.errors import ExportError

QUANTIZATIONS = ("none",)


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Runtime-only settings (threads, providers) never go into an artifact."""

    force: bool = False  # replace an existing --out directory
    validate: bool = True  # run every graph in onnxruntime against PyTorch and fail on a miss
    atol: float = 1e-4  # allowed max |error| per output, times max(1, max |reference|)
    quantize: str = "none"  # weight quantization; only float32 ("none") today
    plain_backbone: bool = False  # also export the backbone without the adapter (overhead benchmarks)

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZATIONS:
            raise ExportError(f"--quantize {self.quantize!r} is not supported yet; supported: "
                              f"{', '.join(QUANTIZATIONS)} (float32 weights)")
        if not self.atol > 0:
            raise ExportError(f"validation tolerance atol must be > 0, got {self.atol}")
