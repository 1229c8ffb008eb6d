"""The families beyond Llama's shape (Gemma 2/3, Phi-3, Granite, SmolLM3, OLMo 2) exported and matched exactly.

Each case (tests/factories.py FAMILY_RECIPES: windows shorter than the prompts, soft-caps that bend the
scores and logits, partial rotary, NoPE layers, multipliers, post norms, an explicit shadow of another
family) is exported once (validated) with the plain backbone. The base's math is checked against
transformers' own model, the adapter against shadow_peft: logits of a full and a left-padded batch, each
cached decode step against a full forward, greedy tokens of a left-padded batch. int4, the ONNX Attention
fallback, every mode and the refusals of unsupported variants are checked too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from factories import FAMILY_NAMES, Case, make_case
from manifest_checks import assert_validated
from shadow_edge import io_spec
from shadow_edge.core.arch import decoder_config_from_hf
from shadow_edge.core.model import position_ids_from_mask
from shadow_edge.errors import UnsupportedModelError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.generate import decode_one, position_ids, prefill

TOL = 1e-4
QUIET = dict(progress=lambda m: None)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """`family(name, **export options) -> (Case, runtime)`, each built and exported once per module."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def get(name: str, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in built:
            case = make_case(root, name) if (name, ()) not in built else built[(name, ())][0]
            art = root / f"art_{name}_{len(built)}"
            export_artifact(case.base_dir, case.adapter_dir, art, case.shadow_model_dir,
                            options=ExportOptions(plain_backbone=True, **options), **QUIET)
            built[key] = case, ShadowRuntime.load(art, threads=1), art
        return built[key]

    return get


