"""Reader for shadow-peft checkpoints (PyPI `shadow-peft`, import `shadow_peft`).

Files: `shadow_config.json`, `shadow_adapter.safetensors` (keys `shadow_model.*`,
`shadow_hidden_projection.*`, `shadow_injection_model.*`, `shadow_update_model.*`) and an
optional `shadow_modules.safetensors` (`lm_head.*`, `shadow_lm_head.*`).
Implicit shadow: the base config with `num_shadow_layers` layers, base embeddings.
Explicit shadow: a HF model directory (`--shadow-model`), possibly narrower, with its own
embeddings and a projection; also shadow-peft's `causal_lm_with_hidden_projection` type.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from shadow_edge.core.arch import DecoderConfig
from shadow_edge.core.checkpoint import (BaseModel, CheckpointFormat, _take, classifier_heads, read_decoder,
                                         register_format, reject_leftovers, shadow_model_config)
from shadow_edge.core.config_values import get_float, get_int, get_optional_int
from shadow_edge.core.lazy_tensor import dense, same_values
from shadow_edge.core.safetensors_io import load_hf_weights, load_safetensors, read_json
from shadow_edge.core.classifier import ClassifierHeads
from shadow_edge.core.spec import ShadowModelSpec
from shadow_edge.core.variants import SHADOW_PEFT
from shadow_edge.errors import CheckpointError, MismatchError, UnsupportedModelError

CONFIG_FILE = "shadow_config.json"
ADAPTER_FILE = "shadow_adapter.safetensors"
MODULES_FILE = "shadow_modules.safetensors"


def _implicit_config(base: DecoderConfig, sc: dict, where: str) -> DecoderConfig:
    n = get_int(sc, "num_shadow_layers", where, default=1)
    overrides = {"intermediate_size": "shadow_intermediate_size", "num_heads": "shadow_num_attention_heads",
                 "num_kv_heads": "shadow_num_key_value_heads", "head_dim": "shadow_head_dim"}
    values = {k: get_optional_int(sc, key, where) for k, key in overrides.items()}
    try:
        return replace(base, num_layers=n, **{k: v for k, v in values.items() if v is not None})
    except UnsupportedModelError as e:
        raise CheckpointError(f"{where}: the shadow_* fields do not give a valid shadow decoder: {e}") from None


def _explicit_config(shadow_dir: Path | None, adapter_dir: Path) -> DecoderConfig:
    if shadow_dir is None:
        raise CheckpointError(
            f"{adapter_dir / ADAPTER_FILE}: this adapter was trained with an explicit shadow model (it has "
            "its own embeddings `shadow_model.embed_tokens.weight`); pass that model's directory with "
            "--shadow-model DIR")
    return shadow_model_config(shadow_dir)


def _projection_from_shadow_dir(shadow_dir: Path | None) -> torch.Tensor | None:
    if shadow_dir is None:
        return None
    try:
        tensors, _ = load_hf_weights(shadow_dir)
    except CheckpointError:
        return None
    return dense(tensors.get("shadow_hidden_projection.weight"))


def _check_base_match(base: DecoderConfig, down: torch.Tensor, file: Path) -> None:
    if down.dim() != 3:
        raise CheckpointError(f"{file}: tensor 'shadow_injection_model.injection_downs' must be 3-D "
                              f"[layers-1, hidden, k], found shape {tuple(down.shape)}")
    layers, hidden = down.shape[0] + 1, down.shape[1]
    if (layers, hidden) != (base.num_layers, base.hidden_size):
        raise MismatchError(
            f"{file}: adapter was trained for a base with {layers} layers and hidden size {hidden} "
            f"(from injection_downs {tuple(down.shape)}), but the base has {base.num_layers} layers and hidden "
            f"size {base.hidden_size}; pass the base model the adapter was trained on")


def _stack(tensors: dict[str, torch.Tensor], fmt: str, count: int, file: Path, hidden: int,
           hidden_axis: int) -> torch.Tensor:
    """Stack `fmt.format(i)` for i < count: 2-D Linear weights with the base hidden size on `hidden_axis`."""
    try:
        parts = [tensors.pop(fmt.format(i)) for i in range(count)]
    except KeyError as e:
        raise CheckpointError(f"{file}: tensor {e.args[0]!r} is missing; the adapter is incomplete") from None
    for i, t in enumerate(parts):
        if t.dim() != 2 or t.shape[hidden_axis] != hidden:
            want = "[hidden, g]" if hidden_axis == 0 else "[g, hidden]"
            raise MismatchError(f"{file}: tensor {fmt.format(i)!r} has shape {tuple(t.shape)}; expected a {want} "
                                f"Linear weight with hidden = {hidden} (the base's hidden size)")
        if t.shape != parts[0].shape:
            raise MismatchError(f"{file}: tensor {fmt.format(i)!r} has shape {tuple(t.shape)}, but "
                                f"{fmt.format(0)!r} has {tuple(parts[0].shape)}; every adapted layer's tensor must "
                                "have the same shape")
    return torch.stack(parts)


def read_shadow_peft(base: BaseModel, adapter_dir: Path, shadow_dir: Path | None) -> ShadowModelSpec:
    sc = read_json(adapter_dir / CONFIG_FILE, "shadow-peft adapter config")
    file = adapter_dir / ADAPTER_FILE
    t = load_safetensors(file, "shadow-peft adapter weights")
    down = t.pop("shadow_injection_model.injection_downs", None)
    if down is None:
        raise CheckpointError(f"{file}: tensor 'shadow_injection_model.injection_downs' is missing; "
                              "this is not a complete shadow-peft adapter")
    _check_base_match(base.config, down, file)
    has_embed = "shadow_model.embed_tokens.weight" in t  # explicit shadows keep their own embeddings
    if has_embed or shadow_dir is not None:
        scfg = _explicit_config(shadow_dir, adapter_dir)
    else:
        scfg = _implicit_config(base.config, sc, str(adapter_dir / CONFIG_FILE))
    shadow = read_decoder(t, "shadow_model.", scfg, file, with_embed=has_embed)
    if shadow.embed is not None and shadow.embed.shape[0] != base.config.vocab_size:
        raise MismatchError(f"{file}: shadow_model.embed_tokens.weight has vocab {shadow.embed.shape[0]}, the "
                            f"base has vocab {base.config.vocab_size}; shadow and base must share a tokenizer")
    projection = t.pop("shadow_hidden_projection.weight", None)
    if projection is None and scfg.hidden_size != base.config.hidden_size:
        projection = _projection_from_shadow_dir(shadow_dir)
    n = base.config.num_layers - 1
    up = t.pop("shadow_injection_model.injection_ups", None)
    if up is None:
        raise CheckpointError(f"{file}: tensor 'shadow_injection_model.injection_ups' is missing")
    u = "shadow_update_model."
    d = base.config.hidden_size
    gate_in = _stack(t, u + "update_gates.{}.0.weight", n, file, d, 1)
    gate_out = _stack(t, u + "update_gates.{}.2.weight", n, file, d, 0)
    transform_in = _stack(t, u + "update_transforms.{}.0.weight", n, file, d, 1)
    transform_out = _stack(t, u + "update_transforms.{}.3.weight", n, file, d, 0)
    norm_w = _take(t, u + "hidden_norm.weight", file)
    norm_b = _take(t, u + "hidden_norm.bias", file)
    reject_leftovers(t, file)

    classifier, lm_head, shadow_lm_head = None, None, None
    if base.score is not None:  # ShadowForSequenceClassification on a *ForSequenceClassification base
        classifier = _classifier_heads(base, adapter_dir / MODULES_FILE)
    else:
        lm_head, shadow_lm_head = _lm_heads(base, adapter_dir / MODULES_FILE)

    return ShadowModelSpec(
        base=base.weights, lm_head=lm_head, shadow=shadow, shadow_lm_head=shadow_lm_head,
        projection=projection, injection_down=down, injection_up=up, alpha=get_float(sc, "alpha", str(adapter_dir / CONFIG_FILE), default=0.1),
        gate_in=gate_in, gate_out=gate_out, transform_in=transform_in, transform_out=transform_out,
        update_norm_weight=norm_w, update_norm_bias=norm_b, variant=SHADOW_PEFT, first_adapted_layer=1,
        classifier=classifier,
    )


def _lm_heads(base: BaseModel, modules_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """lm_head and shadow_lm_head: the base's, or trained copies in shadow_modules.safetensors."""
    lm_head, shadow_lm_head = base.lm_head, base.lm_head
    if not modules_file.exists():
        return lm_head, shadow_lm_head
    mods = load_safetensors(modules_file, "shadow-peft task modules")
    lm_head = mods.pop("lm_head.weight", lm_head)
    shadow_lm_head = mods.pop("shadow_lm_head.weight", shadow_lm_head)
    reject_leftovers(mods, modules_file)
    for name, tensor in (("lm_head.weight", lm_head), ("shadow_lm_head.weight", shadow_lm_head)):
        if tensor is None or tuple(tensor.shape) != (base.config.vocab_size, base.config.hidden_size):
            raise MismatchError(f"{modules_file}: {name} has shape {None if tensor is None else tuple(tensor.shape)}, "
                                f"the base expects ({base.config.vocab_size}, {base.config.hidden_size})")
    # Store equal tensors once: reuse the base objects wherever values agree.
    for ref in (base.weights.embed, base.lm_head):
        lm_head = ref if same_values(lm_head, ref) else lm_head
        shadow_lm_head = ref if same_values(shadow_lm_head, ref) else shadow_lm_head
    if same_values(shadow_lm_head, lm_head):
        shadow_lm_head = lm_head
    return lm_head, shadow_lm_head


def _classifier_heads(base: BaseModel, modules_file: Path) -> ClassifierHeads:
    """classifier_head / shadow_classifier_head: trained copies in shadow_modules.safetensors, else the base's score."""
    mods = load_safetensors(modules_file, "shadow-peft task modules") if modules_file.exists() else {}
    heads = {"weight": mods.pop("classifier_head.weight", None), "bias": mods.pop("classifier_head.bias", None),
             "shadow_weight": mods.pop("shadow_classifier_head.weight", None),
             "shadow_bias": mods.pop("shadow_classifier_head.bias", None)}
    reject_leftovers(mods, modules_file)
    return classifier_heads(base, heads, modules_file)


register_format(CheckpointFormat(
    name="shadow-peft",
    detect=lambda d: (d / CONFIG_FILE).is_file() or (d / ADAPTER_FILE).is_file(),
    read=read_shadow_peft,
))
