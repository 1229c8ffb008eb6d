"""Decoder architectures: a registry mapping HF `model_type` to a validated layer recipe (`DecoderConfig`).

A `DecoderConfig` is the recipe of one decoder stack: its shapes plus how a layer computes — norm placement
and offset, q/k norms, the MLP activation, scales, soft-caps, sliding windows and per-layer RoPE. The torch
reference (core/model.py) and the graph builder (export/graphs.py) both interpret it through twin op
tables; nothing downstream branches on the architecture name. An `Architecture` is one registration
(core/families.py): the model_type, its HF -> canonical weight-name map and a `read` that turns the
family's config fields into recipe fields. The generic fields (dims, eps, RoPE, tying) are read here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from shadow_edge.core.config_values import get_bool, get_float, get_int, get_optional_int
from shadow_edge.core.rope import read_rope, rope_context_limit, rope_tables_spec
from shadow_edge.errors import UnsupportedModelError

NORM_PLACEMENTS = ("pre", "post", "sandwich")  # pre: before attn/MLP; post: on their outputs; sandwich: both
SLIDING, FULL = "sliding", "full"  # layer kinds (`DecoderConfig.layer_types`)
# Config fields that turn a decoder into a mixture of experts (not a dense layer recipe).
MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class DecoderConfig:
    """Shapes and layer recipe of one decoder stack (base backbone or shadow backbone)."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # never derived when the config gives it (Qwen3: 128 != 1024 / 16)
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int  # the context length the runtime allows (a uniform sliding window included)
    qk_norm: bool = False  # RMSNorm on q and k before RoPE (Qwen3, Gemma 3, OLMo 2)
    qkv_bias: bool = False  # Qwen2: bias on q/k/v projections
    o_bias: bool = False  # Llama `attention_bias=True`: bias on o_proj as well
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # core/rope.py parameters; {} = default RoPE
    # ---- the layer recipe beyond Llama (defaults: Llama) ----
    norm: str = "pre"  # NORM_PLACEMENTS
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Gemma 1.0
    qk_norm_span: str = "head"  # "head": over head_dim (Qwen3, Gemma 3); "proj": over the whole projection (OLMo 2)
    activation: str = "silu"  # MLP activation (HF hidden_act)
    embed_multiplier: float = 1.0  # embeddings scaled by this (Granite's embedding_multiplier) ...
    embed_sqrt_hidden: bool = False  # ... and by sqrt(hidden_size) (Gemma)
    attn_scale: float = 0.0  # softmax scale; 0 = head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float = 0.0  # scores = c * tanh(scores / c) before the mask; 0 = off
    residual_scale: float = 1.0  # attention and MLP outputs scaled before the residual add (Granite)
    final_softcap: float = 0.0  # the base head's logits soft-capped (Gemma 2); shadow heads are not
    logits_divisor: float = 1.0  # the base head's logits divided by this (Granite's logits_scaling)
    sliding_window: int = 0  # window of the SLIDING layers (keys q-W+1..q); 0 = none
    layer_types: tuple[str, ...] = ()  # per layer SLIDING / FULL; () = all FULL
    nope_layers: tuple[int, ...] = ()  # layers without RoPE (SmolLM3)
    rotary_dim: int = 0  # leading dims of each head that RoPE rotates; 0 = head_dim (Phi-3: 0.75 * head_dim)
    local_rope_theta: float = 0.0  # RoPE base of the SLIDING layers; 0 = the same RoPE as FULL layers (Gemma 3)
    local_rope_scaling: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "max_positions"):
            if int(getattr(self, name)) < 1:
                raise UnsupportedModelError(f"config field `{name}` must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"config: num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise UnsupportedModelError(f"config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise UnsupportedModelError(f"config: the rotary dims ({self.rotary_dim}) must be even and at most "
                                        f"head_dim ({self.head_dim}); check partial_rotary_factor")
        if self.norm not in NORM_PLACEMENTS:
            raise ValueError(f"DecoderConfig.norm must be one of {NORM_PLACEMENTS}, got {self.norm!r}")
        # a shadow of fewer layers keeps the first layers' kinds (as shadow-peft and peft build it)
        object.__setattr__(self, "layer_types", tuple(self.layer_types[:self.num_layers]))
        object.__setattr__(self, "nope_layers", tuple(i for i in self.nope_layers if i < self.num_layers))
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise UnsupportedModelError(f"config field `layer_types` has {len(self.layer_types)} entries for "
                                        f"{self.num_layers} layers; give one per layer")
        if SLIDING in self.layer_types and self.sliding_window < 1:
            raise UnsupportedModelError("config: `layer_types` has sliding_attention layers but `sliding_window` "
                                        "is not set; give the window size")

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def rotary(self) -> int:
        """The dims of each head RoPE rotates (the leading ones)."""
        return self.rotary_dim or self.head_dim

    @property
    def attention_scale(self) -> float:
        return self.attn_scale or self.head_dim ** -0.5

    @property
    def embed_scale(self) -> float:
        return self.embed_multiplier * (self.hidden_size ** 0.5 if self.embed_sqrt_hidden else 1.0)

    @property
    def has_input_norm(self) -> bool:
        """A norm before attention and before the MLP (pre and sandwich placements)."""
        return self.norm != "post"

    @property
    def has_output_norms(self) -> bool:
        """A norm on the attention output and on the MLP output (post and sandwich placements)."""
        return self.norm != "pre"

    def layer_window(self, i: int) -> int:
        """The sliding window of layer i (0 = full attention)."""
        return self.sliding_window if self.layer_types and self.layer_types[i] == SLIDING else 0

    def layer_rope(self, i: int) -> str | None:
        """Which RoPE layer i applies: FULL (the global one), SLIDING (the local one), or None (no RoPE)."""
        if i in self.nope_layers:
            return None
        return SLIDING if self.local_rope_theta and self.layer_window(i) else FULL

    def rope_spec(self, kind: str = FULL) -> tuple[float, dict[str, Any]]:
        """(theta, parameters) of the FULL or SLIDING layers' RoPE."""
        if kind == SLIDING and self.local_rope_theta:
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def with_layers(self, num_layers: int) -> "DecoderConfig":
        return replace(self, num_layers=num_layers)

    def rope_inv_freq(self, kind: str = FULL) -> list[float]:
        """Inverse frequencies [rotary / 2] of this config's RoPE variant (core/rope.py)."""
        return rope_tables_spec(*self.rope_spec(kind), self.rotary)[0]

    def rope_attention_factor(self, kind: str = FULL) -> float:
        """The factor the RoPE cos/sin tables are scaled by (yarn's attention factor; 1 otherwise)."""
        return rope_tables_spec(*self.rope_spec(kind), self.rotary)[1]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# HF decoder-layer parameter names -> canonical names (core/spec.py), shared by the Llama-shaped families.
LLAMA_NAMES = {
    "self_attn.q_proj.weight": "q.weight", "self_attn.k_proj.weight": "k.weight",
    "self_attn.v_proj.weight": "v.weight", "self_attn.o_proj.weight": "o.weight",
    "self_attn.q_proj.bias": "q.bias", "self_attn.k_proj.bias": "k.bias",
    "self_attn.v_proj.bias": "v.bias", "self_attn.o_proj.bias": "o.bias",
    "self_attn.q_norm.weight": "q_norm.weight", "self_attn.k_norm.weight": "k_norm.weight",
    "mlp.gate_proj.weight": "gate.weight", "mlp.up_proj.weight": "up.weight", "mlp.down_proj.weight": "down.weight",
    "mlp.gate_proj.bias": "gate.bias", "mlp.up_proj.bias": "up.bias", "mlp.down_proj.bias": "down.bias",
    "input_layernorm.weight": "input_norm.weight", "post_attention_layernorm.weight": "post_norm.weight",
}


@dataclass(frozen=True)
class Architecture:
    """One registered family: its HF weight names and how its config fields become recipe fields."""

    model_type: str
    read: Callable[[dict, str, int], dict[str, Any]]  # (config dict, where, head_dim) -> DecoderConfig fields
    names: dict[str, str] = field(default_factory=lambda: dict(LLAMA_NAMES))  # HF layer name -> canonical
    # HF fused layer weights -> the canonical parts stacked along their rows (Phi-3's qkv_proj, gate_up_proj)
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    partial_rotary: bool = False  # the family's attention rotates part of head_dim (partial_rotary_factor)

    def hf_name(self, canonical: str) -> str:
        return {v: k for k, v in self.names.items()}[canonical]


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> None:
    if arch.model_type in _REGISTRY:
        raise ValueError(f"architecture {arch.model_type!r} is already registered")
    _REGISTRY[arch.model_type] = arch


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def architecture(model_type: str) -> Architecture:
    return _REGISTRY[model_type]


def _refuse_unsupported(cfg: dict, where: str) -> None:
    """One clear error for configs that are not a dense decoder of a registered family."""
    model_type = cfg.get("model_type")
    for key in ("text_config", "vision_config"):
        if isinstance(cfg.get(key), dict):
            raise UnsupportedModelError(
                f"{where}: field `{key}` makes this a multimodal config (model_type {model_type!r}); shadow-edge "
                "exports text decoders: pass the text model's own config and weights (e.g. gemma3_text)")
    for key in MOE_FIELDS:
        if cfg.get(key):
            raise UnsupportedModelError(f"{where}: field `{key}` is {cfg[key]!r}: a mixture-of-experts decoder; "
                                        "shadow-edge supports dense decoders only")
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}")


