"""The reference PyTorch model: ShadowPEFT math with explicit KV tensors, masks and positions.

This is what every exported graph is validated against, and what is validated against
`shadow_peft`. It reads only a `ShadowModelSpec`, one layer's weights at a time (a checkpoint's `LazyTensor`s are
read on use and let go, so the model is never held whole in float32). Two entry points mirror the deployed
graphs: `shadow_state` (shadow backbone -> projection; no vocabulary projection) and
`backbone` (base layers with injection/update); `logits`/`forward` add the heads.

KV tensors: a list of (key, value) pairs, each [batch, kv_heads, seq, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shadow_edge.core.arch import FULL, DecoderConfig
from shadow_edge.core.classifier import pool_last_real
from shadow_edge.core.lazy_tensor import dense, embedding, linear
from shadow_edge.core.spec import DecoderWeights, ShadowModelSpec
from shadow_edge.io_spec import GRAPH_MODES, MODE_SHADOW_ONLY

KV = list[tuple[torch.Tensor, torch.Tensor]]
MODES = GRAPH_MODES  # the graph contract's (io_spec)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def norm(cfg: DecoderConfig, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The recipe's RMSNorm: scale (offset + weight), Gemma's offset 1 computed in float32 as transformers does."""
    w = dense(weight)
    return rms_norm(x, w + cfg.norm_offset if cfg.norm_offset else w, cfg.rms_norm_eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(cfg: DecoderConfig, position_ids: torch.Tensor, kind: str = FULL,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [batch, 1, seq, rotary] of the FULL or SLIDING layers' RoPE for integer positions [batch, seq]."""
    inv = torch.tensor(cfg.rope_inv_freq(kind), dtype=torch.float32)
    freqs = position_ids.to(torch.float32)[..., None] * inv  # [b, t, rotary/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [b, 1, t, rotary]
    scale = cfg.rope_attention_factor(kind)  # yarn scales cos and sin (transformers' attention_scaling)
    return emb.cos() * scale, emb.sin() * scale


def attention_bias(attention_mask: torch.Tensor, seq: int, window: int = 0) -> torch.Tensor:
    """Additive bias [batch, 1, seq, past + seq]: 0 where allowed (causal, within `window` keys when > 0, and not
    padding), else min.

    A finite minimum (not -inf) keeps fully masked padding rows finite: they softmax to a
    uniform row and never produce NaN.
    """
    total = attention_mask.shape[1]
    q_pos = torch.arange(total - seq, total)[:, None]  # [t, 1] absolute positions of the queries
    k_pos = torch.arange(total)[None, :]  # [1, T]
    allowed = k_pos <= q_pos
    if window:
        allowed = allowed & (k_pos > q_pos - window)  # transformers' sliding window: the last `window` keys
    allowed = allowed[None, None] & attention_mask[:, None, None, :].bool()
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


class LayerInputs:
    """What every layer of one stack reads besides its weights: RoPE tables and attention biases, made once per
    kind of layer (FULL / SLIDING RoPE, each window) and handed to layer i as its recipe says."""

    def __init__(self, cfg: DecoderConfig, step: "StepInputs", seq: int):
        self.cfg, self._rope, self._bias = cfg, {}, {}
        self.step, self.seq = step, seq

    def rope(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        kind = self.cfg.layer_rope(i)
        if kind is not None and kind not in self._rope:
            self._rope[kind] = rope_tables(self.cfg, self.step.position_ids, kind)
        return None if kind is None else self._rope[kind]

    def bias(self, i: int) -> torch.Tensor:
        window = self.cfg.layer_window(i)
        if window not in self._bias:
            self._bias[window] = attention_bias(self.step.attention_mask, self.seq, window)
        return self._bias[window]


def _linear(x: torch.Tensor, layer: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, layer[f"{name}.weight"], layer.get(f"{name}.bias"))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the leading cos.shape[-1] dims of each head (all of them unless the rotary is partial)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, keep = x[..., :r], x[..., r:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, keep), dim=-1)


def decoder_layer(cfg: DecoderConfig, layer: dict[str, torch.Tensor], h: torch.Tensor, inputs: LayerInputs, i: int,
                  past: tuple[torch.Tensor, torch.Tensor] | None,
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Layer i of the recipe `cfg` on the residual stream h [b, t, d]; returns (h', (keys, values) [b, kv, T, hd])."""
    b, t, _ = h.shape
    layer = {name: dense(w) for name, w in layer.items()}  # this layer's float32 weights (lazy ones read now)
    x = norm(cfg, h, layer["input_norm.weight"]) if cfg.has_input_norm else h
    q, k, v = _linear(x, layer, "q"), _linear(x, layer, "k"), _linear(x, layer, "v")
    if cfg.qk_norm and cfg.qk_norm_span == "proj":  # OLMo 2: over the whole projection
        q, k = norm(cfg, q, layer["q_norm.weight"]), norm(cfg, k, layer["k_norm.weight"])
    q = q.view(b, t, cfg.num_heads, cfg.head_dim)
    k = k.view(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    if cfg.qk_norm and cfg.qk_norm_span == "head":
        q, k = norm(cfg, q, layer["q_norm.weight"]), norm(cfg, k, layer["k_norm.weight"])
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, heads, t, hd]
    rope = inputs.rope(i)
    if rope is not None:
        q, k = _rotate(q, *rope), _rotate(k, *rope)
    if past is not None:
        k = torch.cat((past[0], k), dim=2)
        v = torch.cat((past[1], v), dim=2)
    g = cfg.kv_groups
    qg = q.reshape(b, cfg.num_kv_heads, g * t, cfg.head_dim)  # heads grouped by their kv head
    scores = (qg @ k.transpose(-1, -2)) * cfg.attention_scale  # [b, kv, g*t, T]
    if cfg.attn_softcap:
        scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    probs = (scores.view(b, cfg.num_heads, t, -1) + inputs.bias(i)).softmax(-1)
    out = (probs.view(b, cfg.num_kv_heads, g * t, -1) @ v).view(b, cfg.num_heads, t, cfg.head_dim)
    o = _linear(out.transpose(1, 2).reshape(b, t, -1), layer, "o")
    h = h + _residual(cfg, layer, o, "attn_out_norm")
    x = norm(cfg, h, layer["post_norm.weight"]) if cfg.has_input_norm else h
    m = _linear(ACTIVATIONS[cfg.activation](_linear(x, layer, "gate")) * _linear(x, layer, "up"), layer, "down")
    h = h + _residual(cfg, layer, m, "mlp_out_norm")
    return h, (k, v)


def _residual(cfg: DecoderConfig, layer: dict[str, torch.Tensor], out: torch.Tensor, out_norm: str) -> torch.Tensor:
    """What a sublayer adds to the stream: its output, normed (post/sandwich placements), scaled (Granite)."""
    if cfg.has_output_norms:
        out = norm(cfg, out, layer[f"{out_norm}.weight"])
    return out * cfg.residual_scale if cfg.residual_scale != 1 else out


def head_transform(cfg: DecoderConfig, logits: torch.Tensor) -> torch.Tensor:
    """The base head's logits as the family's causal LM returns them: divided (Granite), soft-capped (Gemma)."""
    if cfg.logits_divisor != 1:
        logits = logits / cfg.logits_divisor
    if cfg.final_softcap:
        logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


@dataclass
class StepInputs:
    """Explicit inputs of one forward step (prefill or decode)."""

    input_ids: torch.Tensor  # [b, t] int64
    attention_mask: torch.Tensor  # [b, past + t] int64, 1 = real token, 0 = left padding
    position_ids: torch.Tensor  # [b, t] int64

    @classmethod
    def full(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> "StepInputs":
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        return cls(input_ids, mask, position_ids_from_mask(mask))


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only (left padding gets position 1, as HF generate does)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def embed(cfg: DecoderConfig, ids: torch.Tensor, table) -> torch.Tensor:
    """The stack's input [b, t, d]: embedding rows (only those used, from a lazy table) times the recipe's scale,
    rounded to float32 first as transformers' scaled embeddings do."""
    h = embedding(ids, table)
    return h * torch.tensor(cfg.embed_scale, dtype=torch.float32) if cfg.embed_scale != 1 else h


class ShadowModel:
    """ShadowPEFT forward passes with explicit KV, in float32, for one `ShadowModelSpec`."""

    def __init__(self, spec: ShadowModelSpec):
        self.spec = spec

    def _stack(self, w: DecoderWeights, h: torch.Tensor, step: StepInputs, past: KV | None,
               hook=None) -> tuple[torch.Tensor, KV]:
        inputs = LayerInputs(w.config, step, h.shape[1])
        present: KV = []
        for i, layer in enumerate(w.layers):
            if hook is not None:
                h = hook.before(i, h)
            h, kv = decoder_layer(w.config, layer, h, inputs, i, None if past is None else past[i])
            if hook is not None:
                hook.after(i, h)
            present.append(kv)
        return h, present

    @torch.no_grad()
    def shadow_state(self, step: StepInputs, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Shadow backbone (incl. final norm) -> projection: shadow_hidden_states [b, t, hidden]."""
        s = self.spec
        h = embed(s.shadow.config, step.input_ids, s.shadow_embed)
        h, present = self._stack(s.shadow, h, step, past)
        h = norm(s.shadow.config, h, s.shadow.norm)
        if s.projection is not None:
            h = F.linear(h, s.projection)
        return h, present

    @torch.no_grad()
    def backbone(self, step: StepInputs, shadow_hidden: torch.Tensor | None, past: KV | None = None,
                 ) -> tuple[torch.Tensor, KV]:
        """Base layers with injection before / update after the adapted blocks; returns final-normed hidden.

        `shadow_hidden=None` runs the plain backbone (no adapter), for overhead comparisons.
        """
        s = self.spec
        h = embed(s.base.config, step.input_ids, s.base.embed)
        hook = None if shadow_hidden is None else _AdapterHook(s, shadow_hidden)
        h, present = self._stack(s.base, h, step, past, hook)
        return norm(s.base.config, h, s.base.norm), present

    @torch.no_grad()
    def forward(self, step: StepInputs, mode: str, past: dict[str, KV] | None = None, last_only: bool = False,
                ) -> tuple[torch.Tensor, dict[str, KV]]:
        """Logits [b, t or 1, vocab or labels] and the new KV per stack ({"shadow": ..., "base": ...})."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        past = past or {}
        shadow_h, shadow_kv = self.shadow_state(step, past.get("shadow"))
        if mode == MODE_SHADOW_ONLY:
            hidden, present = shadow_h, {"shadow": shadow_kv}
        else:
            hidden, base_kv = self.backbone(step, shadow_h, past.get("base"))
            present = {"shadow": shadow_kv, "base": base_kv}
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden, mode), present

    def head(self, mode: str) -> tuple:
        """(weight [out, hidden], bias [out] or None) of the mode's head (vocabulary or label head); the
        vocabulary weight as the spec holds it (lazy in a streamed reference: `logits` reads it in blocks)."""
        s = self.spec
        if s.classifier is not None:
            return s.classifier.for_mode(mode)
        return (s.shadow_lm_head if mode == MODE_SHADOW_ONLY else s.lm_head), None

    def logits(self, hidden: torch.Tensor, mode: str) -> torch.Tensor:
        """The mode's head on hidden states [b, t, hidden] -> [b, t, vocab or labels]; the base's vocabulary head
        as the family's causal LM applies it (`head_transform`), the shadow's raw, as both trainers compute it."""
        out = linear(hidden, *self.head(mode))
        if self.spec.classifier is None and mode != MODE_SHADOW_ONLY:
            out = head_transform(self.spec.base.config, out)
        return out

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
        """Label logits [b, labels] on each row's last real token (full pass, left or right padding)."""
        if self.spec.classifier is None:
            raise ValueError("this spec has no classifier heads (a causal-LM adapter)")
        step = StepInputs.full(input_ids, attention_mask)
        logits, _ = self.forward(step, mode)  # [b, t, labels]
        return pool_last_real(logits, step.attention_mask)


# Activations by `DecoderConfig.activation` and `AdapterVariant.update_activation` (export/graphs.py has the ONNX
# twins); gelu = exact (erf), gelu_pytorch_tanh = the tanh approximation.
ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class _AdapterHook:
    """Injection before and shadow update after each adapted base block (`spec.adapted_range`), in the
    form `spec.variant` declares (core/variants.py)."""

    def __init__(self, spec: ShadowModelSpec, shadow_hidden: torch.Tensor):
        self.s, self.state = spec, shadow_hidden
        self.act = ACTIVATIONS[spec.variant.update_activation]

    def before(self, i: int, h: torch.Tensor) -> torch.Tensor:
        s = self.s
        if i not in s.adapted_range:
            return h
        j = i - s.first_adapted_layer
        delta = (h - self.state) @ s.injection_down[j] @ s.injection_up[j]
        return h + s.alpha * delta

    def after(self, i: int, h: torch.Tensor) -> None:
        s = self.s
        if i not in s.adapted_range:
            return
        j = i - s.first_adapted_layer
        u = h
        if s.variant.update_norm:
            u = F.layer_norm(h, (h.shape[-1],), s.update_norm_weight, s.update_norm_bias, s.update_norm_eps)
        gate = torch.sigmoid(self._mlp(u, j, "gate"))
        target = self._mlp(u, j, "transform")
        self.state = self.state + gate * (target - self.state)

    def _mlp(self, u: torch.Tensor, j: int, name: str) -> torch.Tensor:
        """G or T of block j: Linear(d, g) -> act -> Linear(g, d), biases when the variant has them."""
        s = self.s
        w_in, w_out = getattr(s, f"{name}_in")[j], getattr(s, f"{name}_out")[j]
        b_in, b_out = ((getattr(s, f"{name}_in_bias")[j], getattr(s, f"{name}_out_bias")[j])
                       if s.variant.update_bias else (None, None))
        return F.linear(self.act(F.linear(u, w_in, b_in)), w_out, b_out)
