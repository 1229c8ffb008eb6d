"""Reader for HF PEFT Shadow adapters (`peft.tuners.shadow`, `PeftType.SHADOW`, peft >= 0.21).

Files: `adapter_config.json` (a `ShadowConfig`) + `adapter_model.safetensors`. Several adapters
saved together live in `DIR/` ("default") and `DIR/<name>/`; `--adapter-name` picks one.
The math, as peft's `ShadowLayer` (layers.py) and `ShadowModel` (model.py) compute it:

    s = shadow_projection(shadow_backbone(x))    # the base's decoder class incl. final norm; projection
                                                 # Linear(ds, d, bias=False) only when widths differ
    for every wrapped block i (contiguous, from the FIRST wrapped block, block 0 by default):
        h = h + shadow_alpha * shadow_up(shadow_down(h - s))          # r = rank
        h = block_i(h)
        s = (1 - g) * s + g * T(h),  g = sigmoid(G(h))                # no LayerNorm
        # G, T: Linear(d, u) -> GELU -> Linear(u, d), biased, u = update_hidden_size or r
    logits = lm_head(norm(h))                                         # s after the last block is unused

Shadow backbone: `shadow_model: "mirror"` = the base config with `shadow_num_hidden_layers` (default 1),
`shadow_hidden_size`, `shadow_intermediate_size`, `shadow_num_attention_heads`; it reads the base
embeddings iff `share_embeddings` and the widths agree (else its own `embed_tokens` are saved).
Any other `shadow_model` is a pretrained model (plain HF decoder or `causal_lm_with_hidden_projection`):
its weights and projection are in the adapter file, its config comes from `--shadow-model DIR`.
Heads: CAUSAL_LM: `lm_head` (the base's, or its `modules_to_save` copy) in both modes, because
`unload_shadow()` detaches with `head = base.get_output_embeddings()`. SEQ_CLS (on a
*ForSequenceClassification base): the `score` head (its `modules_to_save` copy) for
base_shadow and `shadow_head` for shadow_only, both on the last real token.
The wrapped blocks are read from the tensors, which is what peft itself applies (a
`layers_to_transform` next to default whole-block targets is ignored by peft's matcher).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from shadow_edge.core.arch import DecoderConfig
from shadow_edge.core.checkpoint import (BaseModel, CheckpointFormat, classifier_heads, read_decoder,
                                         register_format, reject_leftovers, shadow_model_config)
from shadow_edge.core.classifier import HEAD_NAMES, ClassifierHeads
from shadow_edge.core.config_values import get_bool, get_float, get_int, get_optional_int
from shadow_edge.core.lazy_tensor import same_values
from shadow_edge.core.safetensors_io import load_safetensors, read_json, refuse_pickles
from shadow_edge.core.spec import ShadowModelSpec
from shadow_edge.core.variants import AdapterVariant, register_variant
from shadow_edge.errors import CheckpointError, MismatchError, UnsupportedModelError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_ADAPTER = "default"  # peft saves this adapter at the top of the directory, others in subfolders
TASKS = ("CAUSAL_LM", "SEQ_CLS")
BACKBONE = "base_model.shadow_backbone.default."
PROJECTION = "base_model.shadow_projection.default.weight"
LM_HEAD = "base_model.model.lm_head.weight"  # modules_to_save=["lm_head"]
SHADOW_HEAD = "base_model.shadow_head.default."  # SEQ_CLS: the shadow's copy of the score head
BLOCK_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\."
                       r"(shadow_down|shadow_up|shadow_update_gate|shadow_update_transform)\.default\.(.+)$")
# Parts of peft's diffusion (Diffusers) shadows: Flux-style blocks or the token-wise MLP backbone.
DIFFUSION_MARKERS = ("transformer_blocks.", "single_transformer_blocks.", "shadow_backbone.default.proj_in.",
                     "shadow_backbone.default.blocks.")

PEFT_SHADOW = register_variant(AdapterVariant(
    name="peft-shadow", update_activation="gelu", update_norm=False, update_bias=True,
    injection_start="the first wrapped base block (block 0 unless target_modules says otherwise)"))


def _adapter_names(adapter_dir: Path) -> list[str]:
    names = [DEFAULT_ADAPTER] if (adapter_dir / CONFIG_FILE).is_file() else []
    return names + sorted(p.name for p in adapter_dir.iterdir() if (p / CONFIG_FILE).is_file())


def detect(adapter_dir: Path) -> bool:
    return bool(_adapter_names(adapter_dir)) or (adapter_dir / "adapter_model.bin").is_file()


def resolve(adapter_dir: Path, adapter_name: str | None) -> Path:
    """The one adapter's directory; refuses other PEFT types, pickles and diffusion shadows up front."""
    names = _adapter_names(adapter_dir)
    if not names:
        refuse_pickles(adapter_dir, "adapter_model")
    listed = ", ".join(names)
    if adapter_name is None:
        if len(names) > 1:
            raise CheckpointError(f"{adapter_dir}: holds {len(names)} PEFT adapters ({listed}); pick one with "
                                  "--adapter-name NAME")
        adapter_name = names[0]
    elif adapter_name not in names:
        raise CheckpointError(f"{adapter_dir}: no adapter named {adapter_name!r} (found: {listed}); pass one of "
                              "these to --adapter-name")
    chosen = adapter_dir if adapter_name == DEFAULT_ADAPTER else adapter_dir / adapter_name
    cfg_file = chosen / CONFIG_FILE
    pc = read_json(cfg_file, "PEFT adapter config")
    peft_type = pc.get("peft_type")
    if peft_type != "SHADOW":
        raise UnsupportedModelError(f"{cfg_file}: field `peft_type` is {peft_type!r}: not a Shadow adapter; "
                                    "shadow-edge reads PEFT adapters with peft_type \"SHADOW\" (peft's ShadowConfig) "
                                    "and shadow-peft checkpoints")
    weights = chosen / WEIGHTS_FILE
    if not weights.is_file():
        refuse_pickles(chosen, "adapter_model")
        raise CheckpointError(f"{weights}: PEFT adapter weights are missing; save with save_pretrained "
                              "(safe_serialization=True)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: cannot read PEFT adapter weights ({e}); the file is corrupt") from None
    diffusion = next((k for k in keys if any(m in k for m in DIFFUSION_MARKERS)), None)
    if diffusion is not None:
        raise UnsupportedModelError(f"{weights}: tensor {diffusion!r} belongs to a diffusion-model (Diffusers) "
                                    "Shadow adapter; shadow-edge exports decoder-only language models only")
    task = pc.get("task_type")
    if task not in TASKS:
        raise UnsupportedModelError(f"{cfg_file}: field `task_type` is {task!r}; supported: {', '.join(TASKS)}")
    return chosen


