"""Test cases built with HF PEFT's Shadow tuner (the oracle): tiny random bases, randomized adapters on disk.

Every case is a HF base directory, a PEFT adapter directory (`PeftModel.save_pretrained`) whose
every adapter weight is random (peft zero-inits `shadow_up`, which would hide injection bugs;
`modules_to_save` copies are randomized too) and, for pretrained shadows, the shadow model's
directory. The oracles are peft's attached model (base_shadow) and the detached model from
`unload_shadow()` (shadow_only), both loaded back from disk.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, ShadowConfig, get_peft_model
from transformers import AutoModelForCausalLM

from factories import FAMILY_RECIPES, make_base_model, randomize_adapter
from shadow_edge.core import ShadowModel, load_spec

QWEN3 = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=384,
             tie_word_embeddings=True)
LLAMA = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=320, tie_word_embeddings=False)
NARROW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
              intermediate_size=64)


@dataclass(frozen=True)
class PeftRecipe:
    arch: str
    base: dict
    config: dict  # ShadowConfig fields
    pretrained: str | None = None  # "plain" (HF decoder dir) or "projected" (causal_lm_with_hidden_projection)


PEFT_RECIPES = {
    # layers_to_transform next to the default (exact-name) targets is ignored by peft: all blocks are wrapped
    "qwen3_mirror1": PeftRecipe("qwen3", QWEN3, dict(r=4, update_hidden_size=6, layers_to_transform=[2, 3])),
    "llama_mirror2_own_embed": PeftRecipe("llama", LLAMA, dict(r=4, shadow_num_hidden_layers=2, share_embeddings=False,
                                                              modules_to_save=["lm_head"], shadow_alpha=0.3)),
    "qwen3_narrow": PeftRecipe("qwen3", QWEN3, dict(r=8, shadow_hidden_size=32, shadow_num_attention_heads=2,
                                                     shadow_intermediate_size=64, update_hidden_size=5)),
    "llama_subset": PeftRecipe("llama", LLAMA, dict(r=4, target_modules=r".*\.layers\.[12]$")),
    "qwen3_pretrained": PeftRecipe("qwen3", QWEN3, dict(r=4), pretrained="plain"),
    "qwen3_projected": PeftRecipe("qwen3", QWEN3, dict(r=4), pretrained="projected"),
}
# PEFT's mirror over the families beyond Llama's shape (windows, soft-caps, partial rotary, logit divisor).
PEFT_RECIPES.update({f"{name}_mirror": PeftRecipe(FAMILY_RECIPES[name].arch, FAMILY_RECIPES[name].base,
                                                  dict(r=4, shadow_num_hidden_layers=2, update_hidden_size=6))
                     for name in ("gemma2_gqa", "phi3_partial_explicit_gemma3", "granite_multipliers")})
PEFT_CASE_NAMES = tuple(PEFT_RECIPES)


def randomize_peft(model: torch.nn.Module, seed: int) -> None:
    """Every shadow and modules_to_save parameter of a peft model random (norms around 1)."""
    randomize_adapter(model, seed, select=lambda name: "shadow_" in name or "modules_to_save" in name)


@dataclass
class PeftCase:
    name: str
    base_dir: Path
    adapter_dir: Path
    shadow_model_dir: Path | None
    vocab_size: int
    _oracle: PeftModel | None = field(default=None, repr=False)
    _detached: torch.nn.Module | None = field(default=None, repr=False)
    _model: ShadowModel | None = field(default=None, repr=False)

    def oracle(self, mode: str) -> torch.nn.Module:
        """peft's model loaded from disk (base_shadow) or its `unload_shadow()` model (shadow_only)."""
        if self._oracle is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = AutoModelForCausalLM.from_pretrained(self.base_dir)
                self._oracle = PeftModel.from_pretrained(base, self.adapter_dir).eval()
            self._detached = self._oracle.base_model.unload_shadow(copy=True).eval()
        return self._oracle if mode == "base_shadow" else self._detached

    def model(self) -> ShadowModel:
        if self._model is None:
            self._model = ShadowModel(load_spec(self.base_dir, self.adapter_dir, self.shadow_model_dir))
        return self._model


def _pretrained_shadow(kind: str, base, seed: int, out: Path) -> Path:
    inner = make_base_model("qwen3", seed, **{**QWEN3, **NARROW})
    if kind == "plain":
        inner.save_pretrained(out)
        return out
    from shadow_peft import AutoModelForCausalLMWithHiddenProjection

    wrapped = AutoModelForCausalLMWithHiddenProjection.wrap(
        shadow_model=inner, shadow_hidden_projection=torch.nn.Linear(32, 64, bias=False),
        lm_head=base.get_output_embeddings(), init_optimal_projection=False)
    wrapped.save_pretrained(out)
    return out


def make_peft_case(root: Path, name: str) -> PeftCase:
    """Build case `name` (one of PEFT_CASE_NAMES) under `root/name` with peft and return it."""
    recipe, seed = PEFT_RECIPES[name], zlib.crc32(name.encode())
    out = Path(root) / name
    base = make_base_model(recipe.arch, seed, **recipe.base)
    base.save_pretrained(out / "base")
    shadow_dir, config = None, dict(recipe.config)
    if recipe.pretrained:
        shadow_dir = _pretrained_shadow(recipe.pretrained, base, seed + 1, out / "shadow_model")
        config["shadow_model"] = str(shadow_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, ShadowConfig(task_type="CAUSAL_LM", **config))
    randomize_peft(peft_model, seed + 2)
    peft_model.save_pretrained(out / "adapter")
    return PeftCase(name, out / "base", out / "adapter", shadow_dir, recipe.base["vocab_size"])
