"""Attention kernels of the decoder graphs, one registered builder per kind, chosen per graph at export.

Both kinds keep the graph contract's KV convention (see io_spec.KV_BINDING): each
`past_key_values.*` input and its `present.*` output are bound by the runtime to one
preallocated buffer [batch, kv_heads, capacity, head_dim] with capacity >= total_seq; the
step writes its new keys/values at positions [total_seq - seq, total_seq) in place.

- `GroupQueryAttention` (onnxruntime contrib op, fused, fastest): onnxruntime requires
  head_dim % 8 == 0.
- `Attention` (ONNX opset 24 `TensorScatter` + `Attention`, any head_dim): TensorScatter
  writes the new entries into the buffer in place; Attention reads the first total_seq
  positions (a Slice: onnxruntime's kernel scores every key it is given, so the unused
  capacity is cut off first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from shadow_edge import io_spec
from shadow_edge.core.arch import DecoderConfig
from shadow_edge.errors import ExportError
from shadow_edge.export.onnx_builder import GraphBuilder

OPSET_ONNX_ATTENTION = 24  # TensorScatter and Attention with GQA heads


@dataclass(frozen=True)
class AttnInputs:
    """What one layer's attention reads. q: [b, s, H*hd]; k, v: [b, s, KV*hd] (RoPE applied to q, k).

    bias: [b, 1, s, T] additive mask (padding; and causal and layer i's sliding window for kinds that do not
    apply them themselves: GroupQueryAttention does); total: int64 scalar T = attention_mask
    length; seq: int64 scalar s.
    """

    q: str
    k: str
    v: str
    bias: str
    total: str
    seq: str


Builder = Callable[[GraphBuilder, DecoderConfig, int, AttnInputs], str]


def _kv_names(i: int) -> tuple[str, str, str, str]:
    """Layer i's past inputs and present outputs in the contract: past_k, past_v, present_k, present_v."""
    key, value = io_spec.KV_KINDS
    return (io_spec.past_name(i, key), io_spec.past_name(i, value), io_spec.present_name(i, key),
            io_spec.present_name(i, value))


def group_query_attention(b: GraphBuilder, cfg: DecoderConfig, i: int, a: AttnInputs) -> str:
    """onnxruntime's fused GroupQueryAttention; -> [b, s, H*hd]."""
    past_k, past_v, present_k, present_v = _kv_names(i)
    # Every row keeps all T cache slots (padding is masked by the bias): seqlens_k = T - 1 per row.
    total32, seqlens = b.shared("gqa_lengths", lambda: _gqa_lengths(b, a))
    recipe = {}  # the kernel's own sliding window (the last local_window_size keys) and soft-cap (before the bias)
    if cfg.layer_window(i):
        recipe["local_window_size"] = cfg.layer_window(i)
    if cfg.attn_softcap:
        recipe["softcap"] = cfg.attn_softcap
    out = b.op("GroupQueryAttention", [a.q, a.k, a.v, past_k, past_v, seqlens, total32, "", "", "", a.bias],
               domain="com.microsoft", n_out=3, num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads,
               scale=cfg.attention_scale, outputs=[None, present_k, present_v], **recipe)
    return out[0]


def _batch(b: GraphBuilder) -> str:
    """[1] int64: the batch size, from input_ids."""
    return b.shared("batch", lambda: b.op("Slice", [b.op("Shape", [io_spec.INPUT_IDS]), b.const([0]), b.const([1])]))


def _gqa_lengths(b: GraphBuilder, a: AttnInputs) -> tuple[str, str]:
    total32 = b.op("Cast", [a.total], to=6)  # int32 scalar
    return total32, b.op("Expand", [b.op("Sub", [total32, b.const(1, "int32")]), _batch(b)])  # [b]


def onnx_attention(b: GraphBuilder, cfg: DecoderConfig, i: int, a: AttnInputs) -> str:
    """ONNX TensorScatter (in place into the shared buffer) + Attention over the first T slots; -> [b, s, H*hd]."""
    b.require_opset(OPSET_ONNX_ATTENTION)
    past_k, past_v, present_k, present_v = _kv_names(i)
    write_at, upto = b.shared("scatter_positions", lambda: _scatter_positions(b, a))
    heads = lambda x, n: b.op("Transpose", [b.op("Reshape", [x, b.const([0, 0, n, cfg.head_dim])])],  # noqa: E731
                              perm=[0, 2, 1, 3])  # [b, s, n*hd] -> [b, n, s, hd]
    cached = []
    for new, past, present in ((a.k, past_k, present_k), (a.v, past_v, present_v)):
        b.op("TensorScatter", [past, heads(new, cfg.num_kv_heads), write_at], axis=2, mode="linear",
             outputs=[present])  # [b, KV, capacity, hd], new entries at [T - s, T)
        cached.append(b.op("Slice", [present, b.const([0]), upto, b.const([2])]))  # [b, KV, T, hd]
    softcap = {"softcap": cfg.attn_softcap} if cfg.attn_softcap else {}  # applied before the bias (window in it)
    y = b.op("Attention", [heads(a.q, cfg.num_heads), cached[0], cached[1], a.bias], scale=cfg.attention_scale,
             **softcap)
    return b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]),
                            b.const([0, 0, cfg.num_heads * cfg.head_dim])])  # [b, s, H*hd]


def _scatter_positions(b: GraphBuilder, a: AttnInputs) -> tuple[str, str]:
    write_at = b.op("Expand", [b.op("Sub", [a.total, a.seq]), _batch(b)])  # [b] int64: past length per row
    return write_at, b.op("Unsqueeze", [a.total, b.const([0])])  # [1] int64: T


ATTENTION: dict[str, Builder] = {
    io_spec.ATTENTION_GQA: group_query_attention,
    io_spec.ATTENTION_ONNX: onnx_attention,
}


def choose_attention(cfg: DecoderConfig, requested: str = io_spec.ATTENTION_AUTO,
                     allowed: tuple[str, ...] = io_spec.ATTENTION_KINDS) -> str:
    """The attention kind for a decoder: `requested`, or with auto the fused op where its constraints hold;
    `allowed`: the kinds the execution target runs."""
    fused_ok = cfg.head_dim % 8 == 0 and io_spec.ATTENTION_GQA in allowed
    if requested == io_spec.ATTENTION_AUTO:
        return io_spec.ATTENTION_GQA if fused_ok else io_spec.ATTENTION_ONNX
    if requested == io_spec.ATTENTION_GQA and not fused_ok:
        raise ExportError(f"--attention {requested}: onnxruntime's GroupQueryAttention needs head_dim % 8 == 0, "
                          f"this decoder has head_dim {cfg.head_dim}; use --attention auto or "
                          f"{io_spec.ATTENTION_ONNX}")
    return requested
