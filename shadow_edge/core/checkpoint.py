"""Checkpoint readers: a base HF directory plus an adapter directory -> `ShadowModelSpec`.

Formats register themselves in `FORMATS` (detect + resolve + read); `load_spec` picks the one
whose files are present: shadow-peft (`shadow_config.json` + `shadow_adapter.safetensors`,
core/shadow_peft_format.py) and HF PEFT Shadow (`adapter_config.json` with peft_type SHADOW +
`adapter_model.safetensors`, core/peft_format.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from shadow_edge.core.arch import LLAMA_NAMES, DecoderConfig, architecture, decoder_config_from_hf
from shadow_edge.core.classifier import HEAD_NAMES, ClassifierHeads, label_names
from shadow_edge.core.gguf_reader import is_gguf, read_gguf
from shadow_edge.core.lazy_tensor import LazyTensor, dense, row_blocks, same_values
from shadow_edge.core.safetensors_io import load_hf_weights, read_json, refuse_pickles
from shadow_edge.core.spec import DecoderWeights, ShadowModelSpec, expected_layer_shapes, layer_tensor_names
from shadow_edge.errors import CheckpointError, MismatchError
from shadow_edge.manifest import sha256_file

# canonical -> HF names of the Llama-shaped families (GGUF bases map onto these; each family's own map is
# its registration in core/families.py)
CANONICAL_TO_HF = {v: k for k, v in LLAMA_NAMES.items()}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
PROJECTED_TYPE = "causal_lm_with_hidden_projection"  # shadow-peft's wrapper of a narrower shadow + projection  # non-persistent buffers some old checkpoints carry


def _take(tensors: dict[str, torch.Tensor], key: str, file: Path) -> torch.Tensor:
    try:
        return tensors.pop(key)
    except KeyError:
        raise CheckpointError(f"{file}: tensor {key!r} is missing; the checkpoint is incomplete or was "
                              "saved by an incompatible trainer") from None


def read_decoder(tensors: dict[str, torch.Tensor], prefix: str, cfg: DecoderConfig, file: Path,
                 with_embed: bool) -> DecoderWeights:
    """Pop one decoder stack (`{prefix}layers.{i}.*`, `{prefix}norm.weight`) out of `tensors`, named as its
    family's registration says (core/families.py); fused weights are split into their canonical parts."""
    arch = architecture(cfg.model_type)
    layers = []
    for i in range(cfg.num_layers):
        layer: dict[str, torch.Tensor] = {}
        for hf, parts in arch.fused.items():
            fused = _take(tensors, f"{prefix}layers.{i}.{hf}", file)
            sizes = [expected_layer_shapes(cfg)[p][0] for p in parts]
            if fused.dim() != 2 or fused.shape[0] != sum(sizes):
                raise CheckpointError(f"{file}: tensor '{prefix}layers.{i}.{hf}' has shape {tuple(fused.shape)}; "
                                      f"expected {sum(sizes)} rows ({' + '.join(map(str, sizes))} for "
                                      f"{', '.join(parts)}) from the config")
            layer.update(zip(parts, row_blocks(fused, sizes)))
        for name in layer_tensor_names(cfg):
            if name not in layer:
                layer[name] = _take(tensors, f"{prefix}layers.{i}.{arch.hf_name(name)}", file)
        layers.append(layer)
    norm = _take(tensors, f"{prefix}norm.weight", file)
    embed = _take(tensors, f"{prefix}embed_tokens.weight", file) if with_embed else None
    return DecoderWeights(cfg, layers, norm, embed)


