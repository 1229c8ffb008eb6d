"""The registered decoder families: one `register(Architecture(...))` each (see core/arch.py for the recipe).

A family's `read(cfg, where, head_dim)` returns the `DecoderConfig` fields its config implies beyond the
generic ones (dims, eps, RoPE, tying); `uniform_window` (a window every layer slides with) caps the context
instead of masking. `names` maps the family's HF layer weights to canonical names, `fused` splits fused
checkpoint weights into canonical parts. Each value is type-checked; what a family cannot compute exactly
is refused naming the field.
"""

from __future__ import annotations

import math

from shadow_edge.core.arch import (LLAMA_NAMES, SLIDING, FULL, Architecture, activation_of, layer_types_of,
                                   positive_or_zero, register)
from shadow_edge.core.config_values import get_bool, get_float, get_int
from shadow_edge.errors import UnsupportedModelError

ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu")  # the op tables' keys (core/model.py, export/graphs.py)
# Norms on the attention and MLP outputs (post and sandwich placements) next to the Llama names.
POST_NORM_NAMES = {**{k: v for k, v in LLAMA_NAMES.items() if not k.startswith(("input_", "post_attention"))},
                   "post_attention_layernorm.weight": "attn_out_norm.weight",
                   "post_feedforward_layernorm.weight": "mlp_out_norm.weight"}
SANDWICH_NAMES = {**POST_NORM_NAMES, "input_layernorm.weight": "input_norm.weight",
                  "pre_feedforward_layernorm.weight": "post_norm.weight"}


def _flag(cfg: dict, key: str, where: str) -> bool:
    return get_bool(cfg, key, where)


def _window_if_enabled(cfg: dict, where: str) -> int | None:
    """Qwen2/Qwen3 only slide when `use_sliding_window` is on; Mistral and Phi-3 whenever a window is set."""
    if "use_sliding_window" in cfg and not cfg["use_sliding_window"]:
        return None
    return None if cfg.get("sliding_window") is None else get_int(cfg, "sliding_window", where)


def _llama_like(cfg: dict, where: str, bias: bool | None = None) -> dict:
    """Llama's recipe fields: biases as `attention_bias` / `mlp_bias` say (or `bias` for q/k/v), the activation."""
    attn = _flag(cfg, "attention_bias", where)
    return dict(qkv_bias=attn if bias is None else bias, o_bias=attn, mlp_bias=_flag(cfg, "mlp_bias", where),
                activation=activation_of(cfg, "hidden_act", where, ACTIVATIONS))


def _llama(cfg: dict, where: str, head_dim: int) -> dict:
    return _llama_like(cfg, where)


def _mistral(cfg: dict, where: str, head_dim: int) -> dict:
    return dict(_llama_like(cfg, where, bias=False), o_bias=False, mlp_bias=False,
                uniform_window=_window_if_enabled(cfg, where))


def _qwen2(cfg: dict, where: str, head_dim: int) -> dict:
    return dict(_llama_like(cfg, where, bias=True), o_bias=False, mlp_bias=False,
                uniform_window=_window_if_enabled(cfg, where))


def _qwen3(cfg: dict, where: str, head_dim: int) -> dict:
    return dict(_llama_like(cfg, where), mlp_bias=False, qk_norm=True, uniform_window=_window_if_enabled(cfg, where))


def _granite(cfg: dict, where: str, head_dim: int) -> dict:
    """Granite 3: Llama with four multipliers (transformers' defaults 1.0 each, the attention one included)."""
    return dict(_llama_like(cfg, where),
                embed_multiplier=get_float(cfg, "embedding_multiplier", where, default=1.0),
                attn_scale=get_float(cfg, "attention_multiplier", where, default=1.0, positive=True),
                residual_scale=get_float(cfg, "residual_multiplier", where, default=1.0),
                logits_divisor=get_float(cfg, "logits_scaling", where, default=1.0, positive=True))


def _olmo2(cfg: dict, where: str, head_dim: int) -> dict:
    """OLMo 2: norms on the attention and MLP outputs only, q/k RMSNorm over the whole projection."""
    return dict(_llama_like(cfg, where), mlp_bias=False, norm="post", qk_norm=True, qk_norm_span="proj")


