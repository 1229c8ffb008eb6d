"""The ONNX graphs of an artifact, built from a `ShadowModelSpec` (the math of core/model.py).

`shadow`: embeddings -> shadow layers -> norm -> projection = shadow_hidden_states.
`backbone`: base layers with injection/update fed by shadow_hidden_states -> final-normed hidden.
`lm_head` / `shadow_lm_head`: hidden [b, n, d] -> logits (MatMul on the head stored as [d, vocab]; a tied
embedding table is stored twice in float32, as [vocab, d] rows for the Gather and [d, vocab] for the head;
quantized: MatMulNBits and GatherBlockQuantized over the same packed bytes, stored once).
Fusions done here: q|k|v and gate|up weights concatenated, alpha folded into the injection
up-projection. Attention is a kind chosen per graph (export/attention.py) and recorded on the builder.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from shadow_edge import io_spec
from shadow_edge.core.arch import DecoderConfig
from shadow_edge.core.lazy_tensor import dense
from shadow_edge.core.spec import ShadowModelSpec
from shadow_edge.export.attention import ATTENTION, AttnInputs
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.export.quantize import Dequantized, Quantized

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
            return self._matmul_nbits(b, x, key, _Once(quantize), shape, parts[0], tag, self.accuracy_level)
        # [in, sum(out)]: the transposed parts concatenated straight into one contiguous copy
        fused = b.weight(key, lambda: _np(torch.cat([dense(p).T for p in parts], dim=1)))
        return b.op("MatMul", [x, fused], tag=f"{tag}/MatMul")

    def embed(self, b: GraphBuilder, t: torch.Tensor, name: str, ids: str) -> str:
        """Rows of the [vocab, d] table for `ids` [b, s] -> [b, s, d]."""
        if not isinstance(t, Dequantized):
            return b.op("Gather", [self.raw(b, t, name), ids], axis=0, tag="embed/Gather")
        name = self._names.setdefault(id(t), name)
        qw = _Once(t.quantized)
        data = b.weight(f"{name}.quantized_rows", lambda: qw.packed().reshape(t.shape[0], -1))
        scales = b.weight(f"{name}.row_scales", qw.scales)  # same bytes as the head's scales
        return b.op("GatherBlockQuantized", [data, ids, scales], domain="com.microsoft", bits=t.bits,
                    block_size=t.block, gather_axis=0, quantize_axis=1, tag="embed/GatherBlockQuantized")

    def head(self, b: GraphBuilder, hidden: str, t: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> str:
        """hidden [b, n, d] -> logits [b, n, vocab] against the [vocab, d] matrix `t` (+ bias [vocab]: label heads,
        which are never quantized)."""
        if isinstance(t, Dequantized):
            name = self._names.setdefault(id(t), name)
            return self._matmul_nbits(b, hidden, name, _Once(t.quantized), tuple(t.shape), t, "lm_head",
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
        scales = b.weight(f"{key}.scales", lambda: qw.scales().reshape(-1))
        return b.op("MatMulNBits", [x, data, scales], domain="com.microsoft", K=k, N=n, bits=how.bits,
                    block_size=how.block, accuracy_level=accuracy_level, tag=f"{tag}/MatMulNBits")


class _Once:
    """One weight's quantization, shared by its packed bytes and its scales: made for whichever of the two
    is written first and let go once both were served (the store writes them one after the other)."""

    def __init__(self, make: Callable[[], Quantized]) -> None:
        self.make, self.value, self.served = make, None, set()

    def packed(self) -> np.ndarray:
        return self._part("packed")

    def scales(self) -> np.ndarray:
        return self._part("scales")

    def _part(self, part: str) -> np.ndarray:
        if self.value is None:
            self.value = self.make()
        out = getattr(self.value, part)
        self.served.add(part)
        if len(self.served) == 2:
            self.value, self.served = None, set()
        return out


def _rms(b: GraphBuilder, x: str, w: str, eps: float) -> str:
    return b.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=eps, stash_type=1)


def _add_norm(b: GraphBuilder, x: str, skip: str, norm: list[str], eps: float, tag: str) -> tuple[str, str]:
    """(Norm(x + skip), x + skip): onnxruntime's fused SkipSimplifiedLayerNormalization for `norm` = [weight]
    (RMSNorm); Add then LayerNormalization for [weight, bias] (LayerNorm), the Add named `tag`: onnxruntime's
    fused SkipLayerNormalization takes 5.4 us per call at d 1024 against 1.5 for the pair (benchmarks/RESULTS.md,
    "Precision table"), and onnxruntime does not fuse the pair back (the sum also feeds the stream)."""
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


class _Context:
    """Per-graph tensors every layer shares: RoPE caches, the attention bias, the chosen attention kind."""

    def __init__(self, b: GraphBuilder, cfg: DecoderConfig, attention: str):
        self.attention = attention
        key = f"rope.{cfg.head_dim}.{cfg.rope_theta}.{cfg.max_positions}.{sorted(cfg.rope_scaling.items())}"
        inv = np.array(cfg.rope_inv_freq(), np.float32)
        freqs = np.arange(cfg.max_positions, dtype=np.float32)[:, None] * inv[None, :]  # [max_pos, hd/2]
        scale = np.float32(cfg.rope_attention_factor())  # yarn scales cos and sin
        self.cos = b.weight(f"{key}.cos", lambda: np.cos(freqs) * scale)
        self.sin = b.weight(f"{key}.sin", lambda: np.sin(freqs) * scale)
        with b.scope("mask"):
            self.total = b.op("Gather", [b.op("Shape", [io_spec.ATTENTION_MASK]), b.const(1)], axis=0)  # T
            self.seq = b.op("Gather", [b.op("Shape", [io_spec.INPUT_IDS]), b.const(1)], axis=0)  # s
            real = b.op("Unsqueeze", [b.op("Cast", [io_spec.ATTENTION_MASK], to=9), b.const([1, 2])])  # [b, 1, 1, T]
            if attention == io_spec.ATTENTION_GQA:  # the kernel is causal itself: the bias only masks padding
                padding = b.op("Where", [real, b.const(0.0, np.float32), b.const(NEG, np.float32)])  # [b, 1, 1, T]
                rows = b.op("Concat", [b.const([1, 1]), b.op("Unsqueeze", [self.seq, b.const([0])]), b.const([1])],
                            axis=0)  # [1, 1, s, 1]
                self.bias = b.op("Expand", [padding, rows])  # [b, 1, s, T]: the kernel wants s rows
                return
            k_pos = b.op("Range", [b.const(0), self.total, b.const(1)])  # [T]
            q_pos = b.op("Range", [b.op("Sub", [self.total, self.seq]), self.total, b.const(1)])  # [s]
            causal = b.op("LessOrEqual", [b.op("Unsqueeze", [k_pos, b.const([0])]),
                                          b.op("Unsqueeze", [q_pos, b.const([1])])])  # [s, T]
            allowed = b.op("And", [causal, real])  # [b, 1, s, T]
            self.bias = b.op("Where", [allowed, b.const(0.0, np.float32), b.const(NEG, np.float32)])


def _rotary(b: GraphBuilder, x: str, ctx: _Context, heads: int) -> str:
    return b.op("RotaryEmbedding", [x, io_spec.POSITION_IDS, ctx.cos, ctx.sin], domain="com.microsoft",
                num_heads=heads, interleaved=0)


def _input_norm(b: GraphBuilder, prefix: str, i: int, lw: dict[str, torch.Tensor]) -> list[str]:
    return [b.weight(f"{prefix}.layers.{i}.input_norm", lambda: _np(lw["input_norm.weight"]))]


def _layer(b: GraphBuilder, names: Tensors, cfg: DecoderConfig, prefix: str, i: int, lw: dict[str, torch.Tensor],
           x: str, h: str, ctx: _Context) -> tuple[str, str]:
    """One decoder layer (reads/writes layer i's KV pair of the contract) on the residual stream h [b, s, d]
    whose input norm x the caller computed. Returns (h', down): the layer's output is h' + down, added by
    the caller (`_layer_output`), where the next norm can share its kernel."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    key = f"{prefix}.layers.{i}"
    with b.scope(f"layers.{i}"):
        with b.scope("attn"):
            qkv = names.linear(b, x, f"{key}.qkv", [lw["q.weight"], lw["k.weight"], lw["v.weight"]], "qkv")
            if cfg.qkv_bias:
                qkv = b.op("Add", [qkv, b.weight(f"{key}.qkv_bias", lambda: _np(
                    torch.cat([dense(lw[n]) for n in ("q.bias", "k.bias", "v.bias")])))], tag="qkv/Add")
            # q and k as one tensor of H + KV heads through their norms and RoPE: fewer, larger kernels
            qk, v = b.op("Split", [qkv, b.const([(H + KV) * hd, KV * hd])], n_out=2, axis=-1)  # [b, s, (H+KV)*hd]
            if cfg.qk_norm:
                qk = _qk_norm(b, qk, key, lw, cfg)
            q, k = b.op("Split", [_rotary(b, qk, ctx, H + KV), b.const([H * hd, KV * hd])], n_out=2, axis=-1)
            attn = ATTENTION[ctx.attention](b, cfg, i, AttnInputs(q, k, v, ctx.bias, ctx.total, ctx.seq))
            o = names.linear(b, attn, f"{key}.o", [lw["o.weight"]], "o")
            if cfg.o_bias:
                o = b.op("Add", [o, b.weight(f"{key}.o_bias", lambda: _np(lw["o.bias"]))], tag="o/Add")
        x, h = _add_norm(b, h, o, [b.weight(f"{key}.post_norm", lambda: _np(lw["post_norm.weight"]))],
                         cfg.rms_norm_eps, "attn_residual")
        with b.scope("mlp"):
            gu = names.linear(b, x, f"{key}.gate_up", [lw["gate.weight"], lw["up.weight"]], "gate_up")
            if cfg.mlp_bias:
                gu = b.op("Add", [gu, b.weight(f"{key}.gate_up_bias", lambda: _np(
                    torch.cat([dense(lw["gate.bias"]), dense(lw["up.bias"])])))], tag="gate_up/Add")
            g, u = b.op("Split", [gu, b.const([cfg.intermediate_size] * 2)], n_out=2, axis=-1)
            m = b.op("Mul", [_silu(b, g), u])
            down = names.linear(b, m, f"{key}.down", [lw["down.weight"]], "down")
            if cfg.mlp_bias:
                down = b.op("Add", [down, b.weight(f"{key}.down_bias", lambda: _np(lw["down.bias"]))], tag="down/Add")
        return h, down


def _qk_norm(b: GraphBuilder, qk: str, key: str, lw: dict[str, torch.Tensor], cfg: DecoderConfig) -> str:
    """Qwen3 q/k norms on [b, s, (H + KV) * hd]: RMSNorm over head_dim of every head, then each head's weight
    (q_norm on the H query heads, k_norm on the KV key heads) as one [H + KV, hd] scale."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads = b.op("Reshape", [qk, b.const([0, 0, H + KV, hd])])  # [b, s, H+KV, hd]
    normed = _rms(b, heads, b.const(np.ones(hd), np.float32), cfg.rms_norm_eps)
    scale = b.weight(f"{key}.qk_norm", lambda: _np(torch.cat([dense(lw["q_norm.weight"]).expand(H, hd),
                                                              dense(lw["k_norm.weight"]).expand(KV, hd)])))  # [H+KV, hd]
    return b.op("Reshape", [b.op("Mul", [normed, scale]), b.const([0, 0, (H + KV) * hd])])


def build_shadow(spec: ShadowModelSpec, store: WeightStore, names: Tensors, contract: io_spec.GraphContract,
                 ) -> GraphBuilder:
    """The detached shadow: embeddings -> shadow layers -> norm -> projection, I/O as `contract` declares."""
    b = GraphBuilder(contract, store)
    cfg = spec.shadow.config
    h = names.embed(b, spec.shadow_embed, "model.embed_tokens.weight" if spec.shadow.embed is None
                    else "shadow.embed_tokens.weight", io_spec.INPUT_IDS)
    ctx = _Context(b, cfg, contract.attention)
    layers = spec.shadow.layers
    x = _rms(b, h, _input_norm(b, "shadow", 0, layers[0])[0], cfg.rms_norm_eps)
    for i, lw in enumerate(layers):
        h, down = _layer(b, names, cfg, "shadow", i, lw, x, h, ctx)
        following = (_input_norm(b, "shadow", i + 1, layers[i + 1]) if i + 1 < len(layers)
                     else [b.weight("shadow.norm", lambda: _np(spec.shadow.norm))])  # the next norm, fused
        x, h = _layer_output(b, i, h, down, following, cfg.rms_norm_eps)
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
    h = names.embed(b, spec.base.embed, "model.embed_tokens.weight", io_spec.INPUT_IDS)
    ctx = _Context(b, cfg, contract.attention)
    adapted = spec.adapted_range if adapter else range(0)
    layers, eps = spec.base.layers, cfg.rms_norm_eps
    x = None  # the next layer's normed input, when the previous output's kernel computed it
    for i, lw in enumerate(layers):
        if i in adapted:  # the injection's delta is added inside the layer's input norm
            x, h = _add_norm(b, h, _inject(b, spec, i - adapted.start, h, s), _input_norm(b, "base", i, lw), eps,
                             f"layers.{i}/input_norm")
        elif x is None:
            x = _rms(b, h, _input_norm(b, "base", i, lw)[0], eps)
        h, down = _layer(b, names, cfg, "base", i, lw, x, h, ctx)
        if i in adapted and i != adapted[-1]:  # the last update feeds nothing: skipped
            u, h = _layer_output(b, i, h, down, _update_norm(b, spec), spec.update_norm_eps)
            s, x = _update(b, spec, i - adapted.start, u or h, s), None
        elif i + 1 in adapted:  # the injection reads the stream itself
            x, h = _layer_output(b, i, h, down)
        else:
            following = (_input_norm(b, "base", i + 1, layers[i + 1]) if i + 1 < len(layers)
                         else [b.weight("base.norm", lambda: _np(spec.base.norm))])
            x, h = _layer_output(b, i, h, down, following, eps)
    b.output(x, io_spec.HIDDEN)  # final-normed
    return b


def _inject(b: GraphBuilder, spec: ShadowModelSpec, j: int, h: str, s: str) -> str:
    """The injection's delta alpha * ((h - s) @ W_down) @ W_up [b, s, d]; the caller adds it to h."""
    with b.scope(f"adapter.{j}/inject"):
        down = b.weight(f"adapter.{j}.inject_down", lambda: _np(spec.injection_down[j]))
        up = b.weight(f"adapter.{j}.inject_up", lambda: _np(spec.injection_up[j] * spec.alpha))
        return b.op("MatMul", [b.op("MatMul", [b.op("Sub", [h, s]), down]), up])


def _gelu(b: GraphBuilder, x: str) -> str:
    return b.op("Gelu", [x], domain="com.microsoft")  # exact (erf) GELU, torch.nn.GELU()'s default


# Update-MLP activations by `AdapterVariant.update_activation` (core/model.py has the torch twins).
ACTIVATIONS = {"silu": _silu, "gelu": _gelu}


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
    activation, instead of the Split, read twice the bytes: W1 int4 base_shadow 1.03x slower, benchmarks/RESULTS.md.)"""
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
               store: WeightStore, names: Tensors, bias: torch.Tensor | None = None) -> GraphBuilder:
    """hidden_states [b, n, d] -> logits [b, n, out] against the stored [out, d] matrix: the vocabulary
    (lm heads) or the labels (classifier heads, with their bias)."""
    b = GraphBuilder(contract, store)
    (inp,), (out,) = contract.inputs, contract.outputs
    logits = names.head(b, inp.name, head, default_key, bias)
    b.output(logits, out.name)
    return b
