"""The ONNX graphs of an artifact, built from a `ShadowModelSpec` (the math of core/model.py).

`shadow`: embeddings -> shadow layers -> norm -> projection = shadow_hidden_states.
`backbone`: base layers with injection/update fed by shadow_hidden_states -> final-normed hidden.
`lm_head` / `shadow_lm_head`: hidden [b, n, d] -> logits (MatMul on the head stored as [d, vocab]; a tied
embedding table is stored twice in float32, as [vocab, d] rows for the Gather and [d, vocab] for the head;
quantized: MatMulNBits and GatherBlockQuantized over the same packed bytes, stored once; asymmetric blocks add
their per-block offsets: x's block sums times the offsets for a matmul, the gathered offsets for an embedding;
float16 scales and minimums are cast and combined in the graph, an adapter's stored as float32 scales and offsets,
see `_half`); zero-point blocks give the ops their packed zero points, nothing more).
Fusions done here: q|k|v and gate|up weights concatenated, alpha folded into the injection
up-projection. Attention is a kind chosen per graph (export/attention.py) and recorded on the builder.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from shadow_edge import io_spec
from shadow_edge.adapter_pack import is_adapter_weight
from shadow_edge.core.arch import FULL, SLIDING, DecoderConfig
from shadow_edge.core.lazy_tensor import dense
from shadow_edge.core.spec import ShadowModelSpec
from shadow_edge.export.attention import ATTENTION, AttnInputs
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.export.quantize import ASYMMETRIC, SYMMETRIC, ZERO_POINT, Dequantized, Quantized

NEG = float(np.finfo(np.float32).min)  # finite: fully masked (padding) rows stay finite


def _np(t: torch.Tensor) -> np.ndarray:
    return dense(t).detach().to(torch.float32).cpu().numpy()


class Tensors:
    """Names shared tensors by object identity (the same tensor is one ONNX initializer), and emits the
    ops that read weights: float32 MatMul / Gather, or their block-quantized forms for the spec's
    `Dequantized` weights (export/quantize.py), quantized when the store writes them."""

    def __init__(self, accuracy_level: int = 1) -> None:
        self._names: dict[int, str] = {}
        self.accuracy_level = accuracy_level  # MatMulNBits compute: 1 = float32, 4 = int8 activations

    def raw(self, b: GraphBuilder, t: torch.Tensor, name: str) -> str:
        name = self._names.setdefault(id(t), name)
        return b.weight(name, lambda: _np(t))

    def _transposed(self, b: GraphBuilder, t: torch.Tensor, name: str) -> str:
        """A float32 head matrix [out, d] stored as [d, out] (key `<name>.T`): MatMul reads it as it lies, where
        Gemm(transB) repacks the whole matrix on every call (one position: 1.5x slower at W1, 6x at `small`). A tied
        embedding keeps its own [vocab, d] rows: gathering columns of [d, vocab] touches d pages per token."""
        name = self._names.setdefault(id(t), name)
        return b.weight(f"{name}.T", lambda: _np(dense(t).T))

    def linear(self, b: GraphBuilder, x: str, key: str, parts: list[torch.Tensor], tag: str) -> str:
        """x @ concat(parts).T for weights [out, in] stacked along out (q|k|v, gate|up)."""
        if all(isinstance(t, Dequantized) for t in parts):
            quantize = (parts[0].quantized if len(parts) == 1 else
                        lambda: Quantized.concat([p.quantized() for p in parts]))
            shape = (sum(p.shape[0] for p in parts), parts[0].shape[1])
            return self._matmul_nbits(b, x, key, _Once(quantize, parts[0].scheme), shape, parts[0], tag,
                                      self.accuracy_level)
        # [in, sum(out)]: the transposed parts concatenated straight into one contiguous copy
        fused = b.weight(key, lambda: _np(torch.cat([dense(p).T for p in parts], dim=1)))
        return b.op("MatMul", [x, fused], tag=f"{tag}/MatMul")

    def embed(self, b: GraphBuilder, t: torch.Tensor, name: str, ids: str) -> str:
        """Rows of the [vocab, d] table for `ids` [b, s] -> [b, s, d]."""
        if not isinstance(t, Dequantized):
            return b.op("Gather", [self.raw(b, t, name), ids], axis=0, tag="embed/Gather")
        name = self._names.setdefault(id(t), name)
        qw = _Once(t.quantized, t.scheme)
        data = b.weight(f"{name}.quantized_rows", lambda: qw.packed().reshape(t.shape[0], -1))
        if t.scheme != ASYMMETRIC or is_adapter_weight(name):
            scales = b.weight(f"{name}.row_scales", qw.scales)  # same bytes as the head's scales
        else:
            scales = _half(b, f"{name}.row_scales", qw.scales)  # [vocab, K/block]
        zero_points = [b.weight(f"{name}.row_zero_points", qw.zero_points)] if qw.zero_point else []  # packed
        rows = b.op("GatherBlockQuantized", [data, ids, scales, *zero_points], domain="com.microsoft", bits=t.bits,
                    block_size=t.block, gather_axis=0, quantize_axis=1, tag="embed/GatherBlockQuantized")
        if t.scheme != ASYMMETRIC:
            return rows
        # asymmetric: each block of a row + its offset: [b, s, K/block, block] + [b, s, K/block, 1]
        if is_adapter_weight(name):  # a pack's slot: stored as the kernels read it (_half)
            offsets = b.weight(f"{name}.row_offsets", qw.offsets)  # [vocab, K/block]
        else:
            offsets = _offsets(b, _half(b, f"{name}.row_mins", qw.mins), scales, t.bits)  # [vocab, K/block]
        blocks = b.const([0, 0, t.shape[1] // t.block, t.block])
        shifted = b.op("Add", [b.op("Reshape", [rows, blocks]),
                               b.op("Unsqueeze", [b.op("Gather", [offsets, ids], axis=0, tag="embed/offsets/Gather"),
                                                  b.const([-1])])], tag="embed/offsets/Add")
        return b.op("Reshape", [shifted, b.const([0, 0, t.shape[1]])])

    def head(self, b: GraphBuilder, hidden: str, t: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> str:
        """hidden [b, n, d] -> logits [b, n, vocab] against the [vocab, d] matrix `t` (+ bias [vocab]: label heads,
        which are never quantized)."""
        if isinstance(t, Dequantized):
            name = self._names.setdefault(id(t), name)
            return self._matmul_nbits(b, hidden, name, _Once(t.quantized, t.scheme), tuple(t.shape), t, "lm_head",
                                      self.accuracy_level)
        logits = b.op("MatMul", [hidden, self._transposed(b, t, name)], tag="lm_head/MatMul")  # [b, n, vocab]
        if bias is None:
            return logits
        return b.op("Add", [logits, self.raw(b, bias, f"{name}.bias")], tag="lm_head/Add")

    @staticmethod
    def _matmul_nbits(b: GraphBuilder, x: str, key: str, qw: "_Once", shape: tuple[int, int], how: Dequantized,
                      tag: str, accuracy_level: int) -> str:
        """x @ W.T for W [N, K] = `shape`, quantized as `how` says (`qw` makes the packed form when written)."""
        n, k = shape
        data = b.weight(f"{key}.quantized", qw.packed)
        if how.scheme != ASYMMETRIC or is_adapter_weight(key):
            scales = b.weight(f"{key}.scales", lambda: qw.scales().reshape(-1))
        else:
            scales = _half(b, f"{key}.scales", lambda: qw.scales().reshape(-1))  # [N * K/block]
        zero_points = [b.weight(f"{key}.zero_points", lambda: qw.zero_points().reshape(-1))] if qw.zero_point else []
        y = b.op("MatMulNBits", [x, data, scales, *zero_points], domain="com.microsoft", K=k, N=n, bits=how.bits,
                 block_size=how.block, accuracy_level=accuracy_level, tag=f"{tag}/MatMulNBits")  # [b, s, N]
        if how.scheme != ASYMMETRIC:
            return y
        # asymmetric: + sum over blocks of (x's block sum) * offset = block sums [b, s, K/block] @ offsets.T
        if is_adapter_weight(key):  # a pack's slot: stored as the kernels read it (_half)
            offsets = b.weight(f"{key}.offsets", lambda: np.ascontiguousarray(qw.offsets().T))  # [K/block, N]
        else:
            scales_t = b.op("Transpose", [b.op("Reshape", [scales, b.const([n, k // how.block])])])  # [K/block, N]
            offsets = _offsets(b, _half(b, f"{key}.mins", lambda: qw.mins().T), scales_t, how.bits)  # [K/block, N]
        sums = b.op("ReduceSum", [b.op("Reshape", [x, b.const([0, 0, k // how.block, how.block])]), b.const([-1])],
                    keepdims=0, tag=f"{tag}/block_sums")  # [b, s, K/block]
        return b.op("Add", [y, b.op("MatMul", [sums, offsets], tag=f"{tag}/offsets/MatMul")], tag=f"{tag}/offsets/Add")


def _half(b: GraphBuilder, key: str, make: Callable[[], np.ndarray]) -> str:
    """A float32 weight whose values are float16 numbers, stored as float16 (`<key>_f16`) and cast back: the
    Cast of an initializer is folded when onnxruntime loads the graph (kernels prepack the float32 result).
    Not for an adapter pack's slots (adapter weights): onnxruntime folds before a pack's session swaps in the
    pack's initializers, so the folded values would be the base's own; those are stored as the kernels read them
    (float32 scales, offsets computed), 4 more bytes per block."""
    return b.op("Cast", [b.weight(f"{key}_f16", lambda: np.ascontiguousarray(make()).astype(np.float16))], to=1,
                tag=f"{key}/Cast")


def _offsets(b: GraphBuilder, mins: str, scales: str, bits: int) -> str:
    """min + 2^(bits-1) * scale (quantize._offsets), from initializers only: folded at load."""
    return b.op("Add", [mins, b.op("Mul", [scales, b.const(float(2 ** (bits - 1)), np.float32)])])


class _Once:
    """One weight's quantization, shared by its packed bytes, scales (and offsets or zero points): made for
    whichever part is written first and let go once all were served (the store writes them one after the other)."""

    def __init__(self, make: Callable[[], Quantized], scheme: str = SYMMETRIC) -> None:
        self.make, self.value, self.served = make, None, set()
        self.parts = 2 if scheme == SYMMETRIC else 3
        self.zero_point = scheme == ZERO_POINT  # the ops' own zero points input

    def packed(self) -> np.ndarray:
        return self._part("packed")

    def scales(self) -> np.ndarray:
        return self._part("scales")

    def mins(self) -> np.ndarray:
        return self._part("mins")

    def offsets(self) -> np.ndarray:
        return self._part("offsets")

    def zero_points(self) -> np.ndarray:
        return self._part("packed_zero_points")  # [N, ceil(K/block * bits/8)]

    def _part(self, part: str) -> np.ndarray:
        if self.value is None:
            self.value = self.make()
        out = getattr(self.value, part)
        self.served.add(part)
        if len(self.served) == self.parts:
            self.value, self.served = None, set()
        return out


def _rms(b: GraphBuilder, x: str, w: str, eps: float) -> str:
    return b.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=eps, stash_type=1)


def _add_norm(b: GraphBuilder, x: str, skip: str, norm: list[str] | None, eps: float, tag: str) -> tuple[str, str]:
    """(Norm(x + skip), x + skip): onnxruntime's fused SkipSimplifiedLayerNormalization for `norm` = [weight]
    (RMSNorm); Add then LayerNormalization for [weight, bias] (LayerNorm), the Add named `tag`: onnxruntime's
    fused SkipLayerNormalization takes 5.4 us per call at d 1024 against 1.5 for the pair (benchmarks/results/precision.md,
    "Where the rest of the gap is"), and onnxruntime does not fuse the pair back (the sum also feeds the stream). In
    place (SmolLM2's backbone, onnxruntime's kernel times) the fused node came out 2 us per update below the pair,
    under the spread of a second session of the unchanged graph: kept as the pair until a quiet run shows a gain
    (precision.md, "Fewer adapter nodes per layer: what was tried").
    `norm` None (a recipe without that norm): (x + skip, x + skip)."""
    if norm is None:
        total = b.op("Add", [x, skip], tag=tag)
        return total, total
    if len(norm) == 2:
        total = b.op("Add", [x, skip], tag=tag)
        return b.op("LayerNormalization", [total, *norm], axis=-1, epsilon=eps, tag=f"{tag}_norm"), total
    normed, _, _, total = b.op("SkipSimplifiedLayerNormalization", [x, skip, *norm], domain="com.microsoft", n_out=4,
                               outputs=[None, "", "", None], epsilon=eps, tag=tag)
    return normed, total


def _layer_output(b: GraphBuilder, i: int, h: str, down: str, norm: list[str] | None = None,
                  eps: float = 0.0) -> tuple[str | None, str]:
    """Layer i's output stream h + down [b, s, d] as node `/layers.{i}/mlp_residual` (graph_taps reads it),
    with `norm` ([weight] RMSNorm, [weight, bias] LayerNorm) of it from the same fused node: (normed, stream)."""
    if norm is None:
        return None, b.op("Add", [h, down], tag=f"layers.{i}/mlp_residual")
    return _add_norm(b, h, down, norm, eps, f"layers.{i}/mlp_residual")


def _silu(b: GraphBuilder, x: str) -> str:
    return b.op("Mul", [x, b.op("Sigmoid", [x])])


def _gelu(b: GraphBuilder, x: str) -> str:
    return b.op("Gelu", [x], domain="com.microsoft")  # exact (erf) GELU, torch.nn.GELU()'s default


def _gelu_tanh(b: GraphBuilder, x: str) -> str:
    return b.op("FastGelu", [x], domain="com.microsoft")  # the tanh approximation (gelu_pytorch_tanh)


# Activations by `DecoderConfig.activation` and `AdapterVariant.update_activation` (core/model.py has the torch twins).
ACTIVATIONS = {"silu": _silu, "gelu": _gelu, "gelu_pytorch_tanh": _gelu_tanh}


def _norm_weight(b: GraphBuilder, cfg: DecoderConfig, key: str, t: torch.Tensor) -> str:
    """An RMSNorm's scale as the recipe applies it: offset + weight (Gemma's 1 + w, in float32 as transformers)."""
    if not cfg.norm_offset:
        return b.weight(key, lambda: _np(t))
    return b.weight(key, lambda: _np(t) + np.float32(cfg.norm_offset))


def _embed(b: GraphBuilder, names: "Tensors", cfg: DecoderConfig, table: torch.Tensor, key: str) -> str:
    """The stack's input [b, s, d]: embedding rows times the recipe's scale (Gemma's sqrt(d), Granite's multiplier)."""
    h = names.embed(b, table, key, io_spec.INPUT_IDS)
    if cfg.embed_scale == 1:
        return h
    return b.op("Mul", [h, b.const(cfg.embed_scale, np.float32)], tag="embed/Mul")


class _Context:
    """Per-graph tensors every layer shares: RoPE caches (per RoPE kind), attention biases (per window), the
    chosen attention kind."""

    def __init__(self, b: GraphBuilder, cfg: DecoderConfig, attention: str):
        self.attention, self.cfg, self.b = attention, cfg, b
        self.rope = {FULL: self._rope_cache(FULL)}
        if any(cfg.layer_rope(i) == SLIDING for i in range(cfg.num_layers)):
            self.rope[SLIDING] = self._rope_cache(SLIDING)
        self._bias: dict[int, str] = {}
        with b.scope("mask"):
            self.total = b.op("Gather", [b.op("Shape", [io_spec.ATTENTION_MASK]), b.const(1)], axis=0)  # T
            self.seq = b.op("Gather", [b.op("Shape", [io_spec.INPUT_IDS]), b.const(1)], axis=0)  # s
            self.real = b.op("Unsqueeze", [b.op("Cast", [io_spec.ATTENTION_MASK], to=9), b.const([1, 2])])  # [b,1,1,T]
            if attention == io_spec.ATTENTION_GQA:  # the kernel is causal (and windowed) itself: padding only
                padding = b.op("Where", [self.real, b.const(0.0, np.float32), b.const(NEG, np.float32)])  # [b,1,1,T]
                rows = b.op("Concat", [b.const([1, 1]), b.op("Unsqueeze", [self.seq, b.const([0])]), b.const([1])],
                            axis=0)  # [1, 1, s, 1]
                self._bias[0] = b.op("Expand", [padding, rows])  # [b, 1, s, T]: the kernel wants s rows
                return
            self.k_pos = b.op("Range", [b.const(0), self.total, b.const(1)])  # [T]
            self.q_pos = b.op("Range", [b.op("Sub", [self.total, self.seq]), self.total, b.const(1)])  # [s]
            causal = b.op("LessOrEqual", [b.op("Unsqueeze", [self.k_pos, b.const([0])]),
                                          b.op("Unsqueeze", [self.q_pos, b.const([1])])])  # [s, T]
            self.allowed = b.op("And", [causal, self.real])  # [b, 1, s, T]
            self._bias[0] = b.op("Where", [self.allowed, b.const(0.0, np.float32), b.const(NEG, np.float32)])

    def _rope_cache(self, kind: str) -> tuple[str, str]:
        cfg = self.cfg
        theta, scaling = cfg.rope_spec(kind)
        rotary = "" if cfg.rotary == cfg.head_dim else f".r{cfg.rotary}"
        key = f"rope.{cfg.head_dim}{rotary}.{theta}.{cfg.max_positions}.{sorted(scaling.items())}"
        inv = np.array(cfg.rope_inv_freq(kind), np.float32)
        freqs = np.arange(cfg.max_positions, dtype=np.float32)[:, None] * inv[None, :]  # [max_pos, rotary/2]
        scale = np.float32(cfg.rope_attention_factor(kind))  # yarn scales cos and sin
        return (self.b.weight(f"{key}.cos", lambda: np.cos(freqs) * scale),
                self.b.weight(f"{key}.sin", lambda: np.sin(freqs) * scale))

    def bias(self, i: int) -> str:
        """Layer i's additive bias [b, 1, s, T]: padding (GroupQueryAttention applies causality and its window
        itself), or padding, causality and layer i's sliding window (the other kinds)."""
        window = 0 if self.attention == io_spec.ATTENTION_GQA else self.cfg.layer_window(i)
        if window not in self._bias:
            b = self.b
            with b.scope(f"mask.window{window}"):
                near = b.op("Greater", [b.op("Unsqueeze", [self.k_pos, b.const([0])]), b.op("Unsqueeze", [
                    b.op("Sub", [self.q_pos, b.const(window)]), b.const([1])])])  # [s, T]: the last `window` keys
                self._bias[window] = b.op("Where", [b.op("And", [self.allowed, near]), b.const(0.0, np.float32),
                                                    b.const(NEG, np.float32)])
        return self._bias[window]


