"""RoPE variants against transformers itself: the config is read as transformers reads it, and the
exported backbone's logits equal transformers' own model for every variant we implement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from factories import make_base_model
from shadow_edge.core.arch import architecture, decoder_config_from_hf
from shadow_edge.core.rope import read_rope
from shadow_edge.core.tiny import SHADOW_CONFIG, adapter_tensors
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.runtime import ShadowRuntime

BASE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
            max_position_embeddings=64, tie_word_embeddings=True)

# (name, arch, config.json fields added on disk)
VARIANTS = [
    ("default_theta", "llama", {"rope_theta": 500.0}),
    ("linear", "qwen3", {"rope_scaling": {"rope_type": "linear", "factor": 3.0}, "rope_theta": 1000.0}),
    ("dynamic", "llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}),
    ("llama3", "llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                             "rope_theta": 500.0}}),
    # the case: transformers 5 default rope_parameters plus a legacy yarn rope_scaling
    ("yarn_legacy_over_default", "qwen3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                                           "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 16}}),
    ("yarn_mscale", "llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 300.0,
                                                  "mscale": 0.8, "mscale_all_dim": 0.5, "beta_fast": 16,
                                                  "original_max_position_embeddings": 16}}),
    # Phi-3 / Phi-4-mini: short factors within original_max_position_embeddings (the 60-token test fits), partial
    ("longrope_partial", "phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 2.0, 3.0, 5.0, 8.0],
                                                   "long_factor": [9.0] * 6},
                                  "partial_rotary_factor": 0.75, "original_max_position_embeddings": 64,
                                  "max_position_embeddings": 256}),
]


def _write_model(root: Path, arch: str, extra: dict) -> tuple[Path, Path]:
    base, adapter = root / "base", root / "adapter"
    make_base_model(arch, 7, **BASE).save_pretrained(base)
    cfg = json.loads((base / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.pop("rope_scaling", None)
    (base / "config.json").write_text(json.dumps({**cfg, **extra}))
    tensors = adapter_tensors(load_file(str(base / "model.safetensors")), cfg["num_hidden_layers"],
                              cfg["hidden_size"], torch.Generator().manual_seed(3))
    adapter.mkdir()
    (adapter / "shadow_config.json").write_text(json.dumps(SHADOW_CONFIG))
    save_file(tensors, str(adapter / "shadow_adapter.safetensors"))
    return base, adapter


@pytest.mark.parametrize("name, arch, extra", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_config_read_as_transformers_reads_it(name, arch, extra):
    raw = {"model_type": arch, **BASE, **extra}
    theirs = AutoConfig.for_model(arch, **{k: v for k, v in raw.items() if k != "model_type"}).rope_parameters
    theta, ours, _ = read_rope(json.loads(json.dumps(raw)), "config.json", architecture(arch).partial_rotary)
    assert theta == pytest.approx(theirs["rope_theta"])
    assert ours.get("rope_type", "default") == theirs["rope_type"]
    for key in ("factor", "original_max_position_embeddings", "low_freq_factor", "mscale"):
        if key in theirs:
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize("name, arch, extra", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_exported_backbone_matches_transformers_logits(tmp_path, name, arch, extra):
    base, adapter = _write_model(tmp_path, arch, extra)
    out = tmp_path / "art"
    export_artifact(base, adapter, out, options=ExportOptions(plain_backbone=True), progress=lambda s: None)
    ids = torch.randint(0, BASE["vocab_size"], (1, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(base).eval()  # reads config.json as transformers does
        ref = hf(input_ids=ids).logits.numpy()
    ours = ShadowRuntime.load(out, threads=1, modes=("base_plain",)).forward(ids.numpy(), mode="base_plain")
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    if name.startswith("yarn"):  # the variant matters: plain RoPE would be far off
        plain = decoder_config_from_hf({**json.loads((base / "config.json").read_text()), "rope_scaling": None,
                                        "rope_parameters": None}, "x")
        assert plain.rope_inv_freq() != decoder_config_from_hf(json.loads((base / "config.json").read_text()),
                                                               "x").rope_inv_freq()
