"""Less common checkpoint shapes: shadow-peft's `causal_lm_with_hidden_projection` explicit shadow, and
trained heads in `shadow_modules.safetensors` (lm_head / shadow_lm_head differ from the base)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shadow_peft import AutoModelForCausalLMWithHiddenProjection, ShadowConfig, ShadowForCausalLM, get_shadow_model

from factories import RECIPES, make_base_model, randomize_adapter
from shadow_edge.core import ShadowModel, StepInputs, load_spec
from shadow_edge.export import export_artifact
from shadow_edge.runtime import ShadowRuntime

TOL = 5e-5  # float32 noise floor against shadow_peft (see test_core_parity)


def _oracle_logits(oracle, mode, ids, mask):
    oracle.set_inference_mode(mode)
    with torch.no_grad():
        return oracle(input_ids=ids, attention_mask=mask, position_ids=StepInputs.full(ids, mask).position_ids).logits


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    """Explicit shadow saved as AutoModelForCausalLMWithHiddenProjection (hidden 32 -> base 64)."""
    root = tmp_path_factory.mktemp("projected")
    base = make_base_model("qwen3", 11, **RECIPES["qwen3_explicit"].base)
    base.save_pretrained(root / "base")
    inner = make_base_model("qwen3", 12, **{**RECIPES["qwen3_explicit"].base, **RECIPES["qwen3_explicit"].explicit})
    wrapped = AutoModelForCausalLMWithHiddenProjection.wrap(
        shadow_model=inner, shadow_hidden_projection=torch.nn.Linear(32, 64, bias=False),
        lm_head=base.get_output_embeddings(), init_optimal_projection=False)
    wrapped.save_pretrained(root / "shadow")
    peft = get_shadow_model(base, ShadowConfig(injection_hidden_size=8, gate_hidden_size=6), shadow_model=wrapped)
    randomize_adapter(peft, 13)
    ShadowForCausalLM(peft).save_pretrained(root / "adapter")
    oracle = ShadowForCausalLM.from_pretrained(
        type(base).from_pretrained(root / "base"), root / "adapter",
        shadow_model=AutoModelForCausalLMWithHiddenProjection.from_pretrained(root / "shadow")).eval()
    return root, oracle


def test_projected_explicit_shadow_matches_oracle(projected):
    root, oracle = projected
    spec = load_spec(root / "base", root / "adapter", root / "shadow")
    assert spec.projection is not None and spec.shadow.config.hidden_size == 32 and spec.shadow.embed is not None
    ids = torch.randint(0, spec.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    for mode in ("shadow_only", "base_shadow"):
        ours, _ = ShadowModel(spec).forward(StepInputs.full(ids, mask), mode)
        ref = _oracle_logits(oracle, mode, ids, mask)
        assert (ours - ref)[mask.bool()].abs().max() <= TOL, mode


def test_trained_heads_from_shadow_modules(cases, tmp_path):
    """modules_to_save: a trained shadow_lm_head gets its own head graph; lm_head changes the combined mode."""
    case = cases("qwen3_implicit")
    base = type(case.oracle("base_shadow").peft_model.base_model).from_pretrained(case.base_dir)
    cfg = ShadowConfig(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=6,
                       modules_to_save=["lm_head", "shadow_lm_head"])
    model = ShadowForCausalLM(get_shadow_model(base, cfg))
    randomize_adapter(model.peft_model, 21)
    with torch.no_grad():
        model.shadow_lm_head.weight.add_(0.3 * torch.randn_like(model.shadow_lm_head.weight))
    model.lm_head.weight.requires_grad_(True)  # trained (and so saved) like modules_to_save does
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "shadow_modules.safetensors").is_file()
    spec = load_spec(case.base_dir, tmp_path / "adapter")
    assert spec.shadow_lm_head is not spec.lm_head
    oracle = ShadowForCausalLM.from_pretrained(type(base).from_pretrained(case.base_dir), tmp_path / "adapter").eval()
    art = tmp_path / "art"
    manifest = export_artifact(case.base_dir, tmp_path / "adapter", art, progress=lambda s: None)
    assert manifest.modes["shadow_only"]["head"] == "shadow_lm_head"
    rt = ShadowRuntime.load(art, threads=1)
    ids = torch.randint(0, spec.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    for mode in ("shadow_only", "base_shadow"):
        ref = _oracle_logits(oracle, mode, ids, torch.ones_like(ids)).numpy()
        assert np.abs(rt.forward(ids.numpy(), mode=mode) - ref).max() <= 1e-4, mode