def _rotary(b: GraphBuilder, x: str, ctx: _Context, heads: int, kind: str) -> str:
    cos, sin = ctx.rope[kind]
    partial = {} if ctx.cfg.rotary == ctx.cfg.head_dim else {"rotary_embedding_dim": ctx.cfg.rotary}
    return b.op("RotaryEmbedding", [x, io_spec.POSITION_IDS, cos, sin], domain="com.microsoft",
                num_heads=heads, interleaved=0, **partial)


def _input_norm(b: GraphBuilder, cfg: DecoderConfig, prefix: str, i: int, lw: dict[str, torch.Tensor],
                ) -> list[str] | None:
    """[layer i's input norm weight], or None when the recipe has no norm before attention (OLMo 2)."""
    if not cfg.has_input_norm:
        return None
    return [_norm_weight(b, cfg, f"{prefix}.layers.{i}.input_norm", lw["input_norm.weight"])]


def _layer(b: GraphBuilder, names: Tensors, cfg: DecoderConfig, prefix: str, i: int, lw: dict[str, torch.Tensor],
           x: str, h: str, ctx: _Context) -> tuple[str, str]:
    """One decoder layer (reads/writes layer i's KV pair of the contract) on the residual stream h [b, s, d]
    whose input norm x the caller computed (x is h without one). Returns (h', down): the layer's output is
    h' + down, added by the caller (`_layer_output`), where the next norm can share its kernel."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    key = f"{prefix}.layers.{i}"
    with b.scope(f"layers.{i}"):
        with b.scope("attn"):
            qkv = names.linear(b, x, f"{key}.qkv", [lw["q.weight"], lw["k.weight"], lw["v.weight"]], "qkv")
            if cfg.qkv_bias:
                qkv = b.op("Add", [qkv, b.weight(f"{key}.qkv_bias", lambda: _np(
                    torch.cat([dense(lw[n]) for n in ("q.bias", "k.bias", "v.bias")])))], tag="qkv/Add")
            # q and k as one tensor of H + KV heads through their norms and RoPE: fewer, larger kernels
            if cfg.qk_norm and cfg.qk_norm_span == "proj":
                qk, v = _proj_qk_norm(b, qkv, key, lw, cfg)
            else:
                qk, v = b.op("Split", [qkv, b.const([(H + KV) * hd, KV * hd])], n_out=2, axis=-1)  # [b,s,(H+KV)*hd]
                if cfg.qk_norm:
                    qk = _qk_norm(b, qk, key, lw, cfg)
            kind = cfg.layer_rope(i)
            if kind is not None:
                qk = _rotary(b, qk, ctx, H + KV, kind)
            q, k = b.op("Split", [qk, b.const([H * hd, KV * hd])], n_out=2, axis=-1)
            attn = ATTENTION[ctx.attention](b, cfg, i, AttnInputs(q, k, v, ctx.bias(i), ctx.total, ctx.seq))
            o = names.linear(b, attn, f"{key}.o", [lw["o.weight"]], "o")
            if cfg.o_bias:
                o = b.op("Add", [o, b.weight(f"{key}.o_bias", lambda: _np(lw["o.bias"]))], tag="o/Add")
            o = _sublayer_output(b, cfg, key, lw, o, "attn_out_norm")
        pre_mlp = [_norm_weight(b, cfg, f"{key}.post_norm", lw["post_norm.weight"])] if cfg.has_input_norm else None
        x, h = _add_norm(b, h, o, pre_mlp, cfg.rms_norm_eps, "attn_residual")
        with b.scope("mlp"):
            gu = names.linear(b, x, f"{key}.gate_up", [lw["gate.weight"], lw["up.weight"]], "gate_up")
            if cfg.mlp_bias:
                gu = b.op("Add", [gu, b.weight(f"{key}.gate_up_bias", lambda: _np(
                    torch.cat([dense(lw["gate.bias"]), dense(lw["up.bias"])])))], tag="gate_up/Add")
            g, u = b.op("Split", [gu, b.const([cfg.intermediate_size] * 2)], n_out=2, axis=-1)
            m = b.op("Mul", [ACTIVATIONS[cfg.activation](b, g), u])
            down = names.linear(b, m, f"{key}.down", [lw["down.weight"]], "down")
            if cfg.mlp_bias:
                down = b.op("Add", [down, b.weight(f"{key}.down_bias", lambda: _np(lw["down.bias"]))], tag="down/Add")
            down = _sublayer_output(b, cfg, key, lw, down, "mlp_out_norm")
        return h, down


def _sublayer_output(b: GraphBuilder, cfg: DecoderConfig, key: str, lw: dict[str, torch.Tensor], out: str,
                     norm: str) -> str:
    """What attention or the MLP adds to the stream: normed (post / sandwich placements), scaled (Granite)."""
    if cfg.has_output_norms:
        out = _rms(b, out, _norm_weight(b, cfg, f"{key}.{norm}", lw[f"{norm}.weight"]), cfg.rms_norm_eps)
    if cfg.residual_scale != 1:
        out = b.op("Mul", [out, b.const(cfg.residual_scale, np.float32)])
    return out


def _qk_norm(b: GraphBuilder, qk: str, key: str, lw: dict[str, torch.Tensor], cfg: DecoderConfig) -> str:
    """Per-head q/k norms on [b, s, (H + KV) * hd]: RMSNorm over head_dim of every head, then each head's weight
    (q_norm on the H query heads, k_norm on the KV key heads) as one [H + KV, hd] scale (+ the recipe's offset)."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads = b.op("Reshape", [qk, b.const([0, 0, H + KV, hd])])  # [b, s, H+KV, hd]
    normed = _rms(b, heads, b.const(np.ones(hd), np.float32), cfg.rms_norm_eps)
    scale = b.weight(f"{key}.qk_norm", lambda: _np(torch.cat([dense(lw["q_norm.weight"]).expand(H, hd),
                                                              dense(lw["k_norm.weight"]).expand(KV, hd)]))
                     + np.float32(cfg.norm_offset))  # [H+KV, hd]
    return b.op("Reshape", [b.op("Mul", [normed, scale]), b.const([0, 0, (H + KV) * hd])])


def _proj_qk_norm(b: GraphBuilder, qkv: str, key: str, lw: dict[str, torch.Tensor], cfg: DecoderConfig,
                  ) -> tuple[str, str]:
    """OLMo 2's q/k norms over the whole projections: (norm(q) | norm(k) [b, s, (H+KV)*hd], v [b, s, KV*hd])."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q, k, v = b.op("Split", [qkv, b.const([H * hd, KV * hd, KV * hd])], n_out=3, axis=-1)
    q = _rms(b, q, _norm_weight(b, cfg, f"{key}.q_norm", lw["q_norm.weight"]), cfg.rms_norm_eps)
    k = _rms(b, k, _norm_weight(b, cfg, f"{key}.k_norm", lw["k_norm.weight"]), cfg.rms_norm_eps)
    return b.op("Concat", [q, k], axis=-1), v


def build_shadow(spec: ShadowModelSpec, store: WeightStore, names: Tensors, contract: io_spec.GraphContract,
                 ) -> GraphBuilder:
    """The detached shadow: embeddings -> shadow layers -> norm -> projection, I/O as `contract` declares."""
    b = GraphBuilder(contract, store)
    cfg = spec.shadow.config
    h = _embed(b, names, cfg, spec.shadow_embed, "model.embed_tokens.weight" if spec.shadow.embed is None
               else "shadow.embed_tokens.weight")
    ctx = _Context(b, cfg, contract.attention)
    layers = spec.shadow.layers
    norm = _input_norm(b, cfg, "shadow", 0, layers[0])
    x = h if norm is None else _rms(b, h, norm[0], cfg.rms_norm_eps)
    for i, lw in enumerate(layers):
        h, down = _layer(b, names, cfg, "shadow", i, lw, x, h, ctx)
        following = (_input_norm(b, cfg, "shadow", i + 1, layers[i + 1]) if i + 1 < len(layers)
                     else [_norm_weight(b, cfg, "shadow.norm", spec.shadow.norm)])  # the next norm, fused
        x, h = _layer_output(b, i, h, down, following, cfg.rms_norm_eps)
        x = h if x is None else x
    h = x  # final-normed
    if spec.projection is not None:
        h = b.op("MatMul", [h, b.weight("shadow.projection", lambda: _np(spec.projection.T))], tag="projection/MatMul")
    b.output(h, io_spec.SHADOW_HIDDEN)
    return b


def build_backbone(spec: ShadowModelSpec, store: WeightStore, names: Tensors, contract: io_spec.GraphContract,
                   adapter: bool = True) -> GraphBuilder:
    """The base decoder; with `adapter`, injection before and shadow update after `spec.adapted_range`."""
    b = GraphBuilder(contract, store)
    cfg = spec.base.config
    s = io_spec.SHADOW_HIDDEN if adapter else None
    h = _embed(b, names, cfg, spec.base.embed, "model.embed_tokens.weight")
    ctx = _Context(b, cfg, contract.attention)
    adapted = spec.adapted_range if adapter else range(0)
    layers, eps = spec.base.layers, cfg.rms_norm_eps
    x = None  # the next layer's normed input, when the previous output's kernel computed it
    for i, lw in enumerate(layers):
        if i in adapted:  # the injection's delta is added inside the layer's input norm
            x, h = _add_norm(b, h, _inject(b, spec, i - adapted.start, h, s), _input_norm(b, cfg, "base", i, lw),
                             eps, f"layers.{i}/input_norm")
        elif x is None:
            norm = _input_norm(b, cfg, "base", i, lw)
            x = h if norm is None else _rms(b, h, norm[0], eps)
        h, down = _layer(b, names, cfg, "base", i, lw, x, h, ctx)
        if i in adapted and i != adapted[-1]:  # the last update feeds nothing: skipped
            u, h = _layer_output(b, i, h, down, _update_norm(b, spec), spec.update_norm_eps)
            s, x = _update(b, spec, i - adapted.start, u or h, s), None
        elif i + 1 in adapted:  # the injection reads the stream itself
            x, h = _layer_output(b, i, h, down)
        else:
            following = (_input_norm(b, cfg, "base", i + 1, layers[i + 1]) if i + 1 < len(layers)
                         else [_norm_weight(b, cfg, "base.norm", spec.base.norm)])
            x, h = _layer_output(b, i, h, down, following, eps)  # x None: the next layer has no input norm
    b.output(x, io_spec.HIDDEN)  # final-normed
    return b


def _inject(b: GraphBuilder, spec: ShadowModelSpec, j: int, h: str, s: str) -> str:
    """The injection's delta alpha * ((h - s) @ W_down) @ W_up [b, s, d]; the caller adds it to h. Two matmuls: one
    d x d matrix W_down @ W_up would be a node less but read d^2 floats instead of 2 d k (+1.26 MB per layer at
    SmolLM2); measured slower at `small` in every run (+0.22 to +0.46 ms per backbone step, precision.md)."""
    with b.scope(f"adapter.{j}/inject"):
        down = b.weight(f"adapter.{j}.inject_down", lambda: _np(spec.injection_down[j]))
        up = b.weight(f"adapter.{j}.inject_up", lambda: _np(spec.injection_up[j] * spec.alpha))
        return b.op("MatMul", [b.op("MatMul", [b.op("Sub", [h, s]), down]), up])


def _update_norm(b: GraphBuilder, spec: ShadowModelSpec) -> list[str] | None:
    """The update's LayerNorm [weight, bias] (one for every layer), or None for variants without it."""
    if not spec.variant.update_norm:
        return None
    return [b.weight("adapter.norm_weight", lambda: _np(spec.update_norm_weight)),
            b.weight("adapter.norm_bias", lambda: _np(spec.update_norm_bias))]


def _update(b: GraphBuilder, spec: ShadowModelSpec, j: int, u: str, s: str) -> str:
    """s + sigmoid(G(u)) * (T(u) - s), u = LayerNorm(h) or h (the caller's, see `_update_norm`), in the form
    `spec.variant` declares. G's and T's input layers are one MatMul (they read the same u); a Split hands
    each output layer its half of the activation. (Output weights zero-padded to [2g, d] reading the whole
    activation, instead of the Split, read twice the bytes: W1 int4 base_shadow 1.03x slower, benchmarks/results/decode-profile.md;
    in place at `small` and SmolLM2 fp32 within the spread of an unchanged graph's second session, precision.md.)
    s + sigmoid(g) * (t - s) is four elementwise nodes in any arrangement (no lerp or a * b + c kernel on CPU)."""
    variant = spec.variant
    with b.scope(f"adapter.{j}/update"):
        w_in = b.weight(f"adapter.{j}.gate_transform_in", lambda: _np(
            torch.cat([spec.gate_in[j], spec.transform_in[j]]).T))  # [d, 2g]
        x = b.op("MatMul", [u, w_in])
        if variant.update_bias:
            x = b.op("Add", [x, b.weight(f"adapter.{j}.gate_transform_in_bias", lambda: _np(
                torch.cat([spec.gate_in_bias[j], spec.transform_in_bias[j]])))])
        act = ACTIVATIONS[variant.update_activation](b, x)  # [b, s, 2g]: gate half, then transform half
        halves = [spec.gate_in[j].shape[0], spec.transform_in[j].shape[0]]
        act_gate, act_target = b.op("Split", [act, b.const(halves)], n_out=2, axis=-1)
        gate = b.op("MatMul", [act_gate, b.weight(f"adapter.{j}.gate_out", lambda: _np(spec.gate_out[j].T))])  # [g, d]
        target = b.op("MatMul", [act_target, b.weight(f"adapter.{j}.transform_out",
                                                      lambda: _np(spec.transform_out[j].T))])  # [g, d]
        if variant.update_bias:
            gate = b.op("Add", [gate, b.weight(f"adapter.{j}.gate_out_bias", lambda: _np(spec.gate_out_bias[j]))])
            target = b.op("Add", [target, b.weight(f"adapter.{j}.transform_out_bias",
                                                   lambda: _np(spec.transform_out_bias[j]))])
        return b.op("Add", [s, b.op("Mul", [b.op("Sigmoid", [gate]), b.op("Sub", [target, s])])])


def build_head(contract: io_spec.GraphContract, head: torch.Tensor, default_key: str, spec: ShadowModelSpec,
               store: WeightStore, names: Tensors, bias: torch.Tensor | None = None,
               transform: DecoderConfig | None = None) -> GraphBuilder:
    """hidden_states [b, n, d] -> logits [b, n, out] against the stored [out, d] matrix: the vocabulary
    (lm heads) or the labels (classifier heads, with their bias); `transform`: the base family's logits
    divisor and soft-cap (core/model.head_transform), for the base's vocabulary head."""
    b = GraphBuilder(contract, store)
    (inp,), (out,) = contract.inputs, contract.outputs
    logits = names.head(b, inp.name, head, default_key, bias)
    if transform is not None and transform.logits_divisor != 1:
        logits = b.op("Div", [logits, b.const(transform.logits_divisor, np.float32)], tag="lm_head/Div")
    if transform is not None and transform.final_softcap:
        cap = b.const(transform.final_softcap, np.float32)
        logits = b.op("Mul", [b.op("Tanh", [b.op("Div", [logits, cap])]), cap], tag="lm_head/softcap")
    b.output(logits, out.name)
    return b