def _blocks(t: dict[str, torch.Tensor], file: Path, num_layers: int) -> tuple[int, dict[str, torch.Tensor]]:
    """Pop the wrapped blocks' tensors; returns the first block and {"down": [n, d, r], ...} stacked."""
    per_block: dict[int, dict[str, torch.Tensor]] = {}
    for key in [k for k in t if k.startswith("base_model.model.")]:
        m = BLOCK_KEY.match(key)
        if m:
            per_block.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = t.pop(key)
    if not per_block:
        raise CheckpointError(f"{file}: no wrapped decoder blocks (tensors "
                              "`base_model.model.model.layers.<i>.shadow_down.default.weight`); the adapter is "
                              "empty or its base is not a Llama-family decoder")
    idx = sorted(per_block)
    if idx[-1] >= num_layers:
        raise MismatchError(f"{file}: the adapter wraps block {idx[-1]}, but the base has {num_layers} layers; "
                            "pass the base model the adapter was trained on")
    if idx != list(range(idx[0], idx[-1] + 1)):
        missing = sorted(set(range(idx[0], idx[-1] + 1)) - set(idx))
        raise UnsupportedModelError(f"{file}: wrapped blocks {idx} are not contiguous (missing {missing}); the shadow "
                                    "state rides the decoder loop from the first wrapped block to the last, so peft "
                                    "cannot run this adapter either; retrain with contiguous target_modules")
    parts = {"down": "shadow_down.weight", "up": "shadow_up.weight",
             "gate_in": "shadow_update_gate.0.weight", "gate_in_bias": "shadow_update_gate.0.bias",
             "gate_out": "shadow_update_gate.2.weight", "gate_out_bias": "shadow_update_gate.2.bias",
             "transform_in": "shadow_update_transform.0.weight", "transform_in_bias": "shadow_update_transform.0.bias",
             "transform_out": "shadow_update_transform.2.weight",
             "transform_out_bias": "shadow_update_transform.2.bias"}
    out = {}
    for part, name in parts.items():
        try:
            out[part] = torch.stack([per_block[i].pop(name) for i in idx])
        except KeyError:
            raise CheckpointError(f"{file}: a wrapped block lacks `{name}`; the adapter is incomplete") from None
        except RuntimeError:
            raise CheckpointError(f"{file}: tensors `{name}` differ in shape between blocks") from None
    extra = sorted(f"block {i}: {k}" for i in idx for k in per_block[i])
    if extra:
        raise CheckpointError(f"{file}: unexpected block tensors ({', '.join(extra[:3])}); saved by another peft "
                              "version?")
    return idx[0], out


