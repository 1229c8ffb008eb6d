"""Random-weight checkpoints with the real Qwen3 configs, written as Hugging Face ships them, tensor by tensor.

`build_checkpoint(name, root)` writes `root/<name>/base` (config.json from the public
Qwen3 release, bf16 weights in the same number of `model-0000x-of-0000y.safetensors` shards
with `model.safetensors.index.json`, or one `model.safetensors` where HF ships one) and
`root/<name>/adapter` (a shadow-peft adapter: `shadow_config.json` + float32
`shadow_adapter.safetensors`, implicit shadow of one layer, every weight random). Each tensor
is generated and written in row chunks straight into the file, so the model is never held in
memory (peak: one chunk). Reused when `COMPLETE` exists. No download: the configs are below.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
from pathlib import Path

import torch

# Public config.json values of the Qwen3 releases (hidden, intermediate, layers, heads, kv heads, tied
# embeddings) and how many safetensors shards HF ships; everything else is common to the family.
QWEN3 = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, tie_word_embeddings=True, shards=1),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, tie_word_embeddings=True, shards=2),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True, shards=3),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=False, shards=5),
}
COMMON = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=False, attention_dropout=0.0,
              bos_token_id=151643, eos_token_id=151645, head_dim=128, hidden_act="silu", initializer_range=0.02,
              max_position_embeddings=40960, rms_norm_eps=1e-06, rope_scaling=None, rope_theta=1000000,
              sliding_window=None, use_sliding_window=False, use_cache=True, vocab_size=151936,
              torch_dtype="bfloat16")
SHADOW = dict(alpha=0.1, dropout=0.2, gate_hidden_size=10, injection_hidden_size=16, modules_to_save=[],
              num_shadow_layers=1, shadow_head_dim=None, shadow_intermediate_size=None,
              shadow_num_attention_heads=None, shadow_num_key_value_heads=None)  # as the W1 preset's
CHUNK_VALUES = 1 << 24  # values generated per write (64 MB of float32 temporaries)
DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32"}


def config(name: str) -> dict:
    """The model's config.json (without the shard count)."""
    dims = {k: v for k, v in QWEN3[name].items() if k != "shards"}
    return {**COMMON, **dims, "max_window_layers": dims["num_hidden_layers"]}


def layer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF parameter names (after `layers.{i}.`) -> shapes of one Qwen3 decoder layer."""
    d, i, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
            "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
            "self_attn.o_proj.weight": (d, q), "self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,),
            "mlp.gate_proj.weight": (i, d), "mlp.up_proj.weight": (i, d), "mlp.down_proj.weight": (d, i)}


def base_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the base model in HF's order: embeddings, layers, final norm, untied head."""
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], cfg["hidden_size"]))]
    for layer in range(cfg["num_hidden_layers"]):
        out += [(f"model.layers.{layer}.{k}", s) for k, s in layer_shapes(cfg).items()]
    out.append(("model.norm.weight", (cfg["hidden_size"],)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (cfg["vocab_size"], cfg["hidden_size"])))
    return out


def adapter_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The shadow-peft adapter's tensors (implicit shadow: one decoder layer of the base's shape)."""
    d, n = cfg["hidden_size"], cfg["num_hidden_layers"] - 1
    k, g = SHADOW["injection_hidden_size"], SHADOW["gate_hidden_size"]
    out = [("shadow_injection_model.injection_downs", (n, d, k)), ("shadow_injection_model.injection_ups", (n, k, d))]
    out += [(f"shadow_model.layers.0.{name}", s) for name, s in layer_shapes(cfg).items()]
    out += [("shadow_model.norm.weight", (d,)), ("shadow_update_model.hidden_norm.weight", (d,)),
            ("shadow_update_model.hidden_norm.bias", (d,))]
    for j in range(n):
        out += [(f"shadow_update_model.update_gates.{j}.0.weight", (g, d)),
                (f"shadow_update_model.update_gates.{j}.2.weight", (d, g)),
                (f"shadow_update_model.update_transforms.{j}.0.weight", (g, d)),
                (f"shadow_update_model.update_transforms.{j}.3.weight", (d, g))]
    return out


def _values(name: str, numel: int, gen: torch.Generator):
    """Chunks of float32 values: norms around 1 (biases around 0), weights N(0, 0.02)."""
    for start in range(0, numel, CHUNK_VALUES):
        n = min(CHUNK_VALUES, numel - start)
        noise = 0.02 * torch.randn(n, generator=gen)
        yield 1.0 + noise if name.endswith("norm.weight") else noise


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, seed: int) -> int:
    """Write random tensors into one safetensors file, chunk by chunk; returns the bytes of weights written."""
    size = torch.finfo(dtype).bits // 8
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = math.prod(shape) * size
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            for chunk in _values(name, math.prod(shape), gen):
                f.write(chunk.to(dtype).view(torch.int16 if size == 2 else torch.int32).numpy().tobytes())
    return offset


def _shards(tensors: list[tuple[str, tuple[int, ...]]], count: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive groups of about equal bytes, as `save_pretrained(max_shard_size=...)` cuts them."""
    total = sum(math.prod(s) for _, s in tensors)
    out: list[list] = [[]]
    done = 0
    for t in tensors:
        if out[-1] and len(out) < count and done >= total * len(out) / count:
            out.append([])
        out[-1].append(t)
        done += math.prod(t[1])
    return out


def build_checkpoint(name: str, root: Path, say=lambda s: print(s, file=sys.stderr, flush=True)) -> tuple[Path, Path]:
    """Write (or reuse) `root/name/{base,adapter}`; returns the two directories."""
    if name not in QWEN3:
        raise SystemExit(f"unknown model {name!r}; choose one of {', '.join(QWEN3)}")
    out = Path(root) / name
    base, adapter = out / "base", out / "adapter"
    if (out / "COMPLETE").is_file():
        return base, adapter
    shutil.rmtree(out, ignore_errors=True)
    base.mkdir(parents=True)
    adapter.mkdir()
    cfg = config(name)
    (base / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (base / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "pad_token_id": 151643}) + "\n")
    groups = _shards(base_tensors(cfg), QWEN3[name]["shards"])
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        file = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        say(f"writing {name} base {file} ({len(group)} tensors)")
        total += write_safetensors(base / file, group, torch.bfloat16, seed=i)
        weight_map.update({t: file for t, _ in group})
    if len(groups) > 1:
        (base / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    say(f"writing {name} adapter (shadow-peft, float32)")
    write_safetensors(adapter / "shadow_adapter.safetensors", adapter_tensors(cfg), torch.float32, seed=1000)
    (adapter / "shadow_config.json").write_text(json.dumps(SHADOW, indent=2) + "\n")
    (out / "COMPLETE").write_text("ok\n")
    return base, adapter
