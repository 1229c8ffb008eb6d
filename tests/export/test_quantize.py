"""int8 / int4 export: block quantization math, validation against the dequantized PyTorch model,
the packed vocabulary stored once, and the torch-free runtime on the result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from artifact_edits import scale_initializer
from manifest_checks import assert_validated
from shadow_edge.core import ShadowModel, StepInputs, load_spec
from shadow_edge.errors import ExportError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export import validate_arithmetic
from shadow_edge.export.artifact import quantized_spec
from shadow_edge.export.validate_arithmetic import INT8_ARITHMETIC_RTOL, TWIN_SUFFIX, validate_int8
from shadow_edge.export.quantize import quantize_as_recorded, quantize_rows
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_rows_round_trip_and_packing(bits):
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    q = quantize_rows(w, bits, 32)
    deq = q.dequantize()
    assert q.packed.shape == (6, 2, 32 * bits // 8) and q.scales.shape == (6, 2)
    step = torch.from_numpy(q.scales).repeat_interleave(32, dim=1)
    assert ((w - deq).abs() <= step / 2 + 1e-7).all()  # rounding error at most half a step
    u = q.packed.reshape(6, -1)
    if bits == 4:  # low nibble first
        u = np.stack([u & 15, u >> 4], axis=-1).reshape(6, -1)
    values = (u.astype(np.int32) - 2 ** (bits - 1)) * np.repeat(q.scales, 32, axis=1)
    np.testing.assert_array_equal(values.astype(np.float32), deq.numpy())


@pytest.fixture(scope="module")
def quantized(cases, tmp_path_factory):
    root, done = tmp_path_factory.mktemp("quant"), {}

    def get(name: str, scheme: str, compute: str = "float32"):
        if (name, scheme, compute) not in done:
            case = cases(name)
            out = root / f"{name}-{scheme}-{compute}"
            export_artifact(case.base_dir, case.adapter_dir, out, case.shadow_model_dir,
                            options=ExportOptions(quantize=scheme, quant_compute=compute), progress=lambda s: None)
            done[name, scheme, compute] = (case, out)
        return done[name, scheme, compute]

    return get


def _forward_error(case, art, scheme, block: int | None = None) -> tuple[float, float]:
    """Max |runtime logits - dequantized PyTorch logits| on real positions, and max |reference| (the reference
    dequantized in the artifact's own blocks unless `block` is given)."""
    record = dict(read_manifest(art).model["quantization"], **({"block_size": block} if block else {}))
    assert record["scheme"] == scheme
    spec = quantize_as_recorded(load_spec(case.base_dir, case.adapter_dir, case.shadow_model_dir), record)
    ids = torch.randint(0, spec.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    rt = ShadowRuntime.load(art, threads=1)
    err = scale = 0.0
    for mode in ("shadow_only", "base_shadow"):
        ref, _ = ShadowModel(spec).forward(StepInputs.full(ids, mask), mode)
        ours = rt.forward(ids.numpy(), mask.numpy(), mode=mode)
        real = mask.bool().numpy()
        err = max(err, float(np.abs(ours - ref.numpy())[real].max()))
        scale = max(scale, float(np.abs(ref.numpy())[real].max()))
    assert len(rt.generate(ids[0].tolist(), mode="base_shadow", max_new_tokens=4).token_ids) == 4
    return err, scale


@pytest.mark.parametrize("name", ["qwen3_implicit", "qwen3_explicit", "llama_untied"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_export_validates_and_runs(quantized, name, scheme):
    """float32 arithmetic on quantized weights: exact against the dequantized model."""
    case, art = quantized(name, scheme)
    m = read_manifest(art)
    assert_validated(m)
    assert m.quantization == scheme
    assert m.model["quantization"]["scheme"] == scheme
    ops = {n.op_type for g in m.graphs.values() for n in onnx.load(str(art / g.file), load_external_data=False).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
    err, _ = _forward_error(case, art, scheme)
    assert err <= 1e-4


def test_int8_arithmetic_is_validated_within_its_rounding(quantized):
    """The default (fast) int8-activation arithmetic, accuracy_level 4: the graphs validated exactly (1e-4) through
    float32-arithmetic twins, then the int8 graphs within a relative RMS error of the twins; no twin left behind."""
    case, art = quantized("qwen3_implicit", "int4", "int8")
    m = read_manifest(art)
    assert m.model["quantization"]["compute"] == "int8"
    v = assert_validated(m, atol=1e-4)
    assert set(v["int8_arithmetic"]) == set(v["outputs"]) - {"draft_head.logits"}
    assert all(0 < r["rel_rms"] <= INT8_ARITHMETIC_RTOL for r in v["int8_arithmetic"].values())  # int8 rounds
    levels = {a.i for g in m.graphs.values() for n in onnx.load(str(art / g.file), load_external_data=False).graph.node
              if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    assert not list(art.glob(f"*{TWIN_SUFFIX}"))
    err, scale = _forward_error(case, art, "int4")
    assert err <= 5e-2 * max(1.0, scale)


@pytest.mark.parametrize("method", ["full", "streamed"])
def test_int8_export_catches_a_small_graph_error_and_names_the_arithmetic_fix(cases, tmp_path, monkeypatch, method):
    """A 2% error in one adapter weight is far inside int8 rounding's per-element noise, yet the float32 twins
    catch it at 1e-4; int8 arithmetic past its bound is one error naming the fix, and nothing is left behind."""
    case = cases("qwen3_implicit")
    art = tmp_path / "art"
    options = ExportOptions(quantize="int4", validate=False)
    m = export_artifact(case.base_dir, case.adapter_dir, art, progress=lambda s: None, options=options)
    model = ShadowModel(quantized_spec(load_spec(case.base_dir, case.adapter_dir), options).loaded())
    assert validate_int8(art, model, m.graphs, m.modes, "int4", method, 1e-4, model.spec.vocab_size)
    scale_initializer(art, "backbone.onnx", "adapter.0.inject_down", 1.02)
    with pytest.raises(ExportError, match=r"validation against PyTorch failed.*: .*backbone"):
        validate_int8(art, model, m.graphs, m.modes, "int4", method, 1e-4, model.spec.vocab_size)
    assert not list(art.glob(f"*{TWIN_SUFFIX}"))
    monkeypatch.setattr(validate_arithmetic, "INT8_ARITHMETIC_RTOL", 1e-9)
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match=r"int8 activation arithmetic .* relative RMS error .*--quant-compute "
                                          r"float32 .* a smaller --block-size"):
        export_artifact(case.base_dir, case.adapter_dir, out, progress=lambda s: None,
                        options=ExportOptions(quantize="int4", validation=method))
    assert not out.exists()


def test_packed_vocabulary_is_stored_once_and_artifact_shrinks(quantized, cases):
    _, art = quantized("qwen3_implicit", "int4")
    fp32 = cases("qwen3_implicit")
    m = read_manifest(art)
    slots = {}
    for g in m.graphs.values():
        for t in onnx.load(str(art / g.file), load_external_data=False).graph.initializer:
            loc = {e.key: e.value for e in t.external_data}
            if t.name.startswith("model.embed_tokens.weight") and "location" in loc:
                slots.setdefault(t.name.rsplit(".", 1)[-1], set()).add((loc["location"], loc["offset"]))
    assert slots["quantized_rows"] == slots["quantized"], "embedding rows and head blocks share one stored copy"
    assert slots["row_scales"] == slots["scales"]
    weights = sum(e["bytes"] for n, e in m.files.items() if n.endswith(".data"))
    assert weights < sum(p.stat().st_size for p in fp32.base_dir.glob("*.safetensors")) / 2


def test_bad_block_size_is_refused():
    with pytest.raises(ExportError, match="--block-size 24"):
        ExportOptions(quantize="int4", block_size=24)


def test_default_block_per_scheme():
    """int8 defaults to blocks of 16 (SmolLM2: every mode within 1% perplexity), int4 to 32; an explicit size wins."""
    assert ExportOptions(quantize="int8").block_size == 16 and ExportOptions(quantize="int4").block_size == 32
    assert ExportOptions(quantize="int8", block_size=64).block_size == 64


@pytest.mark.parametrize("scheme, compute", [("int8", "int8"), ("int4", "float32")])
def test_larger_blocks_validate_and_generate(cases, tmp_path, scheme, compute):
    """--block-size 64 (fewer scales, faster kernels: benchmarks/profile/matmulnbits_kernels.py): every quantized op carries
    it, the artifact matches the model dequantized in blocks of 64 within its compute's tolerance, and greedy
    generation equals the dequantized reference's."""
    case = cases("qwen3_implicit")
    art = tmp_path / f"{scheme}-b64"
    export_artifact(case.base_dir, case.adapter_dir, art, options=ExportOptions(
        quantize=scheme, block_size=64, quant_compute=compute), progress=lambda s: None)
    m = read_manifest(art)
    assert_validated(m)
    assert m.model["quantization"]["block_size"] == 64
    blocks = {a.i for g in m.graphs.values() for n in onnx.load(str(art / g.file), load_external_data=False).graph.node
              if n.op_type in ("MatMulNBits", "GatherBlockQuantized") for a in n.attribute if a.name == "block_size"}
    assert blocks == {64}
    err, scale = _forward_error(case, art, scheme, block=64)
    assert err <= (5e-2 * max(1.0, scale) if compute == "int8" else 1e-4)
    if compute == "float32":
        from shadow_edge.core.greedy import greedy_generate

        spec = quantize_as_recorded(load_spec(case.base_dir, case.adapter_dir, case.shadow_model_dir),
                                    m.model["quantization"])
        prompt = [3, 1, 4, 1, 5]
        ours = ShadowRuntime.load(art, threads=1).generate(prompt, mode="base_shadow", max_new_tokens=8)
        ref = greedy_generate(ShadowModel(spec), torch.tensor([prompt]), None, "base_shadow", 8)
        assert list(ours.token_ids) == ref[0].tolist()