def _shadow_source(pc: dict, cfg_file: Path) -> str:
    source = pc.get("shadow_model", "mirror")
    if not isinstance(source, str) or not source:
        raise CheckpointError(f"{cfg_file}: field `shadow_model` is {source!r}; expected \"mirror\" or the "
                              "pretrained shadow model's id or path")
    return source


def _shadow_config(base: DecoderConfig, pc: dict, cfg_file: Path, shadow_dir: Path | None) -> DecoderConfig:
    source = _shadow_source(pc, cfg_file)
    if source != "mirror":
        if shadow_dir is None:
            raise CheckpointError(f"{cfg_file}: field `shadow_model` is {source!r} (a pretrained shadow model); pass "
                                  "that model's local directory with --shadow-model DIR")
        return shadow_model_config(shadow_dir)
    where = str(cfg_file)
    fields = {"num_layers": get_optional_int(pc, "shadow_num_hidden_layers", where) or 1,
              "hidden_size": get_optional_int(pc, "shadow_hidden_size", where),
              "intermediate_size": get_optional_int(pc, "shadow_intermediate_size", where),
              "num_heads": get_optional_int(pc, "shadow_num_attention_heads", where)}
    try:
        return replace(base, **{k: v for k, v in fields.items() if v is not None})
    except UnsupportedModelError as e:
        raise CheckpointError(f"{cfg_file}: the mirror shadow fields (shadow_num_hidden_layers, shadow_hidden_size, "
                              f"shadow_intermediate_size, shadow_num_attention_heads) do not give a valid decoder: "
                              f"{e}") from None


def _check_sizes(pc: dict, cfg_file: Path, w: dict[str, torch.Tensor]) -> None:
    """`r` and `update_hidden_size` must be integers >= 1 and agree with the tensors peft saved with them."""
    where = str(cfg_file)
    rank = get_int(pc, "r", where, default=8)  # peft's default
    update = get_optional_int(pc, "update_hidden_size", where) or rank  # None: r, as peft builds it
    for field, value, tensor, dim in (("r", rank, "shadow_down", "down"), ("update_hidden_size", update,
                                                                          "shadow_update_gate.0", "gate_in")):
        found = w[dim].shape[1]  # [blocks, width, d]
        if value != found:
            raise MismatchError(f"{cfg_file}: field `{field}` is {value}, but the adapter's {tensor} weights have "
                                f"width {found} (shape {tuple(w[dim].shape[1:])}); the config and the weights do "
                                f"not belong together; save the adapter again with peft's save_pretrained")


def _check_recorded_base(pc: dict, cfg_file: Path, base: BaseModel) -> None:
    """A default Shadow adapter shares the base's embeddings, so no tensor of it has the vocabulary's size; when
    `base_model_name_or_path` names a local model directory, its vocabulary and shape must equal --base's."""
    recorded = pc.get("base_model_name_or_path")
    if not isinstance(recorded, str) or not recorded or not (Path(recorded) / "config.json").is_file():
        return  # a hub id or a path of another machine: nothing to compare with here
    trained = read_json(Path(recorded) / "config.json", "base model config")
    trained = trained.get("text_config") if isinstance(trained.get("text_config"), dict) else trained
    bc, given = base.config, base.files[0].parent if base.files else None
    diffs = [f"{key} {trained[key]} vs {ours}" for key, ours in
             (("vocab_size", bc.vocab_size), ("hidden_size", bc.hidden_size), ("num_hidden_layers", bc.num_layers))
             if isinstance(trained.get(key), int) and trained[key] != ours]
    if diffs:
        raise MismatchError(f"{cfg_file}: the adapter was trained on {recorded} (field `base_model_name_or_path`), "
                            f"whose config differs from the base given ({given}): {'; '.join(diffs)} (trained vs "
                            "given); pass the base model the adapter was trained on")


