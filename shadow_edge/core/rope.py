"""RoPE variants: read a HF config's RoPE settings the way transformers 5 does, and compute them exactly.

transformers (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` / `standardize_rope_params`)
takes a legacy `rope_scaling` over `rope_parameters` when it is set, takes `rope_theta` from
that dict, else from the config's top level, else 10000, and accepts `type` for `rope_type`.
Each registered type gives the inverse frequencies and the factor its cos/sin tables are
scaled by; any other type (proportional, ...) is refused with the field that asked for it, and so is a
partial rotary factor unless the family rotates part of head_dim (Phi-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from shadow_edge.core.config_values import get_float, get_int
from shadow_edge.errors import UnsupportedModelError

DEFAULT_THETA = 10000.0
WITH_ORIGINAL_MAX = ("llama3", "yarn", "longrope")  # transformers fills original_max_position_embeddings for these


def _base_inv(theta: float, head_dim: int) -> list[float]:
    return [1.0 / (theta ** (2 * i / head_dim)) for i in range(head_dim // 2)]


def _default(p: dict, theta: float, head_dim: int, where: str) -> tuple[list[float], float]:
    return _base_inv(theta, head_dim), 1.0


def _linear(p: dict, theta: float, head_dim: int, where: str) -> tuple[list[float], float]:
    factor = get_float(p, "factor", where, positive=True)
    return [f / factor for f in _base_inv(theta, head_dim)], 1.0


def _llama3(p: dict, theta: float, head_dim: int, where: str) -> tuple[list[float], float]:
    factor = get_float(p, "factor", where, positive=True)
    low, high = get_float(p, "low_freq_factor", where, positive=True), get_float(p, "high_freq_factor", where,
                                                                                 positive=True)
    old_ctx = float(get_int(p, "original_max_position_embeddings", where))
    if high <= low:
        raise UnsupportedModelError(f"{where}: llama3 RoPE needs high_freq_factor > low_freq_factor, got {high} and "
                                    f"{low}")
    low_wl, high_wl = old_ctx / low, old_ctx / high
    out = []
    for f in _base_inv(theta, head_dim):
        wl = 2 * math.pi / f
        if wl > low_wl:
            out.append(f / factor)
        elif wl < high_wl:
            out.append(f)
        else:
            smooth = (old_ctx / wl - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out, 1.0


def _yarn(p: dict, theta: float, head_dim: int, where: str) -> tuple[list[float], float]:
    """transformers' `_compute_yarn_parameters`: a ramp between interpolated and extrapolated frequencies."""
    original = get_int(p, "original_max_position_embeddings", where)
    if p.get("factor") is None:  # transformers: implied by the two context lengths
        factor = get_int(p, "max_position_embeddings", where) / original
    else:
        factor = get_float(p, "factor", where, positive=True)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    def number(key: str) -> float | None:
        return None if p.get(key) is None else get_float(p, key, where)

    attention = None if p.get("attention_factor") is None else get_float(p, "attention_factor", where, positive=True)
    if attention is None:
        m, m_all = number("mscale"), number("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = number("beta_fast") or 32, number("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    out = []
    for i, f in enumerate(_base_inv(theta, head_dim)):
        extrapolation = 1.0 - min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(f / factor * (1 - extrapolation) + f * extrapolation)
    return out, float(attention)


def _longrope(p: dict, theta: float, head_dim: int, where: str) -> tuple[list[float], float]:
    """transformers' `_compute_longrope_parameters` with the short factors: what it applies while the sequence
    stays within original_max_position_embeddings (beyond, it switches every position to the long factors, so
    `context_limit` caps the context there and the cached keys stay exact)."""
    original = get_int(p, "original_max_position_embeddings", where)
    short = p.get("short_factor")
    if (not isinstance(short, list) or len(short) != head_dim // 2
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 for f in short)):
        raise UnsupportedModelError(f"{where}: longrope `short_factor` must be a list of {head_dim // 2} positive "
                                    f"numbers (one per rotary frequency), got {short!r}")
    if p.get("factor") is None:
        factor = get_int(p, "max_position_embeddings", where) / original
    else:
        factor = get_float(p, "factor", where, positive=True)
    if p.get("attention_factor") is not None:
        attention = get_float(p, "attention_factor", where, positive=True)
    else:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return [f / s for f, s in zip(_base_inv(theta, head_dim), short)], attention