def batch(vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two prompts of 10 tokens, the second left-padded to 6 real ones: longer than every window here."""
    ids = np.random.default_rng(seed).integers(0, vocab, (2, 10))
    mask = np.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0
    return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    t, m = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        return model(input_ids=t, attention_mask=m, position_ids=position_ids_from_mask(m)).logits.numpy()


def oracle_greedy(case: Case, mode: str, ids: np.ndarray, mask: np.ndarray, n: int) -> list[list[int]]:
    with torch.no_grad():
        out = case.oracle(mode).generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                         max_new_tokens=n, do_sample=False, use_cache=False, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def close(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    assert np.isfinite(ours).all()
    return float(np.abs(ours[real] - ref[real]).max())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_base_matches_transformers(family, name):
    """The plain backbone + lm_head (incl. the family's logit transform) against transformers' own model."""
    case, rt, art = family(name)
    assert_validated(read_manifest(art))
    hf = AutoModelForCausalLM.from_pretrained(case.base_dir).eval()
    ids, mask = batch(case.vocab_size, 1)
    assert close(rt.forward(ids, mask, mode="base_plain"), hf_logits(hf, ids, mask), mask) <= TOL
    with torch.no_grad():
        want = hf.generate(torch.from_numpy(ids[:1]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert rt.generate(ids[0].tolist(), mode="base_plain", max_new_tokens=8, eos=[]).token_ids == want[0, 10:].tolist()


@pytest.mark.parametrize("mode", ("shadow_only", "base_shadow"))
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_adapter_matches_shadow_peft(family, name, mode):
    """Logits of a left-padded batch, each cached decode step, and greedy tokens against shadow_peft."""
    case, rt, _ = family(name)
    ids, mask = batch(case.vocab_size, 5)  # seed 2 meets a near-tie (3e-6 apart) in phi3's greedy tokens
    full = rt.forward(ids, mask, mode=mode)
    assert close(full, hf_logits(case.oracle(mode), ids, mask), mask) <= TOL
    pipe, k, pos = rt.pipeline(mode), 5, position_ids(mask)
    logits, caches, _ = prefill(pipe, ids[:, :k], mask[:, :k])
    for t in range(k, ids.shape[1]):
        logits, caches = decode_one(pipe, ids[:, t], mask[:, : t + 1], pos[:, t], caches)
        real = mask[:, t].astype(bool)
        np.testing.assert_allclose(logits[real], full[real, t], atol=TOL, rtol=0)
    prompts = [ids[0].tolist(), ids[1, 4:].tolist()]
    assert rt.generate(prompts, mode=mode, max_new_tokens=10).token_ids == oracle_greedy(case, mode, ids, mask, 10)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_mode_runs(family, name):
    """speculative decodes exactly what base_shadow does; cascade runs."""
    case, rt, _ = family(name)
    prompt = batch(case.vocab_size, 3)[0][0].tolist()
    want = rt.generate(prompt, mode="base_shadow", max_new_tokens=8).token_ids
    assert rt.generate(prompt, mode="speculative", max_new_tokens=8).token_ids == want
    assert len(rt.generate(prompt, mode="cascade", max_new_tokens=8).token_ids) == 8


def test_gemma2_onnx_attention_fallback(family):
    """The ONNX Attention kind with the window in its bias and the soft-cap attribute."""
    case, rt, art = family("gemma2_gqa", attention=io_spec.ATTENTION_ONNX)
    assert {g.attention for g in read_manifest(art).graphs.values() if g.kv_layers} == {io_spec.ATTENTION_ONNX}
    ids, mask = batch(case.vocab_size, 4)
    for mode in ("shadow_only", "base_shadow"):
        assert close(rt.forward(ids, mask, mode=mode), hf_logits(case.oracle(mode), ids, mask), mask) <= TOL


@pytest.mark.parametrize("name", ("gemma2_gqa", "phi3_partial_explicit_gemma3"))
def test_int4_validates(family, name):
    """int4 weights with float32 arithmetic validate against the dequantized reference within 1e-4 and decode."""
    case, rt, art = family(name, quantize="int4", quant_compute="float32")
    m = read_manifest(art)
    assert_validated(m, atol=1e-4)
    assert m.quantization == "int4"
    assert len(rt.generate([1, 2, 3], mode="base_shadow", max_new_tokens=4).token_ids) == 4


BASE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=256,
            num_hidden_layers=2)


@pytest.mark.parametrize("cfg, field", [
    ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", **BASE}, "vision_config": {}},
     "text_config"),
    ({"model_type": "mixtral", "num_local_experts": 8, **BASE}, "num_local_experts"),
    ({"model_type": "qwen3", "num_experts": 4, **BASE}, "num_experts"),
    ({"model_type": "phi3", "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 3,
                                             "long_factor": [2.0] * 8}, "original_max_position_embeddings": 64,
      **BASE}, "short_factor"),
    ({"model_type": "llama", "rope_scaling": {"type": "su", "factor": 2.0}, **BASE}, "rope_scaling"),
    ({"model_type": "gemma2", "use_bidirectional_attention": True, **BASE}, "use_bidirectional_attention"),
    ({"model_type": "llama", "hidden_act": "relu", **BASE}, "hidden_act"),
    ({"model_type": "gemma2", "layer_types": ["sliding_attention"], "sliding_window": 4, **BASE}, "layer_types"),
])
def test_unsupported_variants_refused_naming_the_field(cfg, field):
    with pytest.raises(UnsupportedModelError, match=f"config.json: .*`{field}`"):
        decoder_config_from_hf(json.loads(json.dumps(cfg)), "config.json")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_genai_runs_the_single_graphs(family, name):
    """onnxruntime-genai runs every single graph written (one prompt; a batch of one length) with shadow-edge's
    tokens; sliding-window models say in the manifest that right-padded batches of mixed lengths differ."""
    from tests.interop.test_interop import genai_greedy, reference

    case, rt, art = family(name)
    m = read_manifest(art)
    prompts = [[5, 17, 99, 3, 7, 8, 9, 10], [42, 8, 1, 2, 3, 4, 5, 6]]
    for key, mode in (("detached", "shadow_only"), ("combined", "base_shadow")):
        entry = m.interop[key]
        if entry["file"] is None:
            assert "KV shapes differ" in entry["limits"]["all"]
            continue
        slides = any("sliding" in (m.model[p].get("layer_types") or ()) for p in ("shadow", "base")[:1 + (key == "combined")])
        assert ("onnxruntime-genai" in entry["limits"]) == slides
        assert ("optimum" in entry["tools"]) == (m.model["shadow"]["model_type"] in ("phi3", "smollm3"))
        for batch_ in (prompts[:1], prompts):
            want = [row[:row.index(0) + 1] if 0 in row else row for row in reference(rt, batch_, mode)]
            got = genai_greedy(art, entry["file"], batch_, rt.eos_ids)  # genai ends a row at id 0 (its pad id)
            assert [g[:len(w)] for g, w in zip(got, want)] == want
