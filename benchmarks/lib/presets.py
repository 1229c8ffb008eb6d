"""Benchmark model presets: random-weight base models + randomized shadow-peft adapters, built offline.

`build_preset(name, root)` writes `root/<name>/{base,adapter}` once (reused when complete)
and returns the two directories. Dims of `qwen3-0.6b-shape` are Qwen3-0.6B's real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PRESETS = {
    # name: (Qwen3Config kwargs, shadow-peft ShadowConfig kwargs)
    "tiny": (dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, intermediate_size=128),
             dict(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=8)),
    "small": (dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=4, head_dim=64, intermediate_size=1536),
              dict(num_shadow_layers=1, injection_hidden_size=16, gate_hidden_size=16)),
    "qwen3-0.6b-shape": (dict(vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                              num_key_value_heads=8, head_dim=128, intermediate_size=3072),
                         dict(num_shadow_layers=1, injection_hidden_size=16, gate_hidden_size=10)),
}


def build_preset(name: str, root: Path) -> tuple[Path, Path]:
    """Write (or reuse) the preset's base model and adapter under `root/name`."""
    import torch
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    out = Path(root) / name
    base_dir, adapter_dir = out / "base", out / "adapter"
    if (out / "COMPLETE").exists():
        return base_dir, adapter_dir
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    model_kw, shadow_kw = PRESETS[name]
    cfg = Qwen3Config(**model_kw, tie_word_embeddings=True, max_position_embeddings=4096,
                      eos_token_id=model_kw["vocab_size"] - 1)
    base = Qwen3ForCausalLM(cfg).eval()
    base.save_pretrained(base_dir)
    peft = get_shadow_model(base, ShadowConfig(**shadow_kw))
    with torch.no_grad():  # shadow-peft zero-initializes injection ups; randomize every adapter weight
        for pname, p in peft.named_parameters():
            if pname.startswith("shadow_") and "norm" not in pname:
                p.normal_(0.0, 0.02)
    ShadowForCausalLM(peft).save_pretrained(adapter_dir)
    (out / "COMPLETE").write_text("ok\n")
    return base_dir, adapter_dir