def decoder_config_from_hf(cfg: dict, where: str) -> DecoderConfig:
    """Build a `DecoderConfig` from a HF `config.json` dict; `where` names the file in errors.

    Every base and shadow config of every checkpoint reader comes through here: each value is
    type-checked (core/config_values.py), RoPE is read as transformers reads it (core/rope.py) and the
    family's registration reads the rest of its recipe (core/families.py).
    """
    _refuse_unsupported(cfg, where)
    arch = _REGISTRY[cfg["model_type"]]
    hidden, heads = get_int(cfg, "hidden_size", where), get_int(cfg, "num_attention_heads", where)
    head_dim = get_optional_int(cfg, "head_dim", where)
    if head_dim is None:
        head_dim = hidden // heads  # as transformers derives it
    (theta, scaling, partial), local = _read_ropes(cfg, where, arch.partial_rotary)
    max_pos = get_int(cfg, "max_position_embeddings", where, default=2048)
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        get_bool(cfg, flag, where)
    fields = arch.read(cfg, where, head_dim)
    window = fields.pop("uniform_window", None)
    if window is not None:
        max_pos = min(max_pos, window)  # every layer slides: exact without a sliding mask up to the window
    rotary = int(head_dim * partial) if partial != 1 else 0
    for rope in ((theta, scaling), local):  # each variant's own fields checked now, naming the file
        if rope[0]:
            rope_tables_spec(*rope, rotary or head_dim, where)
            max_pos = min(max_pos, rope_context_limit(rope[1]) or max_pos)  # longrope: within the original length
    try:
        config = DecoderConfig(
            model_type=cfg["model_type"],
            hidden_size=hidden,
            num_layers=get_int(cfg, "num_hidden_layers", where),
            num_heads=heads,
            num_kv_heads=get_optional_int(cfg, "num_key_value_heads", where) or heads,
            head_dim=head_dim,
            intermediate_size=get_int(cfg, "intermediate_size", where),
            vocab_size=get_int(cfg, "vocab_size", where),
            rms_norm_eps=get_float(cfg, "rms_norm_eps", where, default=1e-6, positive=True),
            rope_theta=theta,
            max_positions=max_pos,
            tie_word_embeddings=get_bool(cfg, "tie_word_embeddings", where),
            rope_scaling=scaling,
            rotary_dim=rotary,
            local_rope_theta=local[0],
            local_rope_scaling=local[1],
            **fields,
        )
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{where}: {e}") from None
    return config


