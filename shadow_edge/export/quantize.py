"""Block-wise weight quantization (int4 / int8) for onnxruntime's MatMulNBits and GatherBlockQuantized.

Per block of `block` input features, codes u in 0..2^bits-1 stored with the ops' default zero point
z = 2^(bits-1) (or, for zero-point, one of their own), 4-bit values packed two per byte (low nibble first).
Three schemes (`SCHEMES`):
- symmetric: scale = max|w| / qmax, u = round(w / scale) + z; w ~ scale * (u - z).
- asymmetric (min/max, llama.cpp's Q4_1 form w = d * q + m): scale = (max - min) / (2^bits - 1),
  u = round((w - min) / scale); w ~ scale * (u - z) + offset, offset = min + z * scale. Scale and min are
  stored as float16 (as Q4_1 stores them: 5 bits per weight at blocks of 32, the bytes of symmetric int4 with
  float32 scales), the codes computed against the rounded values. The kernels compute x @ W.T as
  MatMulNBits(x, u, scale) plus the block sums of x times the offsets (graphs.py); onnxruntime's own float
  zero points would be the same math, but its CPU kernel dequantizes the whole matrix on every call (8-20x
  slower), and uint8 zero points cannot hold a Q4_1 block's minimum. Weights that already lie on a Q4_1 grid
  (a GGUF-sourced base) keep their codes, scales and minima exactly.
- zero-point (min/max on an integer grid, as onnxruntime's own quantizer and onnxruntime-genai's asymmetric int4):
  the range [min(w, 0), max(w, 0)] in 2^bits - 1 steps, scale = range / (2^bits - 1), an integer zero point
  z = round(-min / scale) per block (uint8, 4-bit packed two per byte), u = round(w / scale) + z; w ~ scale * (u - z).
  MatMulNBits and GatherBlockQuantized take the zero points natively: no offsets path, the kernel time of
  symmetric blocks, the accuracy of a min/max grid for weights of any origin, but not a Q4_1 block's float minimum.
The same bytes serve MatMulNBits ([N, K/block, block*bits/8]) and GatherBlockQuantized ([N, K*bits/8]),
so a tied embedding / head is stored once.

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
from shadow_edge.errors import ExportError

QUANTIZED_LAYER_WEIGHTS = ("q.weight", "k.weight", "v.weight", "o.weight", "gate.weight", "up.weight", "down.weight")
BITS = {"int4": 4, "int8": 8}
SYMMETRIC, ASYMMETRIC, ZERO_POINT = "symmetric", "asymmetric", "zero-point"
SCHEMES = (SYMMETRIC, ASYMMETRIC, ZERO_POINT)
ROWS_PER_CHUNK = 4096  # rows quantized together: bounds the float temporaries to a few of these rows


@dataclass(frozen=True)
class Quantized:
    """One [N, K] weight, quantized along K."""

    packed: np.ndarray  # uint8 [N, K / block, block * bits / 8]
    scales: np.ndarray  # float32 [N, K / block]
    bits: int
    block: int
    mins: np.ndarray | None = None  # float32 [N, K / block] (asymmetric; float16 values, as scales then)
    zero_points: np.ndarray | None = None  # uint8 [N, K / block] (zero-point): each block's z, unpacked

    @property
    def offsets(self) -> np.ndarray | None:
        """float32 [N, K / block] (asymmetric): w = scale * (u - 2^(bits-1)) + offset."""
        return None if self.mins is None else _offsets(self.mins, self.scales, self.bits)

    @property
    def packed_zero_points(self) -> np.ndarray | None:
        """uint8 [N, ceil(K / block * bits / 8)] (zero-point): as MatMulNBits and GatherBlockQuantized read them,
        4-bit values two per byte (low nibble first, a row's odd last block in a byte of its own)."""
        z = self.zero_points
        if z is None or self.bits == 8:
            return z
        z = np.pad(z, ((0, 0), (0, z.shape[1] % 2)))
        return np.ascontiguousarray(z[:, 0::2] | (z[:, 1::2] << 4))

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * self.block

    @staticmethod
    def concat(parts: list["Quantized"]) -> "Quantized":
        """Stack along N (rows), e.g. q|k|v into one qkv weight."""
        mins = None if parts[0].mins is None else np.concatenate([p.mins for p in parts])
        zero_points = None if parts[0].zero_points is None else np.concatenate([p.zero_points for p in parts])
        return Quantized(np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]),
                         parts[0].bits, parts[0].block, mins, zero_points)

    def dequantize(self) -> torch.Tensor:
        """The float32 values [N, K] the kernels compute with."""
        u = torch.from_numpy(self.packed)  # [N, K / block, block * bits / 8]
        if self.bits == 4:
            u = torch.stack((u & 0xF, u >> 4), dim=-1).flatten(-2)  # low nibble first
        z = 2 ** (self.bits - 1) if self.zero_points is None else torch.from_numpy(self.zero_points)[..., None]
        q = u.to(torch.float32) - z  # [N, K / block, block]
        mins = None if self.mins is None else torch.from_numpy(self.mins)
        return _values(q, torch.from_numpy(self.scales), mins, self.bits).reshape(self.shape)


