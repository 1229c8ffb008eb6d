"""Speculative decoding on quantized artifacts: the documented tolerance, pinned.

A verify pass computes k + 1 positions in one product; base_shadow decodes one position at a
time. float32 kernels agree to ~1e-6, and so do int4 kernels with float32 arithmetic
(`quant_compute="float32"`): greedy output is identical. With int8 activation arithmetic (the
default `quant_compute="int8"`) the float32 attention kernel's last-bit difference between a
position among several and the same position alone tips int8 activation roundings, and the
gap grows layer by layer (max logit difference 0.025 on the `small` preset, 0.042 on W1,
1.5e-5 on the tiny test model, up to 1.1 on the SmolLM2 int4 pair: docs/speculative.md), so
the documented behavior there is: greedy speculative output equals
base_shadow's up to the first step whose top-2 logit gap under base_shadow is at most twice
the largest verify-vs-decode logit difference (a near-tie), and may differ from there on.
These tests measure that difference and check both rules.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.generate import decode_one, prefill

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 1, 4, 1, 5, 9, 2, 6], [42, 17, 8]]


@pytest.fixture(scope="module")
def quantized_rt(tiny_default, tmp_path_factory):
    root, done = tmp_path_factory.mktemp("spec_quant"), {}

    def get(scheme: str, compute: str) -> ShadowRuntime:
        if (scheme, compute) not in done:
            out = root / f"{scheme}-{compute}"
            export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out, progress=lambda s: None,
                            options=ExportOptions(quantize=scheme, quant_compute=compute, validate=False))
            done[scheme, compute] = ShadowRuntime.load(out, threads=1)
        return done[scheme, compute]

    return get


def decode_logits(rt, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """base_shadow's logits [len(tokens) + 1, V] after the prompt and after each token, one position per step."""
    pipe = rt.pipeline("base_shadow")
    mask = np.ones((1, len(prompt)), np.int64)
    logits, caches, pos = prefill(pipe, np.array([prompt]), mask, capacity=len(prompt) + len(tokens) + 1)
    rows = [logits[0]]
    for j, t in enumerate(tokens):
        mask = np.ones((1, mask.shape[1] + 1), np.int64)
        logits, caches = decode_one(pipe, np.array([t]), mask, pos + j, caches)
        rows.append(logits[0])
    return np.stack(rows)


def verify_logits(rt, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """base_shadow's logits [len(tokens), V] after each token, from one multi-position pass (as verify runs)."""
    pipe = rt.pipeline("base_shadow")
    logits, caches, pos = prefill(pipe, np.array([prompt]), np.ones((1, len(prompt)), np.int64),
                                  capacity=len(prompt) + len(tokens) + 1)
    mask = np.ones((1, len(prompt) + len(tokens)), np.int64)
    return pipe.step(np.array([tokens]), mask, pos[:, None] + np.arange(len(tokens)), caches, last_only=False)[0]


def verify_decode_gap(rt) -> float:
    """Largest |multi-position - one-position| logit difference over the prompts' next 8 tokens."""
    worst = 0.0
    for prompt in PROMPTS:
        tokens = rt.generate(prompt, mode="base_shadow", max_new_tokens=8, eos=()).token_ids
        gap = verify_logits(rt, prompt, tokens) - decode_logits(rt, prompt, tokens)[1:]  # after each token
        worst = max(worst, float(np.abs(gap).max()))
    return worst


@pytest.mark.parametrize("scheme,compute", [("none", "float32"), ("int4", "float32"), ("int4", "int8")])
def test_greedy_equals_base_shadow_up_to_a_near_tie(quantized_rt, scheme, compute):
    rt = quantized_rt(scheme, compute)
    delta = verify_decode_gap(rt)
    exact = compute == "float32"  # float32 arithmetic: identical output
    if exact:
        assert delta < 1e-4
    for prompt in PROMPTS:
        for k in (1, 3):
            base = rt.generate(prompt, mode="base_shadow", max_new_tokens=24, eos=()).token_ids
            spec = rt.generate(prompt, mode="speculative", max_new_tokens=24, draft_tokens=k, eos=()).token_ids
            if spec == base:
                continue
            assert not exact, f"{scheme}/{compute}: speculative differs from base_shadow: {spec} vs {base}"
            i = next(j for j, (a, b) in enumerate(zip(spec, base)) if a != b)
            top2 = np.sort(decode_logits(rt, prompt, base[:i])[-1])[-2:]
            assert top2[1] - top2[0] <= 2 * delta, (i, top2, delta)


@pytest.mark.parametrize("scheme,compute", [("none", "float32"), ("int4", "int8")])
def test_the_verify_rows_suite_compares_the_bound_passes(quantized_rt, scheme, compute, tmp_path):
    """benchmarks.suites.verify_rows compares the bound verify pass speculative rounds run with the bound one-position
    step plain decoding runs, position by position: on float32 arithmetic they agree to 1e-4 and choose the same
    tokens; with int8 activations a token may differ only where the step's top-2 gap is within the difference.
    --first-node names the step graph's first nodes whose output differs between the two (possibly none)."""
    import json

    from benchmarks.suites import verify_rows

    rt = quantized_rt(scheme, compute)
    rows = verify_rows.compare(rt, PROMPTS[0], 6)
    assert [r["position"] for r in rows] == list(range(6))
    if compute == "float32":
        assert max(r["max_abs_diff"] for r in rows) < 1e-4 and all(r["same_token"] for r in rows)
    assert all(r["same_token"] or r["top2_gap"] <= 2 * r["max_abs_diff"] for r in rows)
    out = tmp_path / "rows.json"
    assert verify_rows.main(["--artifact", str(rt.art_dir), "--positions", "3", "--threads", "1", "--first-node",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())[str(rt.art_dir)]
    assert result["arithmetic"] == compute and len(result["positions"]) == 3
    ops = {n.op_type for n in onnx.load(str(rt.step_graph("base_shadow").path), load_external_data=False).graph.node}
    assert all(d["op"] in ops and d["max_abs_diff"] > 0 for d in result["first_nodes"])  # graph order, differing
