"""Test cases built with shadow_peft (the oracle): tiny random base models and randomized adapters on disk.

Every case is a HF base directory (`save_pretrained`), a shadow-peft adapter directory
(`ShadowForCausalLM.save_pretrained`) whose every weight is random (shadow-peft zero-inits
`injection_ups`, which would hide injection bugs) and, for explicit shadows, the shadow
model's own HF directory (what users pass as --shadow-model).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
from transformers import AutoModelForCausalLM

from shadow_edge.core import ShadowModel, load_spec

COMMON = dict(num_hidden_layers=4, intermediate_size=128, initializer_range=0.2, max_position_embeddings=512,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)  # no EOS: generate runs to max_new_tokens
ARCHS = {"qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
         "llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
         "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
         "phi3": ("Phi3Config", "Phi3ForCausalLM"), "granite": ("GraniteConfig", "GraniteForCausalLM"),
         "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"), "olmo2": ("Olmo2Config", "Olmo2ForCausalLM")}


@dataclass(frozen=True)
class CaseRecipe:
    arch: str
    base: dict  # config overrides on top of COMMON
    shadow: ShadowConfig
    explicit: dict | None = None  # config of an explicit shadow model (same arch), or None = implicit
    explicit_arch: str | None = None  # the explicit shadow's own family (its config is `explicit` alone)


RECIPES = {
    "qwen3_implicit": CaseRecipe("qwen3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                               head_dim=32, vocab_size=384, tie_word_embeddings=True),
                                 ShadowConfig(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=6)),
    "qwen3_explicit": CaseRecipe("qwen3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                               head_dim=32, vocab_size=320, tie_word_embeddings=True),
                                 ShadowConfig(injection_hidden_size=8, gate_hidden_size=6),
                                 explicit=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               num_key_value_heads=1, head_dim=16, intermediate_size=64)),
    "llama_untied": CaseRecipe("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                             vocab_size=512, tie_word_embeddings=False),
                               ShadowConfig(num_shadow_layers=2, injection_hidden_size=8, gate_hidden_size=6)),
    "qwen2_implicit": CaseRecipe("qwen2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                               vocab_size=448, tie_word_embeddings=True),
                                 ShadowConfig(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=6)),
    "mistral_implicit": CaseRecipe("mistral", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                   vocab_size=300, tie_word_embeddings=False),
                                   ShadowConfig(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=6)),
}
CASE_NAMES = tuple(RECIPES)
_SMALL = ShadowConfig(num_shadow_layers=2, injection_hidden_size=8, gate_hidden_size=6)
# The families beyond Llama's shape (tests/export/test_families.py): windows shorter than the test prompts (9-10 tokens),
# soft-caps small enough to bend the scores and logits, head_dim 12 for the ONNX Attention fallback.
FAMILY_RECIPES = {
    "gemma2_gqa": CaseRecipe("gemma2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            vocab_size=256, tie_word_embeddings=True, sliding_window=4,
                                            query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
                                            final_logit_softcapping=2.0), _SMALL),
    "gemma3_hd12": CaseRecipe("gemma3_text", dict(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=1, head_dim=12, vocab_size=256,
        tie_word_embeddings=True, sliding_window=3, query_pre_attn_scalar=16, attn_logit_softcapping=3.0,
        final_logit_softcapping=2.5, layer_types=["sliding_attention", "full_attention"] * 2,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}), _SMALL),
    "phi3_partial_explicit_gemma3": CaseRecipe(
        "phi3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                     tie_word_embeddings=False, partial_rotary_factor=0.75),
        ShadowConfig(injection_hidden_size=8, gate_hidden_size=6),
        explicit=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      intermediate_size=64, vocab_size=256, sliding_window=3,
                      layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True),
        explicit_arch="gemma3_text"),
    "granite_multipliers": CaseRecipe("granite", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                      vocab_size=256, tie_word_embeddings=True, embedding_multiplier=6.0,
                                                      attention_multiplier=0.15, residual_multiplier=0.3,
                                                      logits_scaling=4.0), _SMALL),
    "smollm3_nope_window": CaseRecipe("smollm3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                      vocab_size=256, tie_word_embeddings=True, no_rope_layer_interval=2,
                                                      use_sliding_window=True, sliding_window=4), _SMALL),
    "olmo2_post_norm": CaseRecipe("olmo2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                vocab_size=256, tie_word_embeddings=False), _SMALL),
}
FAMILY_NAMES = tuple(FAMILY_RECIPES)
# head_dim not a multiple of 8 (onnxruntime's GroupQueryAttention refuses it: the ONNX Attention fallback).
HEAD_DIM_RECIPES = {
    "qwen3_explicit_hd4": CaseRecipe("qwen3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                   head_dim=16, vocab_size=256, tie_word_embeddings=True),
                                     ShadowConfig(injection_hidden_size=8, gate_hidden_size=6),
                                     explicit=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=2, head_dim=4, intermediate_size=32)),
    "llama_hd12_explicit_hd12": CaseRecipe("llama", dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                                                         vocab_size=256, tie_word_embeddings=False),
                                           ShadowConfig(injection_hidden_size=8, gate_hidden_size=6),
                                           explicit=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                                         num_key_value_heads=1, intermediate_size=48)),
    "qwen2_explicit_hd20": CaseRecipe("qwen2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                    vocab_size=256, tie_word_embeddings=True),
                                      ShadowConfig(injection_hidden_size=8, gate_hidden_size=6),
                                      explicit=dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=2,
                                                    num_key_value_heads=2, intermediate_size=64)),
}


def make_base_model(arch: str, seed: int, **overrides) -> transformers.PreTrainedModel:
    """A random HF causal LM of `arch` ("qwen3", "qwen2", "llama", "mistral"), in eval mode."""
    config_cls, model_cls = (getattr(transformers, n) for n in ARCHS[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # HF initializes weights from the global generator
        return model_cls(config_cls(**{**COMMON, **overrides})).eval()


@torch.no_grad()
def randomize_adapter(model: torch.nn.Module, seed: int,
                      select=lambda name: name.startswith("shadow_")) -> None:
    """Every parameter `select` picks (default: `shadow_*`) random: norms around 1, the rest normal(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if select(name):
            noise = 0.2 * torch.randn(p.shape, generator=gen)
            p.copy_(noise + 1.0 if "norm.weight" in name else noise)


@dataclass
class Case:
    """One built case on disk, with the oracle and our reference model loaded lazily (once each)."""

    name: str
    base_dir: Path
    adapter_dir: Path
    shadow_model_dir: Path | None
    vocab_size: int
    _oracles: dict = field(default_factory=dict, repr=False)
    _model: ShadowModel | None = field(default=None, repr=False)

    def oracle(self, mode: str) -> ShadowForCausalLM:
        """shadow_peft's model loaded back from disk, in eval mode and the given inference mode."""
        if mode not in self._oracles:
            shadow = (None if self.shadow_model_dir is None
                      else AutoModelForCausalLM.from_pretrained(self.shadow_model_dir))
            self._oracles[mode] = ShadowForCausalLM.from_pretrained(
                AutoModelForCausalLM.from_pretrained(self.base_dir), self.adapter_dir, shadow_model=shadow,
                inference_mode=mode).eval()
        return self._oracles[mode]

    def model(self) -> ShadowModel:
        """Our reference model, read by `load_spec` from the same directories."""
        if self._model is None:
            self._model = ShadowModel(load_spec(self.base_dir, self.adapter_dir, self.shadow_model_dir))
        return self._model


def recipe_of(name: str) -> CaseRecipe:
    """The recipe of case `name`, from any of the tables (RECIPES, HEAD_DIM_RECIPES, FAMILY_RECIPES)."""
    return {**RECIPES, **HEAD_DIM_RECIPES, **FAMILY_RECIPES}[name]


def make_case(root: Path, name: str) -> Case:
    """Build case `name` (in RECIPES, HEAD_DIM_RECIPES or FAMILY_RECIPES) under `root/name` with shadow_peft and return it."""
    recipe, seed = recipe_of(name), zlib.crc32(name.encode())
    out = Path(root) / name
    base = make_base_model(recipe.arch, seed, **recipe.base)
    base.save_pretrained(out / "base")
    shadow_model, shadow_dir = None, None
    if recipe.explicit is not None:
        shadow_model = (make_base_model(recipe.explicit_arch, seed + 1, **recipe.explicit) if recipe.explicit_arch
                        else make_base_model(recipe.arch, seed + 1,
                                             **{**recipe.base, **recipe.explicit, "tie_word_embeddings": True}))
        shadow_dir = out / "shadow_model"
        shadow_model.save_pretrained(shadow_dir)
    peft_model = get_shadow_model(base, recipe.shadow, shadow_model=shadow_model)
    randomize_adapter(peft_model, seed + 2)
    ShadowForCausalLM(peft_model).save_pretrained(out / "adapter")
    return Case(name, out / "base", out / "adapter", shadow_dir, recipe.base["vocab_size"])