@dataclass(frozen=True)
class RopeType:
    name: str
    compute: Callable[[dict, float, int, str], tuple[list[float], float]]  # -> inv_freq [head_dim/2], cos/sin scale
    note: str = ""
    context_limit: Callable[[dict], int] | None = None  # the longest context computed exactly (else the config's)


ROPE_TYPES: dict[str, RopeType] = {}


def register(rope: RopeType) -> None:
    if rope.name in ROPE_TYPES:
        raise ValueError(f"RoPE type {rope.name!r} is already registered")
    ROPE_TYPES[rope.name] = rope


register(RopeType("default", _default))
register(RopeType("linear", _linear))
# transformers recomputes dynamic-NTK frequencies only for positions beyond max_position_embeddings,
# which `DecoderConfig.max_positions` never exceeds: below it they are the default ones.
register(RopeType("dynamic", _default, "exact up to max_position_embeddings"))
register(RopeType("llama3", _llama3))
register(RopeType("yarn", _yarn))
register(RopeType("longrope", _longrope, "exact up to original_max_position_embeddings, which caps the context",
                  context_limit=lambda p: int(p["original_max_position_embeddings"])))


def read_rope(cfg: dict, where: str, partial_ok: bool = False) -> tuple[float, dict[str, Any], float]:
    """(rope_theta, standardized parameters incl. `rope_type`, partial rotary factor) from a HF config dict, as
    transformers reads it. A partial factor != 1 is refused unless the family rotates part of head_dim."""
    field = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    params = cfg.get(field) or {}
    if not isinstance(params, dict):
        raise UnsupportedModelError(f"{where}: field `{field}` is {params!r}; expected a JSON object such as "
                                    '{"rope_type": "default", "rope_theta": 10000.0}')
    if any(isinstance(v, dict) for v in params.values()):
        raise UnsupportedModelError(f"{where}: field `{field}` holds RoPE settings per layer type ({sorted(params)}); "
                                    "shadow-edge supports one RoPE for all layers")
    params = dict(params)
    theta_source = params if "rope_theta" in params else cfg
    theta = get_float(theta_source, "rope_theta", where, default=DEFAULT_THETA, positive=True)
    rope_type = params["rope_type"] if "rope_type" in params else params.get("type", "default")
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if partial is not None and partial != 1 and partial_ok:
        source = params if "partial_rotary_factor" in params else cfg
        partial = get_float(source, "partial_rotary_factor", where, positive=True)
        if partial > 1:
            raise UnsupportedModelError(f"{where}: `partial_rotary_factor` {partial!r} must be at most 1")
    elif partial is not None and partial != 1:
        raise UnsupportedModelError(f"{where}: `partial_rotary_factor` {partial!r} is not supported (RoPE over part "
                                    "of head_dim); shadow-edge rotates the whole head_dim")
    if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(f"{where}: field `{field}` asks for rope_type {rope_type!r}, which shadow-edge "
                                    f"does not implement (supported: {', '.join(ROPE_TYPES)}); transformers would "
                                    "apply it, so exporting with plain RoPE would be wrong")
    if rope_type in WITH_ORIGINAL_MAX:
        if "original_max_position_embeddings" in cfg:
            params["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        else:
            params.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    params["max_position_embeddings"] = cfg.get("max_position_embeddings")
    params.pop("type", None)
    params.pop("rope_theta", None)
    params.pop("partial_rotary_factor", None)
    params["rope_type"] = rope_type
    partial = 1.0 if partial is None else float(partial)
    if rope_type == "default":
        return theta, {}, partial
    return theta, params, partial


def rope_context_limit(params: dict) -> int | None:
    """The context length within which the RoPE variant of `params` is computed exactly, if it caps it."""
    limit = ROPE_TYPES[params.get("rope_type", "default")].context_limit
    return None if limit is None else limit(params)


def rope_tables_spec(theta: float, params: dict, head_dim: int, where: str = "config") -> tuple[list[float], float]:
    """(inv_freq [head_dim/2], cos/sin scale) for parameters `read_rope` returned."""
    return ROPE_TYPES[params.get("rope_type", "default")].compute(params, theta, head_dim, where)
