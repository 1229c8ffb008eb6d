"""Decoder architectures: a registry mapping HF `model_type` to a validated `DecoderConfig`.

Supported: the Llama family as transformers implements it (Qwen3, Qwen2, Llama, Mistral).
Adding an architecture is one `register(...)` call with its quirks as flags; nothing
downstream branches on the architecture name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from shadow_edge.core.config_values import get_bool, get_float, get_int, get_optional_int
from shadow_edge.core.rope import read_rope, rope_tables_spec
from shadow_edge.errors import UnsupportedModelError


@dataclass(frozen=True)
class DecoderConfig:
    """Shapes and numerics of one Llama-style decoder (base backbone or shadow backbone)."""

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
    max_positions: int  # the context length the runtime allows (sliding window included)
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    qkv_bias: bool = False  # Qwen2: bias on q/k/v projections
    o_bias: bool = False  # Llama `attention_bias=True`: bias on o_proj as well
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # core/rope.py parameters; {} = default RoPE

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

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def with_layers(self, num_layers: int) -> "DecoderConfig":
        return replace(self, num_layers=num_layers)

    def rope_inv_freq(self) -> list[float]:
        """Inverse frequencies [head_dim / 2] of this config's RoPE variant (core/rope.py)."""
        return rope_tables_spec(self.rope_theta, self.rope_scaling, self.head_dim)[0]

    def rope_attention_factor(self) -> float:
        """The factor the RoPE cos/sin tables are scaled by (yarn's attention factor; 1 otherwise)."""
        return rope_tables_spec(self.rope_theta, self.rope_scaling, self.head_dim)[1]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Architecture:
    """What differs between registered architectures, as data."""

    model_type: str
    qk_norm: bool
    qkv_bias: Callable[[dict], bool]
    o_bias: Callable[[dict], bool]
    mlp_bias: Callable[[dict], bool]
    sliding_window: Callable[[dict], int | None]


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> None:
    _REGISTRY[arch.model_type] = arch


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def _flag(name: str) -> Callable[[dict], bool]:
    return lambda cfg: bool(cfg.get(name, False))


def _const(value: bool) -> Callable[[dict], bool]:
    return lambda cfg: value


def _window_if_enabled(cfg: dict) -> int | None:
    # Qwen2/Qwen3 only slide when `use_sliding_window` is on; Mistral slides whenever a window is set.
    if "use_sliding_window" in cfg and not cfg["use_sliding_window"]:
        return None
    return cfg.get("sliding_window")


register(Architecture("qwen3", qk_norm=True, qkv_bias=_flag("attention_bias"), o_bias=_flag("attention_bias"),
                      mlp_bias=_const(False), sliding_window=_window_if_enabled))
register(Architecture("qwen2", qk_norm=False, qkv_bias=_const(True), o_bias=_const(False),
                      mlp_bias=_const(False), sliding_window=_window_if_enabled))
register(Architecture("llama", qk_norm=False, qkv_bias=_flag("attention_bias"), o_bias=_flag("attention_bias"),
                      mlp_bias=_flag("mlp_bias"), sliding_window=lambda cfg: None))
register(Architecture("mistral", qk_norm=False, qkv_bias=_const(False), o_bias=_const(False),
                      mlp_bias=_const(False), sliding_window=_window_if_enabled))


def decoder_config_from_hf(cfg: dict, where: str) -> DecoderConfig:
    """Build a `DecoderConfig` from a HF `config.json` dict; `where` names the file in errors.

    Every base and shadow config of every checkpoint reader comes through here: each value is
    type-checked (core/config_values.py) and RoPE is read as transformers reads it (core/rope.py).
    """
    model_type = cfg.get("model_type")
    arch = _REGISTRY.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{where}: hidden_act {act!r} is not supported (expected 'silu')")
    hidden, heads = get_int(cfg, "hidden_size", where), get_int(cfg, "num_attention_heads", where)
    head_dim = get_optional_int(cfg, "head_dim", where)
    if head_dim is None:
        head_dim = hidden // heads  # as transformers derives it
    theta, scaling = read_rope(cfg, where)
    max_pos = get_int(cfg, "max_position_embeddings", where, default=2048)
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        get_bool(cfg, flag, where)
    window = arch.sliding_window(cfg)
    if window is not None:
        max_pos = min(max_pos, get_int(cfg, "sliding_window", where))  # exact without a sliding mask
    try:
        config = DecoderConfig(
            model_type=model_type,
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
            qk_norm=arch.qk_norm,
            qkv_bias=arch.qkv_bias(cfg),
            o_bias=arch.o_bias(cfg),
            mlp_bias=arch.mlp_bias(cfg),
            tie_word_embeddings=get_bool(cfg, "tie_word_embeddings", where),
            rope_scaling=scaling,
        )
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{where}: {e}") from None
    rope_tables_spec(theta, scaling, head_dim, where)  # checks the variant's own fields now, naming the file
    return config
