"""Attention for every head_dim: shadows (and a base) whose head_dim is not a multiple of 8 export with the
ONNX Attention fallback, validate, and run in the runtime equal to the shadow_peft oracle; the kind is chosen
per graph and recorded in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factories import HEAD_DIM_RECIPES
from manifest_checks import assert_validated
from runtime_fixtures import artifact_of, tiny_artifact  # noqa: F401  (fixtures)
from shadow_edge import io_spec
from shadow_edge.errors import ArtifactError, ExportError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.generate import decode_one, position_ids, prefill
from tests.runtime.test_runtime_parity import MODES, TOL, left_pad, oracle_greedy, oracle_logits, random_ids


@pytest.fixture(scope="module")
def hd_artifacts(cases, tmp_path_factory):
    """`get(name) -> (case, art, runtime)`, exported once with validation on."""
    root, done = tmp_path_factory.mktemp("hd"), {}

    def get(name: str):
        if name not in done:
            case = cases(name)
            art = root / name
            export_artifact(case.base_dir, case.adapter_dir, art, case.shadow_model_dir, progress=lambda s: None)
            done[name] = (case, art, ShadowRuntime.load(art, threads=1))
        return done[name]

    return get


@pytest.mark.parametrize("name", tuple(HEAD_DIM_RECIPES))
def test_head_dims_not_multiple_of_8_match_oracle(hd_artifacts, name):
    case, art, rt = hd_artifacts(name)
    m = read_manifest(art)
    assert assert_validated(m)["path"] == "runtime"
    for g in m.graphs.values():
        if g.kv_layers:
            assert g.attention == (io_spec.ATTENTION_GQA if g.head_dim % 8 == 0 else io_spec.ATTENTION_ONNX)
    assert m.graphs["shadow"].attention == io_spec.ATTENTION_ONNX
    ids, mask = left_pad(random_ids(case.vocab_size, 2, 8, seed=2), (8, 5))
    prompts = [ids[0].tolist(), ids[1, 3:].tolist()]
    for mode in MODES:
        ours = rt.forward(ids, mask, mode=mode)
        real = mask.astype(bool)
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours[real], oracle_logits(case, mode, ids, mask)[real], atol=TOL, rtol=0)
        assert rt.generate(prompts, mode=mode, max_new_tokens=10).token_ids == oracle_greedy(case, mode, ids, mask, 10)


def test_fallback_decode_steps_equal_full_forward(hd_artifacts):
    """Prefill into a cache that must grow, then decode: each step's logits equal a full forward."""
    case, _, rt = hd_artifacts("qwen3_explicit_hd4")
    ids, mask = left_pad(random_ids(case.vocab_size, 2, 9, seed=4), (9, 5))
    for mode in MODES:
        full = rt.forward(ids, mask, mode=mode)
        pipe, pos = rt.pipeline(mode), position_ids(mask)
        logits, caches, _ = prefill(pipe, ids[:, :5], mask[:, :5])  # capacity 5: decode grows the buffers
        np.testing.assert_allclose(logits, full[:, 4], atol=TOL, rtol=0)
        for t in range(5, 9):
            logits, caches = decode_one(pipe, ids[:, t], mask[:, : t + 1], pos[:, t], caches)
            np.testing.assert_allclose(logits, full[:, t], atol=TOL, rtol=0)


def test_fallback_speculative_equals_base_shadow(hd_artifacts):
    """Speculative decoding rolls the in-place caches back after rejected drafts: same tokens as base_shadow."""
    case, _, rt = hd_artifacts("llama_hd12_explicit_hd12")
    prompts = [random_ids(case.vocab_size, 1, n, seed=20 + n)[0].tolist() for n in (7, 3)]
    assert rt.generate(prompts, mode="speculative", max_new_tokens=12).token_ids == \
        rt.generate(prompts, mode="base_shadow", max_new_tokens=12).token_ids


def test_forced_onnx_attention_equals_group_query_attention(cases, artifact_of, tmp_path):
    """The fallback on a head_dim GroupQueryAttention handles too: same logits and greedy tokens."""
    case, gqa_art = artifact_of("qwen3_implicit")
    art = tmp_path / "onnx_attn"
    export_artifact(case.base_dir, case.adapter_dir, art, options=ExportOptions(attention=io_spec.ATTENTION_ONNX),
                    progress=lambda s: None)
    m = read_manifest(art)
    assert {g.attention for g in m.graphs.values() if g.kv_layers} == {io_spec.ATTENTION_ONNX}
    assert_validated(m)
    gqa, onnx_rt = ShadowRuntime.load(gqa_art, threads=1), ShadowRuntime.load(art, threads=1)
    assert {g.attention for g in gqa.manifest.graphs.values() if g.kv_layers} == {io_spec.ATTENTION_GQA}
    ids, mask = left_pad(random_ids(case.vocab_size, 2, 7, seed=9), (7, 2))
    for mode in MODES:
        np.testing.assert_allclose(onnx_rt.forward(ids, mask, mode=mode), gqa.forward(ids, mask, mode=mode),
                                   atol=TOL, rtol=0)
        prompt = ids[0].tolist()
        assert onnx_rt.generate(prompt, mode=mode, max_new_tokens=8).token_ids == \
            gqa.generate(prompt, mode=mode, max_new_tokens=8).token_ids


def test_group_query_attention_refused_for_its_unsupported_head_dim(cases, tmp_path):
    case = cases("qwen3_explicit_hd4")
    with pytest.raises(ExportError, match="GroupQueryAttention needs head_dim % 8 == 0.*head_dim 4.*--attention"):
        export_artifact(case.base_dir, case.adapter_dir, tmp_path / "art", case.shadow_model_dir,
                        options=ExportOptions(attention=io_spec.ATTENTION_GQA), progress=lambda s: None)
    assert not (tmp_path / "art").exists()
    with pytest.raises(ExportError, match="--attention 'flash'.*auto"):
        ExportOptions(attention="flash")


def test_manifest_attention_kind_is_read_not_guessed(tiny_artifact, tmp_path):
    """Format 1 artifacts (before the kind was recorded) ran GroupQueryAttention; an unknown kind is refused."""
    import shutil

    raw = json.loads((tiny_artifact / "manifest.json").read_text())
    old = {**raw, "format_version": 1, "graphs": {k: {f: v for f, v in g.items() if f != "attention"}
                                                  for k, g in raw["graphs"].items()}}
    art = tmp_path / "old"
    shutil.copytree(tiny_artifact, art)
    (art / "manifest.json").write_text(json.dumps(old))
    m = read_manifest(art)
    assert m.graphs["shadow"].attention == io_spec.ATTENTION_GQA and m.graphs["lm_head"].attention == ""
    raw["graphs"]["shadow"]["attention"] = "FlashAttention9"
    (art / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="graph 'shadow' has attention 'FlashAttention9'"):
        ShadowRuntime.load(art, threads=1, verify=False, modes=("shadow_only",))
