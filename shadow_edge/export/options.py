"""Export options: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from shadow_edge.errors import ExportError
from shadow_edge.export.draft_vocab import check_draft_args
from shadow_edge.io_spec import ATTENTION_AUTO, ATTENTION_KINDS
from shadow_edge.target import QUANT_COMPUTE, ExecutionTarget, export_target

QUANTIZATIONS = ("none", "int8", "int4")
VALIDATION_METHODS = ("auto", "full", "streamed")  # export/validation_plan.py
# With int8 activations, kernels round each activation block to 8 bits. An artifact's graphs are validated exactly
# through float32-arithmetic twins and its int8 arithmetic by relative RMS error (export/validate_arithmetic.py). An
# adapter pack (validated against its base through the base's own int8 kernels) and a draft head (against the
# head's columns) are checked element by element: on random weights outputs moved by ~2% of their scale; on the
# real SmolLM2-135M, whose activations have outlier channels, single logits by up to 13.7%. Graph bugs are O(100%).
INT8_COMPUTE_ATOL = 0.15
# The default --block-size per scheme: int8 weights in blocks of 16 meet the 1% perplexity target on SmolLM2 in
# every mode (blocks of 32: base_plain +1.65%) for 1.10x the bytes; int4 keeps 32.
DEFAULT_BLOCK = {"none": 32, "int8": 16, "int4": 32}
QUANT_SCHEMES = ("symmetric", "asymmetric", "zero-point")  # export/quantize.py
# The base's decoder linears per --quantize. int4: asymmetric (min/max, Q4_1's form) meets the 5% perplexity target
# on SmolLM2, whose weights come from a Q4_1 GGUF and are kept exactly (symmetric blocks: +44-50%); same bytes as
# symmetric (float16 scale and minimum per block), ~1.2x the kernel time of a symmetric matmul. zero-point (integer
# zero points, the kernels' own input) decodes the demo pair's base_shadow 1.30x faster but drifts it +15.7% there
# (a Q4_1 minimum is no integer step): for bases that come as float weights (benchmarks/results/precision.md).
# The shadow's decoder linears follow the base's by default: the shipped SmolLM2 shadow (initialized from the
# base's layers 0, 1 and 29, trained 77 minutes) drifts +2.4% in shadow_only perplexity with asymmetric int4
# blocks, +3.8% with symmetric ones (the adapter before it: +4.4% / +7.0%; benchmarks/results/quality.md), for
# ~13% slower shadow_only int4 steps (base_shadow 1-3%: benchmarks/results/speed.md).
DEFAULT_SCHEME = {"int8": "symmetric", "int4": "asymmetric"}
# The vocabulary matrices (embeddings, heads) per --quantize: int8 for int4 exports (SmolLM2's tied Q8_0
# embedding is kept exactly; int4 there cost +7-12% in every mode), symmetric.
DEFAULT_VOCAB = {"int8": "int8", "int4": "int8"}


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
    quant_scheme: str | None = None  # the base's decoder linears: "symmetric" / "asymmetric"; None: DEFAULT_SCHEME
    shadow_quant_scheme: str | None = None  # the shadow's decoder linears (same choices); None: as quant_scheme
    vocab_quantize: str | None = None  # the vocabulary matrices: "int8" / "int4"; None: DEFAULT_VOCAB
    plain_backbone: bool = False  # also export the backbone without the adapter (overhead benchmarks)
    attention: str = ATTENTION_AUTO  # "auto": GroupQueryAttention where head_dim % 8 == 0, else ONNX Attention
    ort_format: bool = False  # also write the detached shadow in ONNX Runtime's ORT format (mobile; a weight copy)
    as_base: bool = False  # a base artifact: adapter weights overridable, adapter packs export against it
    draft_vocab: int | None = None  # speculative's draft head keeps this many token rows (export/draft_vocab.py)
    draft_vocab_from: str | None = None  # text (.txt or .jsonl) whose token counts rank them; None: by token id

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZATIONS:
            raise ExportError(f"--quantize {self.quantize!r} is not supported; choose one of "
                              f"{', '.join(QUANTIZATIONS)}")
        if self.block_size is None and self.quantize in DEFAULT_BLOCK:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK[self.quantize])
        if not isinstance(self.block_size, int) or self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ExportError(f"--block-size {self.block_size} must be a power of 2 and >= 16 (e.g. 32, 64, 128)")
        if self.quantize == "none" and (self.quant_scheme or self.shadow_quant_scheme or self.vocab_quantize):
            raise ExportError("--quant-scheme / --shadow-quant-scheme / --vocab-quantize apply to quantized exports; "
                              "add --quantize int4 or int8, or drop them")
        if self.quant_scheme is None and self.quantize in DEFAULT_SCHEME:
            object.__setattr__(self, "quant_scheme", DEFAULT_SCHEME[self.quantize])
        if self.shadow_quant_scheme is None:
            object.__setattr__(self, "shadow_quant_scheme", self.quant_scheme)
        if self.vocab_quantize is None and self.quantize in DEFAULT_VOCAB:
            object.__setattr__(self, "vocab_quantize", DEFAULT_VOCAB[self.quantize])
        for flag, value in (("--quant-scheme", self.quant_scheme), ("--shadow-quant-scheme", self.shadow_quant_scheme)):
            if value is not None and value not in QUANT_SCHEMES:
                raise ExportError(f"{flag} {value!r} is not supported; choose one of {', '.join(QUANT_SCHEMES)}")
        if self.vocab_quantize is not None and self.vocab_quantize not in ("int8", "int4"):
            raise ExportError(f"--vocab-quantize {self.vocab_quantize!r} is not supported; choose int8 or int4")
        if self.quant_compute not in QUANT_COMPUTE:
            raise ExportError(f"--quant-compute {self.quant_compute!r} is not supported; choose one of "
                              f"{', '.join(QUANT_COMPUTE)}")
        if self.attention not in (ATTENTION_AUTO, *ATTENTION_KINDS):
            raise ExportError(f"--attention {self.attention!r} is not supported; choose one of "
                              f"{', '.join((ATTENTION_AUTO, *ATTENTION_KINDS))}")
        if self.validation not in VALIDATION_METHODS:
            raise ExportError(f"--validation {self.validation!r} is not supported; choose one of "
                              f"{', '.join(VALIDATION_METHODS)}")
        check_draft_args(self.draft_vocab, self.draft_vocab_from)
        if not self.atol > 0:
            raise ExportError(f"validation tolerance atol must be > 0, got {self.atol}")

    def quantization_record(self) -> dict | None:
        """The manifest's `model.quantization`: what was quantized how (None: float32)."""
        if self.quantize == "none":
            return None
        return {"scheme": self.quantize, "block_size": self.block_size, "compute": self.quant_compute,
                "base_layers": self.quant_scheme, "shadow_layers": self.shadow_quant_scheme,
                "vocabulary": f"{self.vocab_quantize} symmetric" if self.vocab_quantize != self.quantize
                else f"{self.vocab_quantize} {self.quant_scheme}"}

    @property
    def target(self) -> ExecutionTarget:
        """The execution target the graphs are built for (recorded in the manifest as `target`)."""
        return export_target(self.quantize, self.quant_compute)

    @property
    def validation_atol(self) -> float:
        """The per-element tolerance of pack and draft-head checks: `atol`, widened for int8 activation arithmetic."""
        if self.quantize != "none" and self.quant_compute == "int8":
            return max(self.atol, INT8_COMPUTE_ATOL)
        return self.atol
