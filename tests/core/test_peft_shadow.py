"""HF PEFT Shadow adapters against peft itself: the reference model and the exported runtime.

Oracles: peft's attached model loaded from disk (base_shadow) and the detached model from
`unload_shadow()` (shadow_only). Every case: logits within 1e-4 on a full and a left-padded
batch, KV-cached steps equal the full forward, greedy tokens equal for 16 tokens, and the
export (validated against PyTorch) runs in every runtime mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manifest_checks import assert_validated
from peft_factories import PEFT_CASE_NAMES
from shadow_edge.core import StepInputs
from shadow_edge.core.lazy_tensor import dense
from shadow_edge.core.model import position_ids_from_mask
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.runtime import ShadowRuntime

MODES = ("shadow_only", "base_shadow")
TOL = 1e-4
_ARTIFACTS: dict[str, tuple] = {}


@pytest.fixture(params=PEFT_CASE_NAMES)
def case(request, peft_cases):
    return peft_cases(request.param)


@pytest.fixture
def exported(case, tmp_path_factory):
    """(manifest, runtime) of the case, exported once per session with validation on."""
    if case.name not in _ARTIFACTS:
        out = tmp_path_factory.getbasetemp() / f"peft_art_{case.name}"
        manifest = export_artifact(case.base_dir, case.adapter_dir, out, shadow_model=case.shadow_model_dir,
                                   options=ExportOptions(), progress=lambda m: None)
        _ARTIFACTS[case.name] = manifest, ShadowRuntime.load(out, threads=1)
    return _ARTIFACTS[case.name]


def left_padded(vocab: int, lengths: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, n in enumerate(lengths):
        ids[row, : width - n], mask[row, : width - n] = 0, 0
    return ids, mask


@torch.no_grad()
def oracle_logits(case, mode, ids, mask) -> torch.Tensor:
    return case.oracle(mode)(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


@torch.no_grad()
def oracle_greedy(case, mode, ids, mask, n: int) -> list[list[int]]:
    """Greedy tokens by full recomputation of the oracle (no cache involved)."""
    new = []
    for _ in range(n):
        nxt = oracle_logits(case, mode, ids, mask)[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(new, 1).tolist()


def real_diff(a, b, mask) -> float:
    real = torch.as_tensor(mask).bool()
    return (torch.as_tensor(a)[real] - torch.as_tensor(b)[real]).abs().max().item()


@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_peft(case, mode):
    for lengths, seed in (((9, 9), 0), ((8, 5), 1)):
        ids, mask = left_padded(case.vocab_size, lengths, seed)
        ours, _ = case.model().forward(StepInputs.full(ids, mask), mode)
        assert torch.isfinite(ours).all()
        assert real_diff(ours, oracle_logits(case, mode, ids, mask), mask) <= TOL


def test_adapter_is_active(case):
    """Guards the oracle comparison: the randomized adapter moves the logits far from the plain base."""
    ids, mask = left_padded(case.vocab_size, (7,), 2)
    with torch.no_grad(), case.oracle("base_shadow").disable_adapter():
        plain = oracle_logits(case, "base_shadow", ids, mask)
    assert real_diff(oracle_logits(case, "base_shadow", ids, mask), plain, mask) > 1e-2


@pytest.mark.parametrize("mode", MODES)
def test_cached_steps_match_full(case, mode):
    ids, mask = left_padded(case.vocab_size, (8, 6), 3)
    pos = position_ids_from_mask(mask)
    model = case.model()
    full, _ = model.forward(StepInputs(ids, mask, pos), mode)
    logits, past = model.forward(StepInputs(ids[:, :3], mask[:, :3], pos[:, :3]), mode)
    steps = [logits]
    for t in range(3, ids.shape[1]):
        logits, past = model.forward(StepInputs(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1]), mode, past=past)
        steps.append(logits)
    assert real_diff(torch.cat(steps, 1), full, mask) <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_runtime_matches_peft(case, exported, mode):
    manifest, rt = exported
    assert_validated(manifest)
    assert manifest.model["adapter_variant"] == "peft-shadow"
    ids, mask = left_padded(case.vocab_size, (8, 5), 4)
    ours = rt.forward(ids.numpy(), mask.numpy(), mode=mode)
    assert np.isfinite(ours).all() and real_diff(ours, oracle_logits(case, mode, ids, mask), mask) <= TOL
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]  # the runtime left-pads them itself
    out = rt.generate(prompts, mode=mode, max_new_tokens=16)
    assert out.token_ids == oracle_greedy(case, mode, ids, mask, 16)


def test_runtime_cascade_runs(case, exported):
    _, rt = exported
    ids, mask = left_padded(case.vocab_size, (6, 3), 5)
    out = rt.generate([row[m.bool()].tolist() for row, m in zip(ids, mask)], mode="cascade", max_new_tokens=4)
    assert [len(row) for row in out.token_ids] == [4, 4]


def test_spec_reads_what_peft_built(peft_cases):
    """The parts each config asks for are where peft puts them."""
    facts = {name: peft_cases(name).model().spec for name in PEFT_CASE_NAMES}
    assert all(s.variant.name == "peft-shadow" and s.alpha > 0 for s in facts.values())
    assert facts["qwen3_mirror1"].adapted_range == range(0, 4)  # layers_to_transform ignored, as by peft
    assert facts["llama_subset"].adapted_range == range(1, 3)
    assert facts["qwen3_mirror1"].shadow.embed is None and facts["qwen3_mirror1"].projection is None
    own = facts["llama_mirror2_own_embed"]
    assert own.shadow.embed is not None and own.shadow.config.num_layers == 2 and own.alpha == pytest.approx(0.3)
    assert own.lm_head is own.shadow_lm_head and not torch.equal(dense(own.lm_head), dense(own.base.embed))
    for name in ("qwen3_narrow", "qwen3_pretrained", "qwen3_projected"):
        assert facts[name].shadow.config.hidden_size == 32 and tuple(facts[name].projection.shape) == (64, 32)
    assert facts["qwen3_narrow"].gate_in.shape[1] == 5 and facts["qwen3_narrow"].injection_down.shape[-1] == 8


def test_quantized_export_is_validated(peft_cases, tmp_path):
    case = peft_cases("llama_subset")
    manifest = export_artifact(case.base_dir, case.adapter_dir, tmp_path / "q", options=ExportOptions(quantize="int4", quant_compute="float32"),
                               progress=lambda m: None)
    assert_validated(manifest)
    assert manifest.model["quantization"]["scheme"] == "int4"
    rt = ShadowRuntime.load(tmp_path / "q", threads=1)
    assert len(rt.generate([1, 2, 3], mode="base_shadow", max_new_tokens=3).token_ids) == 3
