"""Adapter packs beyond float32 and the runtime: int8/int4 packs equal their full artifacts, a pack with trained
heads is refused, and `shadow-edge bench --adapter` times each pack beside the artifact's own adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
from transformers import AutoModelForCausalLM

from factories import randomize_adapter
from manifest_checks import assert_validated
from pack_fixtures import QUIET, families, make_adapter, tiny_family  # noqa: F401  (fixtures)
from shadow_edge.bench import BenchOptions, run_bench
from shadow_edge.cli import main
from shadow_edge.errors import ExportError
from shadow_edge.export.options import INT8_COMPUTE_ATOL
from shadow_edge.export import ExportOptions, export_artifact, export_pack
from shadow_edge.runtime import ShadowRuntime

PROMPTS = [[5, 6, 7, 8, 9], [11, 3]]


def quantized_family(case, root, scheme: str, compute: str, shadow_scheme: str = "symmetric"):
    """(runtime of a quantized base + pack "other", runtime of "other" as a full artifact, pack manifest)."""
    q = dict(quantize=scheme, quant_compute=compute, shadow_quant_scheme=shadow_scheme, validate=False)
    base_art, pack, full = root / "base", root / "pack", root / "full"
    export_artifact(case.base_dir, case.adapter_dir, base_art, options=ExportOptions(as_base=True, **q), **QUIET)
    other = make_adapter(case, root / "adapter", 5)
    manifest = export_pack(case.base_dir, other, pack, base_art, **QUIET)  # validated through the runtime vs PyTorch
    export_artifact(case.base_dir, other, full, options=ExportOptions(**q), **QUIET)
    return (ShadowRuntime.load(base_art, threads=1, adapters={"other": pack}), ShadowRuntime.load(full, threads=1),
            manifest)


def logits_pair(rt, ref, vocab: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(1).integers(0, vocab, size=(2, 7))  # [2, 7]
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    real = mask.astype(bool)
    return rt.forward(ids, mask, mode=mode, adapter="other")[real], ref.forward(ids, mask, mode=mode)[real]


@pytest.mark.parametrize("scheme,shadow_scheme", [("int8", "symmetric"), ("int4", "symmetric"),
                                                  ("int4", "asymmetric"), ("int4", "zero-point")])
def test_quantized_pack_equals_its_full_quantized_artifact(cases, tmp_path, scheme, shadow_scheme):
    """float32 arithmetic on the quantized weights: base + pack is the full artifact, bit for bit (the shadow's
    layers in any scheme: asymmetric blocks add float32 offsets per block to the pack, zero-point blocks their
    zero points)."""
    case = cases("qwen3_implicit")
    rt, ref, _ = quantized_family(case, tmp_path, scheme, "float32", shadow_scheme)
    assert rt.manifest.quantization == ref.manifest.quantization == scheme
    for mode in ("shadow_only", "base_shadow"):
        ours, want = logits_pair(rt, ref, case.vocab_size, mode)
        np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)
        own = rt.forward([[5, 6, 7]], mode=mode)
        assert np.abs(rt.forward([[5, 6, 7]], mode=mode, adapter="other") - own).max() > 1e-3  # the pack is used
    for mode in rt.modes:
        got = rt.generate(PROMPTS, mode=mode, adapter="other", max_new_tokens=6)
        assert got.token_ids == ref.generate(PROMPTS, mode=mode, max_new_tokens=6).token_ids, mode


@pytest.mark.parametrize("shadow_scheme", ["symmetric", "asymmetric", "zero-point"])
def test_int8_arithmetic_pack_equals_its_full_artifact(cases, tmp_path, shadow_scheme):
    """int8 activations (the default): onnxruntime runs its int8 kernels only on weights it prepacks, i.e.
    constant ones. A pack's shadow weights are constants of the pack's own session (runtime/pack_sessions.py),
    so the pack is its full artifact here too (fed weights would run float32 kernels: only within the int8
    tolerance); the backbone's fed slots are float32 weights, the same kernels either way."""
    case = cases("qwen3_implicit")
    rt, ref, manifest = quantized_family(case, tmp_path, "int4", "int8", shadow_scheme)
    assert_validated(manifest, atol=INT8_COMPUTE_ATOL)
    for mode in ("shadow_only", "base_shadow"):
        ours, want = logits_pair(rt, ref, case.vocab_size, mode)
        np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)
        got = rt.generate(PROMPTS, mode=mode, adapter="other", max_new_tokens=6)
        assert got.token_ids == ref.generate(PROMPTS, mode=mode, max_new_tokens=6).token_ids, mode


def test_a_pack_with_trained_heads_is_refused(cases, families, tmp_path):
    """modules_to_save=["lm_head", "shadow_lm_head"]: the heads are vocabulary-sized and shared by every pack."""
    fam = families("qwen3_implicit")
    case = fam.case
    base = AutoModelForCausalLM.from_pretrained(case.base_dir)
    model = ShadowForCausalLM(get_shadow_model(base, ShadowConfig(
        num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=6, modules_to_save=["shadow_lm_head"])))
    randomize_adapter(model.peft_model, 3)
    with torch.no_grad():
        model.shadow_lm_head.weight.add_(0.3 * torch.randn_like(model.shadow_lm_head.weight))
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ExportError, match=r"its vocabulary heads \(lm_head / shadow_lm_head\) differ from the base "
                                          r"artifact .*needs a full artifact"):
        export_pack(case.base_dir, tmp_path / "adapter", tmp_path / "pack", fam.base_art, **QUIET)
    assert not (tmp_path / "pack").exists()


def test_bench_times_each_pack_beside_the_own_adapter(tiny_family, monkeypatch, tmp_path, capsys):
    calls = []
    generate = ShadowRuntime.generate

    def spy(self, *args, **kwargs):
        calls.append((kwargs["mode"], kwargs.get("adapter")))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(ShadowRuntime, "generate", spy)
    packs = tuple(tiny_family.packs.items())  # support, sql
    records = run_bench(tiny_family.base_art, BenchOptions(
        modes=("shadow_only", "base_shadow"), prompt_len=4, new_tokens=3, reps=2, warmup=0, threads=1,
        bandwidth_mib=0, adapters=packs), progress=lambda m: None)
    assert [(r["mode"], r["adapter"]) for r in records] == [(m, a) for m in ("shadow_only", "base_shadow")
                                                           for a in (None, "support", "sql")]
    assert calls == [(m, a) for m in ("shadow_only", "base_shadow") for _ in range(2) for a in (None, "support", "sql")]
    for r in records:
        want = None if r["adapter"] is None else json.loads(
            (tiny_family.packs[r["adapter"]] / "manifest.json").read_text())["files"]["adapter.onnx_adapter"]["bytes"]
        assert r["adapter_bytes"] == want and r["reps"] == 2 and r["decode_steps"] == 2 * 2
    out = tmp_path / "b.json"
    assert main(["bench", str(tiny_family.base_art), "--adapter", f"support={tiny_family.packs['support']}",
                 "--modes", "base_shadow", "--prompt-len", "4", "--new-tokens", "2", "--reps", "1", "--warmup", "0",
                 "--threads", "1", "--bandwidth-mib", "0", "--json", str(out)]) == 0
    assert "base_shadow @support" in capsys.readouterr().err
    assert [r["adapter"] for r in json.loads(out.read_text())["records"]] == [None, "support"]
    assert main(["bench", str(tiny_family.base_art), "--adapter", "support", "--bandwidth-mib", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected NAME=PACK" in err and len(err.splitlines()) == 1
