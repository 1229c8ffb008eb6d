"""Export options: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from shadow_edge.errors import ExportError

QUANTIZATIONS = ("none", "int8", "int4")


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Runtime-only settings (threads, providers) never go into an artifact."""

    force: bool = False  # replace an existing --out directory
    validate: bool = True  # run every graph in onnxruntime against PyTorch and fail on a miss
    atol: float = 1e-4  # allowed max |error| per output, times max(1, max |reference|)
    quantize: str = "none"  # "none" (float32), "int8" or "int4": block-wise decoder and vocabulary weights
    block_size: int = 32  # input features per quantization block (power of 2, >= 16)
    plain_backbone: bool = False  # also export the backbone without the adapter (overhead benchmarks)

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZATIONS:
            raise ExportError(f"--quantize {self.quantize!r} is not supported; choose one of "
                              f"{', '.join(QUANTIZATIONS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ExportError(f"--block-size {self.block_size} must be a power of 2 and >= 16 (e.g. 32, 64, 128)")
        if not self.atol > 0:
            raise ExportError(f"validation tolerance atol must be > 0, got {self.atol}")
