"""The reference PyTorch model against shadow_peft: logits, KV-cached steps, left padding and greedy decoding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
from transformers import AutoModelForCausalLM

from factories import Case
from shadow_edge.core import ShadowModel, StepInputs, load_spec
from shadow_edge.core.greedy import greedy_generate
from shadow_edge.core.model import position_ids_from_mask

MODES = ("shadow_only", "base_shadow")
# float32 noise floor of these models: shadow_peft itself in float32 vs float64 differs by up to
# 1.0e-5 (max |logit| ~7), so 1e-5 would flake; a 1% error in alpha alone shows as 1.3e-2.
TOL = 5e-5


def random_ids(vocab: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def left_padded(vocab: int, lengths: tuple[int, ...], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids [b, max_len] (pad id 0) and mask [b, max_len] for prompts of the given lengths."""
    width = max(lengths)
    ids = random_ids(vocab, len(lengths), width, seed=seed)
    mask = torch.ones_like(ids)
    for row, n in enumerate(lengths):
        ids[row, : width - n], mask[row, : width - n] = 0, 0
    return ids, mask


def oracle_logits(case: Case, mode: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return case.oracle(mode)(input_ids=ids, attention_mask=mask,
                                 position_ids=position_ids_from_mask(mask)).logits


def max_real_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest |a - b| over real (non-padding) positions of [b, t, V] logits."""
    real = mask.bool()
    return (a[real] - b[real]).abs().max().item()


@pytest.mark.parametrize("mode", MODES)
def test_full_logits_match_oracle(case, mode):
    ids = random_ids(case.vocab_size, 2, 9)
    mask = torch.ones_like(ids)
    ours, _ = case.model().forward(StepInputs.full(ids, mask), mode)
    with torch.no_grad():
        ref = case.oracle(mode)(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == ref.shape == (2, 9, case.vocab_size)
    assert (ours - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_padded_logits_match_oracle(case, mode):
    ids, mask = left_padded(case.vocab_size, (8, 5))
    ours, _ = case.model().forward(StepInputs.full(ids, mask), mode)
    assert torch.isfinite(ours).all()  # padding rows must not produce NaN
    assert max_real_diff(ours, oracle_logits(case, mode, ids, mask), mask) <= TOL


@pytest.mark.parametrize("k", (1, 3, 5))
@pytest.mark.parametrize("mode", MODES)
def test_prefill_then_cached_steps_match_full(case, mode, k):
    ids, mask = left_padded(case.vocab_size, (8, 6), seed=k)
    pos = position_ids_from_mask(mask)
    model = case.model()
    full, _ = model.forward(StepInputs(ids, mask, pos), mode)
    logits, past = model.forward(StepInputs(ids[:, :k], mask[:, :k], pos[:, :k]), mode)
    steps = [logits]
    for t in range(k, ids.shape[1]):
        logits, past = model.forward(StepInputs(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1]), mode, past=past)
        steps.append(logits)
    incremental = torch.cat(steps, dim=1)
    assert past["shadow"][0][0].shape[2] == ids.shape[1]  # [b, kv_heads, seq, head_dim]
    assert set(past) == ({"shadow"} if mode == "shadow_only" else {"shadow", "base"})
    assert max_real_diff(incremental, full, mask) <= TOL
    assert max_real_diff(incremental, oracle_logits(case, mode, ids, mask), mask) <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_left_padding_matches_unpadded(case, mode):
    lengths = (7, 4)
    ids, mask = left_padded(case.vocab_size, lengths)
    batched, _ = case.model().forward(StepInputs.full(ids, mask), mode)
    for row, n in enumerate(lengths):
        alone, _ = case.model().forward(StepInputs.full(ids[row:row + 1, -n:]), mode)
        assert (batched[row, -n:] - alone[0]).abs().max().item() <= TOL


def oracle_greedy(case: Case, mode: str, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        out = case.oracle(mode).generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                         use_cache=False, pad_token_id=0)
    assert torch.equal(out[:, : ids.shape[1]], ids)  # generate returns prompt + new tokens
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("mode", MODES)
def test_greedy_matches_oracle(case, mode):
    ids = random_ids(case.vocab_size, 1, 5, seed=7)
    ours = greedy_generate(case.model(), ids, torch.ones_like(ids), mode, max_new_tokens=16)
    assert ours.shape == (1, 16) and ours.dtype == torch.long
    assert torch.equal(ours, oracle_greedy(case, mode, ids, torch.ones_like(ids), 16))


@pytest.mark.parametrize("mode", MODES)
def test_greedy_left_padded_batch_matches_oracle(case, mode):
    ids, mask = left_padded(case.vocab_size, (6, 3), seed=8)
    ours = greedy_generate(case.model(), ids, mask, mode, max_new_tokens=16)
    assert torch.equal(ours, oracle_greedy(case, mode, ids, mask, 16))
    alone = greedy_generate(case.model(), ids[1:, -3:], None, mode, max_new_tokens=16)
    assert torch.equal(ours[1:], alone)


# ---- the embedded tiny default model ----

def test_tiny_default_adapter_has_shadow_peft_keys(tiny_default):
    """Same keys, shapes and config as shadow-peft itself writes for this base."""
    sc = json.loads((tiny_default.adapter_dir / "shadow_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(tiny_default.base_dir)
    expected = get_shadow_model(base, ShadowConfig.from_dict(sc)).adapter_state_dict()
    written = load_file(str(tiny_default.adapter_dir / "shadow_adapter.safetensors"))
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert sc == ShadowConfig.from_dict(sc).to_dict()
    assert all(v.ne(0).all() for v in written.values())  # every weight live, injection ups included


def test_tiny_default_loads_and_matches_oracle(tiny_default):
    spec = load_spec(tiny_default.base_dir, tiny_default.adapter_dir)
    assert spec.injection_up.ne(0).all() and spec.injection_down.ne(0).all()
    model = ShadowModel(spec)
    ids = random_ids(spec.vocab_size, 1, 6, seed=3)
    for mode in MODES:
        oracle = ShadowForCausalLM.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_default.base_dir),
                                                   tiny_default.adapter_dir, inference_mode=mode).eval()
        with torch.no_grad():
            ref = oracle(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            expected = oracle.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                       do_sample=False, use_cache=False, eos_token_id=None)[:, ids.shape[1]:]
        assert (model.forward(StepInputs.full(ids), mode)[0] - ref).abs().max().item() <= TOL
        tokens = greedy_generate(model, ids, None, mode, max_new_tokens=12)
        assert torch.equal(tokens, expected)
        assert len(set(tokens[0].tolist())) > 1  # initializer_range 0.2: not one repeated token


def test_tiny_default_is_deterministic_and_reused(tiny_default, tmp_path):
    from shadow_edge.core.tiny import write_tiny_default

    again = write_tiny_default(tmp_path / "again")
    first = sorted(p.relative_to(tiny_default.base_dir.parent) for p in tiny_default.base_dir.parent.rglob("*"))
    assert first == sorted(p.relative_to(again.base_dir.parent) for p in again.base_dir.parent.rglob("*"))
    for rel in first:
        a, b = tiny_default.base_dir.parent / rel, again.base_dir.parent / rel
        assert a.is_dir() or a.read_bytes() == b.read_bytes(), rel
    stamp = (again.adapter_dir / "shadow_adapter.safetensors").stat().st_mtime_ns
    assert write_tiny_default(tmp_path / "again") == again
    assert (again.adapter_dir / "shadow_adapter.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temp dir left behind