def _offsets(mins, scales, bits: int):
    """min + 2^(bits-1) * scale, in float32 (numpy or torch: the same IEEE operations as the graph's)."""
    return mins + 2 ** (bits - 1) * scales


def _values(q: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor | None, bits: int) -> torch.Tensor:
    """q * scale (+ offset) per block, in place on q [rows, K / block, block]: the one formula of both schemes."""
    q.mul_(scale[..., None])
    return q if mins is None else q.add_(_offsets(mins, scale, bits)[..., None])


def _codes(w: torch.Tensor, bits: int, block: int, scheme: str = SYMMETRIC,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Centered codes q = u - z (as float32, [rows, K / block, block]; z = 2^(bits-1) but for zero-point),
    scales [rows, K / block], minima [rows, K / block] (asymmetric, else None) and zero points z [rows, K / block]
    (zero-point, else None) of rows w [rows, K]."""
    blocks = w.detach().float().reshape(w.shape[0], -1, block)
    if scheme == SYMMETRIC:
        qmax = 2 ** (bits - 1) - 1
        scale = blocks.abs().amax(-1) / qmax  # [rows, K / block]
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = (blocks / scale[..., None]).round_().clamp_(-qmax - 1, qmax)  # in place: one float temporary
        return q, scale, None, None
    if scheme == ZERO_POINT:
        umax = 2 ** bits - 1
        lo, hi = blocks.amin(-1).clamp(max=0), blocks.amax(-1).clamp(min=0)  # the range holds 0 exactly
        scale = (hi - lo) / umax  # [rows, K / block]
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        z = (-lo / scale).round_().clamp_(0, umax)  # [rows, K / block]
        q = (blocks / scale[..., None]).round_().add_(z[..., None]).clamp_(0, umax).sub_(z[..., None])
        return q, scale, None, z
    lo, hi = blocks.amin(-1), blocks.amax(-1)  # [rows, K / block]
    scale = ((hi - lo) / (2 ** bits - 1)).half().float()  # stored as float16; codes against the stored values
    lo = lo.half().float()
    if not (torch.isfinite(scale).all() and torch.isfinite(lo).all()):
        raise ExportError(f"asymmetric int{bits} quantization: a weight block's range exceeds float16 "
                          f"(|w| > 65504), so its scale and minimum cannot be stored; export with "
                          f"--quant-scheme symmetric")
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = blocks.sub(lo[..., None]).div_(scale[..., None]).round_().clamp_(0, 2 ** bits - 1)
    return q.sub_(2 ** (bits - 1)), scale, lo, None


def _row_chunks(n: int):
    return (slice(start, min(n, start + ROWS_PER_CHUNK)) for start in range(0, n, ROWS_PER_CHUNK))


def quantize_rows(w: torch.Tensor, bits: int, block: int, scheme: str = SYMMETRIC) -> Quantized:
    """Quantize w [N, K] (K % block == 0) in chunks of rows (float temporaries stay a few chunks large)."""
    n, k = w.shape
    packed = np.empty((n, k // block, block * bits // 8), np.uint8)
    scales = np.empty((n, k // block), np.float32)
    mins = np.empty((n, k // block), np.float32) if scheme == ASYMMETRIC else None
    zero_points = np.empty((n, k // block), np.uint8) if scheme == ZERO_POINT else None
    for rows_ in _row_chunks(n):
        q, scale, lo, z = _codes(w[rows_], bits, block, scheme)
        u = (q + (2 ** (bits - 1) if z is None else z[..., None])).to(torch.uint8)
        if bits == 4:
            u = u[..., 0::2] | (u[..., 1::2] << 4)
        packed[rows_], scales[rows_] = u.numpy(), scale.numpy()
        if mins is not None:
            mins[rows_] = lo.numpy()
        if zero_points is not None:
            zero_points[rows_] = z.to(torch.uint8).numpy()
    return Quantized(packed, scales, bits, block, mins, zero_points)


def dequantized_rows(w: torch.Tensor, bits: int, block: int, scheme: str = SYMMETRIC) -> torch.Tensor:
    """`quantize_rows(w).dequantize()` [N, K], equal to the last bit, without packing and unpacking the codes
    (the same float32 q, scale and offset): what the validation reference computes with, ~2x faster."""
    n, k = w.shape
    out = torch.empty((n, k), dtype=torch.float32)
    for rows_ in _row_chunks(n):
        q, scale, lo, _ = _codes(w[rows_], bits, block, scheme)
        out[rows_] = _values(q, scale, lo, bits).reshape(-1, k)
    return out


class Dequantized(LazyValues):
    """A weight [N, K] as quantized: `quantized()` its packed form, `load()` the float32 values the kernels
    compute with. Both are computed from the (possibly lazy) source on each call and kept by nobody."""

    __slots__ = ("source", "bits", "block", "scheme")

    def __init__(self, source, bits: int, block: int, scheme: str = SYMMETRIC):
        self.source, self.bits, self.block, self.scheme = source, bits, block, scheme

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.source.shape)

    def quantized(self) -> Quantized:
        return quantize_rows(dense(self.source), self.bits, self.block, self.scheme)

    def load(self) -> torch.Tensor:
        return dequantized_rows(dense(self.source), self.bits, self.block, self.scheme)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The dequantized rows `index` only (rows are quantized independently: equal to `load()[index]`)."""
        return dequantized_rows(rows(self.source, index), self.bits, self.block, self.scheme)


def quantize_spec(spec: ShadowModelSpec, quantize: str, block: int, scheme: str = SYMMETRIC,
                  vocab: str | None = None, shadow_scheme: str | None = None) -> ShadowModelSpec:
    """The spec with decoder linears and vocabulary matrices replaced by their `Dequantized` forms.

    The base's decoder linears `quantize` ("int4"/"int8") in `scheme`, the shadow's in `shadow_scheme` (None:
    `scheme`); the vocabulary matrices (embeddings, heads) `vocab` (None: as `quantize`), in `scheme` when that
    is `quantize`, else symmetric. Weights whose input size is not a multiple of `block` stay float32. Adapter
    weights, norms and the explicit shadow's projection stay float32 (small, and the adapter's math stays
    exact). Tied tensors stay one object.
    """
    bits, vocab_bits = BITS[quantize], BITS[vocab or quantize]
    vocab_scheme = scheme if vocab_bits == bits else SYMMETRIC
    done: dict[int, Dequantized] = {}  # id(original) -> its quantized form

    def q(t, b: int, sch: str):
        if t is None or t.shape[-1] % block:
            return t
        return done.setdefault(id(t), Dequantized(t, b, block, sch))

    def stack(w: DecoderWeights, sch: str) -> DecoderWeights:
        layers = [{k: (q(t, bits, sch) if k in QUANTIZED_LAYER_WEIGHTS else t) for k, t in layer.items()}
                  for layer in w.layers]
        return replace(w, layers=layers, embed=q(w.embed, vocab_bits, vocab_scheme))

    return replace(spec, base=stack(spec.base, scheme), shadow=stack(spec.shadow, shadow_scheme or scheme),
                   lm_head=q(spec.lm_head, vocab_bits, vocab_scheme),
                   shadow_lm_head=q(spec.shadow_lm_head, vocab_bits, vocab_scheme))


def quantize_as_recorded(spec: ShadowModelSpec, record: dict) -> ShadowModelSpec:
    """`quantize_spec` as a manifest's `model.quantization` records it (artifacts older than the schemes:
    symmetric everywhere, the vocabulary as the layers)."""
    return quantize_spec(spec, record["scheme"], int(record["block_size"]), record.get("base_layers", SYMMETRIC),
                         record.get("vocabulary", record["scheme"]).split()[0],
                         record.get("shadow_layers", SYMMETRIC))