def read_peft_shadow(base: BaseModel, adapter_dir: Path, shadow_dir: Path | None) -> ShadowModelSpec:
    cfg_file, file = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    pc = read_json(cfg_file, "PEFT adapter config")
    t = load_safetensors(file, "PEFT adapter weights")
    bc = base.config
    first, w = _blocks(t, file, bc.num_layers)
    if w["down"].shape[-1] != bc.hidden_size:
        raise MismatchError(f"{file}: the adapter was trained for hidden size {w['down'].shape[-1]} (shadow_down "
                            f"{tuple(w['down'].shape[1:])}), the base has hidden size {bc.hidden_size}; pass the base "
                            "model the adapter was trained on")
    _check_sizes(pc, cfg_file, w)
    _check_recorded_base(pc, cfg_file, base)
    scfg = _shadow_config(bc, pc, cfg_file, shadow_dir)
    mirror = _shadow_source(pc, cfg_file) == "mirror"
    share = mirror and get_bool(pc, "share_embeddings", str(cfg_file), True) and scfg.hidden_size == bc.hidden_size
    shadow = read_decoder(t, BACKBONE, scfg, file, with_embed=not share)
    if shadow.embed is not None and shadow.embed.shape[0] != bc.vocab_size:
        raise MismatchError(f"{file}: {BACKBONE}embed_tokens.weight has vocab {shadow.embed.shape[0]}, the base has "
                            f"vocab {bc.vocab_size}; shadow and base must share a tokenizer")
    projection = t.pop(PROJECTION, None)  # [d, ds]
    classifier, lm_head = None, None
    if pc.get("task_type") == "SEQ_CLS":
        classifier = _classifier(base, t, file)
    else:
        lm_head = _lm_head(base, t, file)
    reject_leftovers(t, file)
    return ShadowModelSpec(
        base=base.weights, lm_head=lm_head, shadow=shadow, shadow_lm_head=lm_head, projection=projection,
        injection_down=w["down"].transpose(1, 2).contiguous(), injection_up=w["up"].transpose(1, 2).contiguous(),
        alpha=get_float(pc, "shadow_alpha", str(cfg_file), default=0.1),
        gate_in=w["gate_in"], gate_out=w["gate_out"], transform_in=w["transform_in"], transform_out=w["transform_out"],
        gate_in_bias=w["gate_in_bias"], gate_out_bias=w["gate_out_bias"], transform_in_bias=w["transform_in_bias"],
        transform_out_bias=w["transform_out_bias"], variant=PEFT_SHADOW, first_adapted_layer=first,
        classifier=classifier,
    )


def _lm_head(base: BaseModel, t: dict[str, torch.Tensor], file: Path) -> torch.Tensor:
    """The base's lm_head or its modules_to_save copy (both modes use it, as unload_shadow() does)."""
    bc = base.config
    lm_head = t.pop(LM_HEAD, base.lm_head)
    if lm_head is None or tuple(lm_head.shape) != (bc.vocab_size, bc.hidden_size):
        raise MismatchError(f"{file}: a CAUSAL_LM adapter needs an lm_head of shape ({bc.vocab_size}, "
                            f"{bc.hidden_size}); found {None if lm_head is None else tuple(lm_head.shape)}; pass the "
                            "*ForCausalLM base it was trained on")
    for ref in (base.weights.embed, base.lm_head):  # store equal tensors once
        lm_head = ref if same_values(lm_head, ref) else lm_head
    return lm_head


def _classifier(base: BaseModel, t: dict[str, torch.Tensor], file: Path) -> ClassifierHeads:
    """SEQ_CLS: the score head (modules_to_save copy, else the base's) and the shadow's `shadow_head`."""
    heads: dict[str, torch.Tensor | None] = {"weight": None, "bias": None}
    for name in (n for n in HEAD_NAMES if f"base_model.model.{n}.weight" in t):
        key = f"base_model.model.{name}."
        heads = {"weight": t.pop(key + "weight"), "bias": t.pop(key + "bias", None)}
    if SHADOW_HEAD + "weight" not in t:
        raise CheckpointError(f"{file}: tensor {SHADOW_HEAD}weight is missing; a SEQ_CLS Shadow adapter saves the "
                              "shadow's classifier there (peft >= 0.21)")
    heads.update(shadow_weight=t.pop(SHADOW_HEAD + "weight"), shadow_bias=t.pop(SHADOW_HEAD + "bias", None))
    return classifier_heads(base, heads, file)


register_format(CheckpointFormat(name="peft-shadow", detect=detect, read=read_peft_shadow, resolve=resolve))
