"""Block-wise weight quantization (int4 / int8) for onnxruntime's MatMulNBits and GatherBlockQuantized.

Symmetric, per block of `block` input features: scale = max|w| / qmax, q = round(w / scale),
stored unsigned with the ops' default zero point 2^(bits-1), 4-bit values packed two per byte
(low nibble first). The same bytes serve MatMulNBits ([N, K/block, block*bits/8]) and
GatherBlockQuantized ([N, K*bits/8]), so a tied embedding / head is stored once.

`quantize_spec` returns a spec whose quantized weights are replaced by their dequantized
values (exactly what the kernels compute with), so the PyTorch reference used for
validation is the quantized model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from shadow_edge.core.spec import DecoderWeights, ShadowModelSpec

QUANTIZED_LAYER_WEIGHTS = ("q.weight", "k.weight", "v.weight", "o.weight", "gate.weight", "up.weight", "down.weight")
BITS = {"int4": 4, "int8": 8}


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


def quantize_rows(w: torch.Tensor, bits: int, block: int) -> tuple[Quantized, torch.Tensor]:
    """Quantize w [N, K] (K % block == 0); returns the packed form and the dequantized float32 tensor."""
    n, k = w.shape
    blocks = w.detach().float().reshape(n, k // block, block)
    qmax = 2 ** (bits - 1) - 1
    scale = blocks.abs().amax(-1) / qmax  # [N, K / block]
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(blocks / scale[..., None]), -qmax - 1, qmax)
    dequantized = (q * scale[..., None]).reshape(n, k)
    u = (q + 2 ** (bits - 1)).to(torch.uint8)
    if bits == 4:
        u = u[..., 0::2] | (u[..., 1::2] << 4)
    return Quantized(u.numpy(), scale.numpy().astype(np.float32), bits, block), dequantized


def quantize_spec(spec: ShadowModelSpec, scheme: str, block: int) -> tuple[ShadowModelSpec, dict[int, Quantized]]:
    """The spec with decoder linears and vocabulary matrices dequantized, and id(tensor) -> packed form.

    Weights whose input size is not a multiple of `block` stay float32. Adapter weights, norms
    and the explicit shadow's projection stay float32 (small, and the adapter's math stays exact).
    """
    bits = BITS[scheme]
    done: dict[int, torch.Tensor] = {}  # id(original) -> dequantized, so tied tensors stay one object
    packed: dict[int, Quantized] = {}

    def q(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or t.shape[-1] % block:
            return t
        if id(t) not in done:
            qt, deq = quantize_rows(t, bits, block)
            done[id(t)], packed[id(deq)] = deq, qt
        return done[id(t)]

    def stack(w: DecoderWeights) -> DecoderWeights:
        layers = [{k: (q(v) if k in QUANTIZED_LAYER_WEIGHTS else v) for k, v in layer.items()} for layer in w.layers]
        return replace(w, layers=layers, embed=q(w.embed))

    out = replace(spec, base=stack(spec.base), shadow=stack(spec.shadow), lm_head=q(spec.lm_head),
                  shadow_lm_head=q(spec.shadow_lm_head))
    return out, packed
