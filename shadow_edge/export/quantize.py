"""Block-wise weight quantization (int4 / int8) for onnxruntime's MatMulNBits and GatherBlockQuantized.

Symmetric, per block of `block` input features: scale = max|w| / qmax, q = round(w / scale),
stored unsigned with the ops' default zero point 2^(bits-1), 4-bit values packed two per byte
(low nibble first). The same bytes serve MatMulNBits ([N, K/block, block*bits/8]) and
GatherBlockQuantized ([N, K*bits/8]), so a tied embedding / head is stored once.

`quantize_spec` returns a spec whose quantized weights are `Dequantized` (lazy): the exporter
writes their packed form as each streams by (`Dequantized.quantized`), and the PyTorch reference
used for validation reads their dequantized values (exactly what the kernels compute with), so the
reference is the quantized model itself. Neither is ever held for the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from shadow_edge.core.lazy_tensor import LazyValues, dense, rows
from shadow_edge.core.spec import DecoderWeights, ShadowModelSpec

QUANTIZED_LAYER_WEIGHTS = ("q.weight", "k.weight", "v.weight", "o.weight", "gate.weight", "up.weight", "down.weight")
BITS = {"int4": 4, "int8": 8}
ROWS_PER_CHUNK = 4096  # rows quantized together: bounds the float temporaries to a few of these rows


@dataclass(frozen=True)
class Quantized:
    """One [N, K] weight, quantized along K."""

    packed: np.ndarray  # uint8 [N, K / block, block * bits / 8]
    scales: np.ndarray  # float32 [N, K / block]
    bits: int
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * self.block

    @staticmethod
    def concat(parts: list["Quantized"]) -> "Quantized":
        """Stack along N (rows), e.g. q|k|v into one qkv weight."""
        return Quantized(np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]),
                         parts[0].bits, parts[0].block)

    def dequantize(self) -> torch.Tensor:
        """The float32 values [N, K] the kernels compute with."""
        u = torch.from_numpy(self.packed)  # [N, K / block, block * bits / 8]
        if self.bits == 4:
            u = torch.stack((u & 0xF, u >> 4), dim=-1).flatten(-2)  # low nibble first
        q = u.to(torch.float32) - 2 ** (self.bits - 1)  # [N, K / block, block]
        return (q * torch.from_numpy(self.scales)[..., None]).reshape(self.shape)


def _codes(w: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes q (as float32, [rows, K / block, block]) and scales [rows, K / block] of rows w [rows, K]."""
    qmax = 2 ** (bits - 1) - 1
    blocks = w.detach().float().reshape(w.shape[0], -1, block)
    scale = blocks.abs().amax(-1) / qmax  # [rows, K / block]
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = (blocks / scale[..., None]).round_().clamp_(-qmax - 1, qmax)  # in place: one float temporary
    return q, scale


def _row_chunks(n: int):
    return (slice(start, min(n, start + ROWS_PER_CHUNK)) for start in range(0, n, ROWS_PER_CHUNK))


def quantize_rows(w: torch.Tensor, bits: int, block: int) -> Quantized:
    """Quantize w [N, K] (K % block == 0) in chunks of rows (float temporaries stay a few chunks large)."""
    n, k = w.shape
    packed = np.empty((n, k // block, block * bits // 8), np.uint8)
    scales = np.empty((n, k // block), np.float32)
    for rows_ in _row_chunks(n):
        q, scale = _codes(w[rows_], bits, block)
        u = (q + 2 ** (bits - 1)).to(torch.uint8)
        if bits == 4:
            u = u[..., 0::2] | (u[..., 1::2] << 4)
        packed[rows_], scales[rows_] = u.numpy(), scale.numpy()
    return Quantized(packed, scales, bits, block)


def dequantized_rows(w: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """`quantize_rows(w).dequantize()` [N, K], equal to the last bit, without packing and unpacking the codes
    (q * scale of the same float32 q and scale): what the validation reference computes with, ~2x faster."""
    n, k = w.shape
    out = torch.empty((n, k), dtype=torch.float32)
    for rows_ in _row_chunks(n):
        q, scale = _codes(w[rows_], bits, block)
        out[rows_] = q.mul_(scale[..., None]).reshape(-1, k)
    return out


class Dequantized(LazyValues):
    """A weight [N, K] as quantized: `quantized()` its packed form, `load()` the float32 values the kernels
    compute with. Both are computed from the (possibly lazy) source on each call and kept by nobody."""

    __slots__ = ("source", "bits", "block")

    def __init__(self, source, bits: int, block: int):
        self.source, self.bits, self.block = source, bits, block

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.source.shape)

    def quantized(self) -> Quantized:
        return quantize_rows(dense(self.source), self.bits, self.block)

    def load(self) -> torch.Tensor:
        return dequantized_rows(dense(self.source), self.bits, self.block)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The dequantized rows `index` only (rows are quantized independently: equal to `load()[index]`)."""
        return dequantized_rows(rows(self.source, index), self.bits, self.block)


def quantize_spec(spec: ShadowModelSpec, scheme: str, block: int) -> ShadowModelSpec:
    """The spec with decoder linears and vocabulary matrices replaced by their `Dequantized` forms.

    Weights whose input size is not a multiple of `block` stay float32. Adapter weights, norms
    and the explicit shadow's projection stay float32 (small, and the adapter's math stays exact).
    Tied tensors stay one object.
    """
    bits = BITS[scheme]
    done: dict[int, Dequantized] = {}  # id(original) -> its quantized form

    def q(t):
        if t is None or t.shape[-1] % block:
            return t
        return done.setdefault(id(t), Dequantized(t, bits, block))

    def stack(w: DecoderWeights) -> DecoderWeights:
        layers = [{k: (q(v) if k in QUANTIZED_LAYER_WEIGHTS else v) for k, v in layer.items()} for layer in w.layers]
        return replace(w, layers=layers, embed=q(w.embed))

    return replace(spec, base=stack(spec.base), shadow=stack(spec.shadow), lm_head=q(spec.lm_head),
                   shadow_lm_head=q(spec.shadow_lm_head))
