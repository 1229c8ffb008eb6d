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

from shadow_edge.core.arch import DecoderConfig
from shadow_edge.core.classifier import pool_last_real
from shadow_edge.core.lazy_tensor import dense, embedding, linear
from shadow_edge.core.spec import DecoderWeights, ShadowModelSpec
from shadow_edge.io_spec import GRAPH_MODES, MODE_SHADOW_ONLY

KV = list[tuple[torch.Tensor, torch.Tensor]]
MODES = GRAPH_MODES  # the graph contract's (io_spec)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(cfg: DecoderConfig, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [batch, 1, seq, head_dim] for integer positions [batch, seq]."""
    inv = torch.tensor(cfg.rope_inv_freq(), dtype=torch.float32)
    freqs = position_ids.to(torch.float32)[..., None] * inv  # [b, t, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [b, 1, t, hd]
    scale = cfg.rope_attention_factor()  # yarn scales cos and sin (transformers' attention_scaling)
    return emb.cos() * scale, emb.sin() * scale


def attention_bias(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """Additive bias [batch, 1, seq, past + seq]: 0 where allowed (causal and not padding), else min.

    A finite minimum (not -inf) keeps fully masked padding rows finite: they softmax to a
    uniform row and never produce NaN.
    """
    total = attention_mask.shape[1]
    q_pos = torch.arange(total - seq, total)[:, None]  # [t, 1] absolute positions of the queries
    k_pos = torch.arange(total)[None, :]  # [1, T]
    allowed = (k_pos <= q_pos)[None, None] & attention_mask[:, None, None, :].bool()
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def _linear(x: torch.Tensor, layer: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, layer[f"{name}.weight"], layer.get(f"{name}.bias"))


def decoder_layer(cfg: DecoderConfig, layer: dict[str, torch.Tensor], h: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, bias: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    b, t, _ = h.shape
    layer = {name: dense(w) for name, w in layer.items()}  # this layer's float32 weights (lazy ones read now)
    x = rms_norm(h, layer["input_norm.weight"], cfg.rms_norm_eps)
    q = _linear(x, layer, "q").view(b, t, cfg.num_heads, cfg.head_dim)
    k = _linear(x, layer, "k").view(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = _linear(x, layer, "v").view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    if cfg.qk_norm:
        q = rms_norm(q, layer["q_norm.weight"], cfg.rms_norm_eps)
        k = rms_norm(k, layer["k_norm.weight"], cfg.rms_norm_eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, heads, t, hd]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    if past is not None:
        k = torch.cat((past[0], k), dim=2)
        v = torch.cat((past[1], v), dim=2)
    g = cfg.kv_groups
    qg = q.reshape(b, cfg.num_kv_heads, g * t, cfg.head_dim)  # heads grouped by their kv head
    scores = (qg @ k.transpose(-1, -2)) * cfg.head_dim ** -0.5  # [b, kv, g*t, T]
    probs = (scores.view(b, cfg.num_heads, t, -1) + bias).softmax(-1)
    out = (probs.view(b, cfg.num_kv_heads, g * t, -1) @ v).view(b, cfg.num_heads, t, cfg.head_dim)
    h = h + _linear(out.transpose(1, 2).reshape(b, t, -1), layer, "o")
    x = rms_norm(h, layer["post_norm.weight"], cfg.rms_norm_eps)
    h = h + _linear(F.silu(_linear(x, layer, "gate")) * _linear(x, layer, "up"), layer, "down")
    return h, (k, v)


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


class ShadowModel:
    """ShadowPEFT forward passes with explicit KV, in float32, for one `ShadowModelSpec`."""

    def __init__(self, spec: ShadowModelSpec):
        self.spec = spec

    def _stack(self, w: DecoderWeights, h: torch.Tensor, step: StepInputs, past: KV | None,
               hook=None) -> tuple[torch.Tensor, KV]:
        cos, sin = rope_tables(w.config, step.position_ids)
        bias = attention_bias(step.attention_mask, h.shape[1])
        present: KV = []
        for i, layer in enumerate(w.layers):
            if hook is not None:
                h = hook.before(i, h)
            h, kv = decoder_layer(w.config, layer, h, cos, sin, bias, None if past is None else past[i])
            if hook is not None:
                hook.after(i, h)
            present.append(kv)
        return h, present

    @torch.no_grad()
    def shadow_state(self, step: StepInputs, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Shadow backbone (incl. final norm) -> projection: shadow_hidden_states [b, t, hidden]."""
        s = self.spec
        h = embedding(step.input_ids, s.shadow_embed)  # the rows used, read from a lazy table
        h, present = self._stack(s.shadow, h, step, past)
        h = rms_norm(h, dense(s.shadow.norm), s.shadow.config.rms_norm_eps)
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
        h = embedding(step.input_ids, s.base.embed)
        hook = None if shadow_hidden is None else _AdapterHook(s, shadow_hidden)
        h, present = self._stack(s.base, h, step, past, hook)
        return rms_norm(h, dense(s.base.norm), s.base.config.rms_norm_eps), present

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
        """The mode's head on hidden states [b, t, hidden] -> [b, t, vocab or labels]."""
        return linear(hidden, *self.head(mode))

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
        """Label logits [b, labels] on each row's last real token (full pass, left or right padding)."""
        if self.spec.classifier is None:
            raise ValueError("this spec has no classifier heads (a causal-LM adapter)")
        step = StepInputs.full(input_ids, attention_mask)
        logits, _ = self.forward(step, mode)  # [b, t, labels]
        return pool_last_real(logits, step.attention_mask)


# Update-MLP activations by `AdapterVariant.update_activation` (export/graphs.py has the ONNX twins).
ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


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
