"""The ONNX runtime against shadow_peft (the oracle) on every factory case, in both modes.

Forward logits within 1e-4; greedy tokens equal `ShadowForCausalLM.generate`; a left-padded
batch equals its prompts run alone; each KV-cached decode step equals a full forward over
the same prefix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime_fixtures import artifact_of, runtime_once  # noqa: F401  (fixtures)
from factories import CASE_NAMES
from shadow_edge.core.model import position_ids_from_mask
from shadow_edge.runtime.generate import decode_one, position_ids, prefill

MODES = ("shadow_only", "base_shadow")
TOL = 1e-4


@pytest.fixture(params=CASE_NAMES)
def loaded(request, artifact_of):
    case, art = artifact_of(request.param)
    return case, runtime_once(request.param, art)


def random_ids(vocab: int, b: int, t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (b, t), dtype=np.int64)


def left_pad(ids: np.ndarray, lengths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = ids.copy(), np.ones_like(ids)
    for r, n in enumerate(lengths):
        ids[r, : ids.shape[1] - n], mask[r, : ids.shape[1] - n] = 0, 0
    return ids, mask


def oracle_logits(case, mode, ids, mask) -> np.ndarray:
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        return case.oracle(mode)(input_ids=ids_t, attention_mask=mask_t,
                                 position_ids=position_ids_from_mask(mask_t)).logits.numpy()


def oracle_greedy(case, mode, ids, mask, n) -> list[list[int]]:
    with torch.no_grad():
        out = case.oracle(mode).generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                         max_new_tokens=n, do_sample=False, use_cache=False, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


@pytest.mark.parametrize("mode", MODES)
def test_forward_logits_match_oracle(loaded, mode):
    case, rt = loaded
    ids = random_ids(case.vocab_size, 2, 9, seed=1)
    ours = rt.forward(ids, mode=mode)
    assert ours.shape == (2, 9, case.vocab_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, oracle_logits(case, mode, ids, np.ones_like(ids)), atol=TOL, rtol=0)
    padded, mask = left_pad(ids, (9, 4))
    ours = rt.forward(padded, mask, mode=mode)
    assert np.isfinite(ours).all()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], oracle_logits(case, mode, padded, mask)[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generate_matches_oracle(loaded, mode):
    case, rt = loaded
    ids = random_ids(case.vocab_size, 1, 5, seed=7)
    out = rt.generate(ids[0].tolist(), mode=mode, max_new_tokens=16)
    assert out.token_ids == oracle_greedy(case, mode, ids, np.ones_like(ids), 16)[0]
    assert out.finish_reason == "length" and out.prompt_tokens == 5


@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_equals_prompts_alone_and_oracle(loaded, mode):
    case, rt = loaded
    prompts = [random_ids(case.vocab_size, 1, n, seed=10 + n)[0].tolist() for n in (6, 1, 3)]
    batch = rt.generate(prompts, mode=mode, max_new_tokens=12)
    assert len(batch.token_ids) == 3 and batch.prompt_tokens == [6, 1, 3]
    for p, toks in zip(prompts, batch.token_ids):
        assert rt.generate(p, mode=mode, max_new_tokens=12).token_ids == toks
    width = max(map(len, prompts))
    ids = np.zeros((3, width), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = p
    ids, mask = left_pad(ids, tuple(map(len, prompts)))
    assert batch.token_ids == oracle_greedy(case, mode, ids, mask, 12)


@pytest.mark.parametrize("mode", MODES)
def test_each_decode_step_equals_full_forward(loaded, mode):
    """prefill k tokens, then feed the rest one at a time: logits at each step == forward over the prefix."""
    case, rt = loaded
    ids, mask = left_pad(random_ids(case.vocab_size, 2, 10, seed=3), (10, 6))
    full = rt.forward(ids, mask, mode=mode)  # [b, t, V]
    pipe, k = rt.pipeline(mode), 5  # row 1's prompt starts at column 4
    pos = position_ids(mask)
    logits, caches, next_pos = prefill(pipe, ids[:, :k], mask[:, :k])
    np.testing.assert_allclose(logits, full[:, k - 1], atol=TOL, rtol=0)
    for t in range(k, ids.shape[1]):
        assert (next_pos == pos[:, t]).all()
        logits, caches = decode_one(pipe, ids[:, t], mask[:, : t + 1], pos[:, t], caches)
        assert all(c.length == t + 1 for c in caches)
        real = mask[:, t].astype(bool)
        np.testing.assert_allclose(logits[real], full[real, t], atol=TOL, rtol=0)
        next_pos = next_pos + 1
    assert len(caches) == (1 if mode == "shadow_only" else 2)


def test_base_plain_mode_matches_the_hf_base(tiny_default, tmp_path):
    """Artifacts exported with plain_backbone also run the backbone alone (for overhead benchmarks)."""
    from transformers import AutoModelForCausalLM

    from shadow_edge.export import ExportOptions, export_artifact
    from shadow_edge.runtime import ShadowRuntime

    art = tmp_path / "art"
    export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, art,
                    options=ExportOptions(validate=False, plain_backbone=True), progress=lambda m: None)
    rt = ShadowRuntime.load(art, threads=1)
    assert "base_plain" in rt.modes
    ids = random_ids(rt.vocab_size, 1, 7, seed=5)
    base = AutoModelForCausalLM.from_pretrained(tiny_default.base_dir).eval()
    with torch.no_grad():
        ref = base(torch.from_numpy(ids)).logits.numpy()
        ref_tokens = base.generate(torch.from_numpy(ids), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, 7:].tolist()
    np.testing.assert_allclose(rt.forward(ids, mode="base_plain"), ref, atol=TOL, rtol=0)
    assert rt.generate(ids[0].tolist(), mode="base_plain", max_new_tokens=8, eos=[]).token_ids == ref_tokens
