"""Export options: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from shadow_edge.errors import ExportError
from shadow_edge.io_spec import ATTENTION_AUTO, ATTENTION_KINDS

QUANTIZATIONS = ("none", "int8", "int4")
VALIDATION_METHODS = ("auto", "full", "streamed")  # export/validation_plan.py
QUANT_COMPUTE = {"float32": 1, "int8": 4}  # -> MatMulNBits accuracy_level
# With int8 activations, kernels round each activation block to 8 bits. On random weights outputs moved by ~2%
# of their scale (Qwen3-0.6B shape); on the real SmolLM2-135M, whose activations have outlier channels, single
# logits and cached keys moved by up to 13.7% of their scale (int8 weights, blocks of 32) while held-out
# perplexity moved by at most 1.65% (0.44% with blocks of 16). Graph bugs are O(100%): validation allows 15%.
INT8_COMPUTE_ATOL = 0.15
# The default --block-size per scheme: int8 weights in blocks of 16 meet the 1% perplexity target on SmolLM2 in
# every mode (blocks of 32: base_plain +1.65%) for 1.10x the bytes; int4 keeps 32.
DEFAULT_BLOCK = {"none": 32, "int8": 16, "int4": 32}


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Runtime-only settings (threads, providers) never go into an artifact."""

    force: bool = False  # replace an existing --out directory
    validate: bool = True  # run every graph in onnxruntime against PyTorch and fail on a miss
    validation: str = "auto"  # "full", "streamed" (one reference layer at a time) or "auto": full where both fit
    atol: float = 1e-4  # allowed max |error| per output, times max(1, max |reference|)
    quantize: str = "none"  # "none" (float32), "int8" or "int4": block-wise decoder and vocabulary weights
    block_size: int | None = None  # input features per quantization block (power of 2, >= 16); None: DEFAULT_BLOCK
    quant_compute: str = "int8"  # MatMulNBits arithmetic: "int8" activations (fast) or "float32" (exact)
    plain_backbone: bool = False  # also export the backbone without the adapter (overhead benchmarks)
    attention: str = ATTENTION_AUTO  # "auto": GroupQueryAttention where head_dim % 8 == 0, else ONNX Attention
    ort_format: bool = False  # also write the detached shadow in ONNX Runtime's ORT format (mobile; a weight copy)
    as_base: bool = False  # a base artifact: adapter weights overridable, adapter packs export against it

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZATIONS:
            raise ExportError(f"--quantize {self.quantize!r} is not supported; choose one of "
                              f"{', '.join(QUANTIZATIONS)}")
        if self.block_size is None and self.quantize in DEFAULT_BLOCK:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK[self.quantize])
        if not isinstance(self.block_size, int) or self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ExportError(f"--block-size {self.block_size} must be a power of 2 and >= 16 (e.g. 32, 64, 128)")
        if self.quant_compute not in QUANT_COMPUTE:
            raise ExportError(f"--quant-compute {self.quant_compute!r} is not supported; choose one of "
                              f"{', '.join(QUANT_COMPUTE)}")
        if self.attention not in (ATTENTION_AUTO, *ATTENTION_KINDS):
            raise ExportError(f"--attention {self.attention!r} is not supported; choose one of "
                              f"{', '.join((ATTENTION_AUTO, *ATTENTION_KINDS))}")
        if self.validation not in VALIDATION_METHODS:
            raise ExportError(f"--validation {self.validation!r} is not supported; choose one of "
                              f"{', '.join(VALIDATION_METHODS)}")
        if not self.atol > 0:
            raise ExportError(f"validation tolerance atol must be > 0, got {self.atol}")

    @property
    def validation_atol(self) -> float:
        """The tolerance validation applies: `atol`, widened for int8 activation arithmetic."""
        if self.quantize != "none" and self.quant_compute == "int8":
            return max(self.atol, INT8_COMPUTE_ATOL)
        return self.atol
