"""Decoder architectures: a registry mapping HF `model_type` to a validated `DecoderConfig`.

Supported: the Llama family as transformers implements it (Qwen3, Qwen2, Llama, Mistral).
Adding an architecture is one `register(...)` call with its quirks as flags; nothing
downstream branches on the architecture name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

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
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # only "llama3" or empty

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
        """Inverse frequencies [head_dim / 2], including Llama-3 scaling when configured."""
        half = self.head_dim // 2
        inv = [1.0 / (self.rope_theta ** (2 * i / self.head_dim)) for i in range(half)]
        if self.rope_scaling.get("rope_type") != "llama3":
            return inv
        s = self.rope_scaling
        factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old_ctx = float(s["original_max_position_embeddings"])
        low_wl, high_wl = old_ctx / low, old_ctx / high
        out = []
        for f in inv:
            wl = 2 * math.pi / f
            if wl > low_wl:
                out.append(f / factor)
            elif wl < high_wl:
                out.append(f)
            else:
                smooth = (old_ctx / wl - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return out

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


def _rope(cfg: dict, where: str) -> tuple[float, dict[str, Any]]:
    # transformers 5 keeps RoPE settings in `rope_parameters`; older configs use rope_theta/rope_scaling.
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, {}
    if rope_type == "llama3":
        return theta, {k: params[k] for k in ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}
    raise UnsupportedModelError(
        f"{where}: rope type {rope_type!r} is not supported (supported: default, llama3); "
        "use a checkpoint without RoPE scaling")


def decoder_config_from_hf(cfg: dict, where: str) -> DecoderConfig:
    """Build a `DecoderConfig` from a HF `config.json` dict; `where` names the file in errors."""
    model_type = cfg.get("model_type")
    arch = _REGISTRY.get(model_type)
    if arch is None:
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{where}: hidden_act {act!r} is not supported (expected 'silu')")
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        theta, scaling = _rope(cfg, where)
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        window = arch.sliding_window(cfg)
        if window:
            max_pos = min(max_pos, int(window))  # exact without a sliding mask: stay inside the window
        return DecoderConfig(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            max_positions=max_pos,
            qk_norm=arch.qk_norm,
            qkv_bias=arch.qkv_bias(cfg),
            o_bias=arch.o_bias(cfg),
            mlp_bias=arch.mlp_bias(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_scaling=scaling,
        )
    except KeyError as e:
        raise UnsupportedModelError(f"{where}: required field {e.args[0]!r} is missing") from None