def _smollm3(cfg: dict, where: str, head_dim: int) -> dict:
    """SmolLM3: Llama with NoPE layers (`no_rope_layers[i] == 0`; default every 4th) and optional sliding layers."""
    layers = get_int(cfg, "num_hidden_layers", where)
    flags = cfg.get("no_rope_layers")
    if flags is None:
        interval = get_int(cfg, "no_rope_layer_interval", where, default=4)
        flags = [int((i + 1) % interval != 0) for i in range(layers)]
    if not isinstance(flags, list) or len(flags) < layers or any(f not in (0, 1) for f in flags):
        raise UnsupportedModelError(f"{where}: field `no_rope_layers` is {flags!r}; expected {layers} entries of 0 "
                                    "(no RoPE) or 1")
    out = dict(_llama_like(cfg, where), nope_layers=tuple(i for i, f in enumerate(flags[:layers]) if not f))
    if get_bool(cfg, "use_sliding_window", where) and cfg.get("sliding_window") is not None:
        out.update(layer_types=layer_types_of(cfg, where, layers), sliding_window=get_int(cfg, "sliding_window", where))
    return out


def _phi3(cfg: dict, where: str, head_dim: int) -> dict:
    """Phi-3 / Phi-4-mini: fused checkpoint weights, partial rotary (generic), a window on every layer if set."""
    return dict(activation=activation_of(cfg, "hidden_act", where, ACTIVATIONS),
                uniform_window=None if cfg.get("sliding_window") is None else get_int(cfg, "sliding_window", where))


def _gemma(cfg: dict, where: str, pattern: int) -> dict:
    """Gemma 2 / 3: sandwich norms with the +1 offset, embeddings scaled by sqrt(hidden), query_pre_attn_scalar,
    soft-caps, sliding layers (`layer_types`, else every `pattern`-th layer is full)."""
    if get_bool(cfg, "use_bidirectional_attention", where):
        raise UnsupportedModelError(f"{where}: field `use_bidirectional_attention` is true (an encoder); "
                                    "shadow-edge exports causal decoders")
    layers = get_int(cfg, "num_hidden_layers", where)
    kinds = layer_types_of(cfg, where, layers) or tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers))
    window = None if cfg.get("sliding_window") is None else get_int(cfg, "sliding_window", where)
    return dict(_llama_like(cfg, where), mlp_bias=False, norm="sandwich", norm_offset=1.0,
                activation=activation_of(cfg, "hidden_activation", where, ACTIVATIONS), embed_sqrt_hidden=True,
                attn_scale=1.0 / math.sqrt(get_float(cfg, "query_pre_attn_scalar", where, default=256.0,
                                                     positive=True)),
                attn_softcap=positive_or_zero(cfg, "attn_logit_softcapping", where),
                final_softcap=positive_or_zero(cfg, "final_logit_softcapping", where),
                layer_types=kinds if window else (), sliding_window=window or 0)


def _gemma2(cfg: dict, where: str, head_dim: int) -> dict:
    return _gemma(cfg, where, pattern=2)


def _gemma3_text(cfg: dict, where: str, head_dim: int) -> dict:
    """Gemma 3: Gemma 2's recipe with per-head q/k norms and local/global RoPE (read generically); transformers'
    Gemma 3 attention does not apply `attn_logit_softcapping`, so neither do we."""
    pattern = get_int(cfg, "sliding_window_pattern", where, default=6)
    return dict(_gemma(cfg, where, pattern), qk_norm=True, attn_softcap=0.0)


register(Architecture("llama", _llama))
register(Architecture("mistral", _mistral))
register(Architecture("qwen2", _qwen2))
register(Architecture("qwen3", _qwen3))
register(Architecture("granite", _granite))
register(Architecture("olmo2", _olmo2, names={**POST_NORM_NAMES}))
register(Architecture("smollm3", _smollm3))
register(Architecture("phi3", _phi3, partial_rotary=True,
                      fused={"self_attn.qkv_proj.weight": ("q.weight", "k.weight", "v.weight"),
                             "mlp.gate_up_proj.weight": ("gate.weight", "up.weight")}))
register(Architecture("gemma2", _gemma2, names=SANDWICH_NAMES))
register(Architecture("gemma3_text", _gemma3_text, names=SANDWICH_NAMES))