def reject_leftovers(tensors: dict[str, torch.Tensor], file: Path) -> None:
    extra = sorted(k for k in tensors if not k.endswith(IGNORED_SUFFIXES))
    if extra:
        shown = ", ".join(extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
        raise CheckpointError(f"{file}: unexpected tensors {shown}; the checkpoint does not match its config "
                              "(another base architecture or layer count, or saved by another trainer); pass the base "
                              "model the adapter was trained on")


@dataclass
class BaseModel:
    config: DecoderConfig
    raw_config: dict
    weights: DecoderWeights  # unread (`LazyTensor`s): values are mapped from the files on use
    lm_head: LazyTensor | torch.Tensor | None  # [vocab, hidden]; None for a sequence-classification base
    files: list[Path]
    score: dict[str, torch.Tensor] | None = None  # *ForSequenceClassification head: {"weight", "bias"?}


def read_base(base_dir: Path) -> BaseModel:
    """A HF model directory, or a llama.cpp GGUF file (core/gguf_reader.py: mapped as transformers maps it)."""
    base_dir = Path(base_dir)
    if is_gguf(base_dir):
        gguf = read_gguf(base_dir)
        raw, tensors, files = gguf.raw_config, dict(gguf.tensors), [gguf.path]
        cfg = decoder_config_from_hf(raw, f"{base_dir} (GGUF metadata)")
        gguf.require([f"model.layers.{i}.{architecture(cfg.model_type).hf_name(n)}" for i in range(cfg.num_layers)
                      for n in layer_tensor_names(cfg)] + ["model.embed_tokens.weight", "model.norm.weight"])
    elif not base_dir.is_dir():
        raise CheckpointError(f"{base_dir}: base model directory does not exist; pass --base DIR of a HF model "
                              "(or a .gguf file)")
    else:
        raw = read_json(base_dir / "config.json", "base model config")
        cfg = decoder_config_from_hf(raw, str(base_dir / "config.json"))
        tensors, files = load_hf_weights(base_dir)
    weights = read_decoder(tensors, "model.", cfg, files[0], with_embed=True)
    score = None  # a *ForSequenceClassification base: its label head instead of lm_head
    for name in (n for n in HEAD_NAMES if f"{n}.weight" in tensors):
        score = {"weight": dense(tensors.pop(f"{name}.weight"))}  # [labels, hidden]: small, read now
        if f"{name}.bias" in tensors:
            score["bias"] = dense(tensors.pop(f"{name}.bias"))
        break
    if "lm_head.weight" in tensors:
        lm_head = tensors.pop("lm_head.weight")
    elif cfg.tie_word_embeddings and score is None:
        lm_head = weights.embed
    elif score is not None:
        lm_head = None
    else:
        raise CheckpointError(f"{files[0]}: tensor 'lm_head.weight' is missing and tie_word_embeddings is false")
    reject_leftovers(tensors, files[0])
    if tuple(weights.embed.shape) != (cfg.vocab_size, cfg.hidden_size):
        raise CheckpointError(f"{files[0]}: model.embed_tokens.weight has shape {tuple(weights.embed.shape)}, "
                              f"config says ({cfg.vocab_size}, {cfg.hidden_size})")
    if lm_head is not None and same_values(lm_head, weights.embed):
        lm_head = weights.embed  # store equal tensors once
    return BaseModel(cfg, raw, weights, lm_head, files, score)


def classifier_heads(base: BaseModel, heads: dict[str, torch.Tensor | None], file: Path) -> ClassifierHeads:
    """Label heads from an adapter's trained copies (`weight`, `bias`, `shadow_weight`, `shadow_bias`; None =
    the base's `score`), label names from the base config; equal tensors are stored once."""
    if base.score is None:
        raise MismatchError(f"{file}: this is a sequence-classification adapter, but the base has no `score` head; "
                            "pass the *ForSequenceClassification base it was trained on")
    weight = heads.get("weight") if heads.get("weight") is not None else base.score["weight"]
    bias = heads.get("bias") if heads.get("weight") is not None else base.score.get("bias")
    shadow_weight = heads.get("shadow_weight") if heads.get("shadow_weight") is not None else weight
    shadow_bias = heads.get("shadow_bias") if heads.get("shadow_weight") is not None else bias
    if torch.equal(shadow_weight, weight) and (shadow_bias is None) == (bias is None) and \
            (bias is None or torch.equal(shadow_bias, bias)):
        shadow_weight, shadow_bias = weight, bias
    heads = ClassifierHeads(weight, shadow_weight, label_names(base.raw_config, int(weight.shape[0])), bias,
                            shadow_bias)
    try:
        heads.validate(base.config.hidden_size)
    except MismatchError as e:
        raise MismatchError(f"{file}: {e}") from None
    return heads


def single_adapter(adapter_dir: Path, adapter_name: str | None) -> Path:
    """`resolve` of formats that hold one adapter per directory: a name is a user mistake."""
    if adapter_name is not None:
        raise CheckpointError(f"{adapter_dir}: --adapter-name {adapter_name!r} was given, but this checkpoint "
                              "format holds exactly one adapter per directory; drop --adapter-name")
    return adapter_dir


def shadow_model_config(shadow_dir: Path) -> DecoderConfig:
    """Config of an explicit shadow model directory: a HF decoder, or shadow-peft's
    `causal_lm_with_hidden_projection` wrapper (its `shadow_model_config` is the inner decoder)."""
    raw = read_json(shadow_dir / "config.json", "shadow model config")
    if raw.get("model_type") == PROJECTED_TYPE:
        inner = raw.get("shadow_model_config")
        if not isinstance(inner, dict) or "model_type" not in inner:
            raise CheckpointError(f"{shadow_dir / 'config.json'}: field `shadow_model_config` must be the inner "
                                  "model's config with a `model_type`")
        raw = inner
    return decoder_config_from_hf(raw, str(shadow_dir / "config.json"))


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    detect: Callable[[Path], bool]  # are this format's files in the adapter directory?
    read: Callable[[BaseModel, Path, Path | None], ShadowModelSpec]  # (base, resolved adapter dir, shadow dir)
    # (adapter dir, --adapter-name) -> the directory holding the one adapter to read; refuses what it can
    # before the base is read (wrong adapter type, unsupported variants, pickles)
    resolve: Callable[[Path, str | None], Path] = single_adapter


FORMATS: list[CheckpointFormat] = []


def register_format(fmt: CheckpointFormat) -> None:
    """Add a reader; a second reader under the same name is a programming error."""
    if any(f.name == fmt.name for f in FORMATS):
        raise ValueError(f"checkpoint format {fmt.name!r} is already registered")
    FORMATS.append(fmt)


def load_spec(base_dir: str | Path, adapter_dir: str | Path, shadow_model_dir: str | Path | None = None,
              adapter_name: str | None = None) -> ShadowModelSpec:
    """Read and validate a base model + adapter (+ explicit shadow model) into one spec.

    `adapter_name` picks one adapter of a directory that holds several (PEFT's multi-adapter layout).
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise CheckpointError(f"{adapter_dir}: adapter directory does not exist; pass --adapter DIR "
                              "(the directory written by the trainer's save_pretrained)")
    fmt = next((f for f in FORMATS if f.detect(adapter_dir)), None)
    if fmt is None:
        refuse_pickles(adapter_dir, "shadow_adapter")
        raise CheckpointError(f"{adapter_dir}: no adapter found (expected shadow_config.json from shadow-peft or "
                              f"adapter_config.json from PEFT); supported formats: "
                              f"{', '.join(f.name for f in FORMATS)}")
    adapter_dir = fmt.resolve(adapter_dir, adapter_name)
    base = read_base(Path(base_dir))
    spec = fmt.read(base, adapter_dir, Path(shadow_model_dir) if shadow_model_dir else None)
    spec.validate()
    files = {"base": base.files, "adapter": sorted(p for p in adapter_dir.iterdir() if p.is_file())}
    if shadow_model_dir:
        files["shadow_model"] = sorted(p for p in Path(shadow_model_dir).iterdir() if p.is_file())
    spec.source = {"format": fmt.name, "files": {role: {str(p): sha256_file(p) for p in paths}
                                                  for role, paths in files.items()}}
    return spec


# Importing the readers registers them.
from shadow_edge.core import peft_format, shadow_peft_format  # noqa: E402,F401