def _read_ropes(cfg: dict, where: str, partial_ok: bool) -> tuple[tuple[float, dict, float], tuple[float, dict]]:
    """The FULL layers' (theta, parameters, partial factor) and the SLIDING layers' (theta, parameters), the latter
    (0.0, {}) when they rotate like the FULL ones. transformers 5 writes per-layer-type RoPE as
    `rope_parameters: {"full_attention": {...}, "sliding_attention": {...}}` (Gemma 3); older configs give
    `rope_local_base_freq` beside the global RoPE."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params and set(params) <= {"full_attention", "sliding_attention"}:
        one = lambda kind: read_rope({**cfg, "rope_scaling": None, "rope_parameters": params.get(kind) or {}},  # noqa
                                     f"{where} (rope_parameters.{kind})", partial_ok)
        glob, loc = one("full_attention"), one("sliding_attention")
        return glob, ((0.0, {}) if loc[:2] == glob[:2] else loc[:2])
    glob = read_rope(cfg, where, partial_ok)
    if cfg.get("rope_local_base_freq") is not None:
        theta = get_float(cfg, "rope_local_base_freq", where, positive=True)
        return glob, ((0.0, {}) if (theta, {}) == glob[:2] else (theta, {}))
    return glob, (0.0, {})


def activation_of(cfg: dict, key: str, where: str, supported: tuple[str, ...]) -> str:
    """The MLP activation named by field `key`, one of `supported` (the op tables' keys)."""
    act = cfg.get(key, "silu")
    if act not in supported:
        raise UnsupportedModelError(f"{where}: field `{key}` is {act!r}; supported activations: "
                                    f"{', '.join(supported)}")
    return act


def layer_types_of(cfg: dict, where: str, num_layers: int) -> tuple[str, ...]:
    """transformers' `layer_types` (sliding_attention / full_attention per layer) as SLIDING / FULL."""
    raw = cfg.get("layer_types")
    kinds = {"sliding_attention": SLIDING, "full_attention": FULL}
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) < num_layers or any(t not in kinds for t in raw):
        raise UnsupportedModelError(f"{where}: field `layer_types` is {raw!r}; expected a list of "
                                    f"{num_layers} entries, each 'sliding_attention' or 'full_attention'")
    return tuple(kinds[t] for t in raw[:num_layers])


def positive_or_zero(cfg: dict, key: str, where: str) -> float:
    """A positive number, or 0.0 when the field is absent or null (soft-caps)."""
    return 0.0 if cfg.get(key) is None else get_float(cfg, key, where, positive=True)


def sqrt_scale(value: float) -> float:
    return 1.0 / math.sqrt(value)


# Importing the families registers them.
from shadow_edge.core import families  # noqa: E402,F401
