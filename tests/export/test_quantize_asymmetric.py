"""Asymmetric (min/max, Q4_1-form) int4 blocks: exact on a llama.cpp Q4_1 grid, the graph's offsets path against
numpy, tiny-model exports per weight group, the manifest's record, and artifacts from before the schemes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from manifest_checks import assert_validated
from shadow_edge.core import ShadowModel, StepInputs, load_spec
from shadow_edge.errors import ExportError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export.graphs import Tensors
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.export.quantize import ASYMMETRIC, Dequantized, quantize_as_recorded, quantize_rows
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.session import session_options


def _q4_1(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A weight [rows, cols] quantized to Q4_1 by the gguf package (llama.cpp's reference) and dequantized as
    transformers / our GGUF reader do, with its blocks' d, m [rows, cols/32] and codes [rows, cols]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    x[: rows // 2] += 0.2  # one-sided blocks (every value > 0): the minimum is not near zero
    raw = quants.quantize(x, GGMLQuantizationType.Q4_1).reshape(rows, cols // 32, 20)  # d f16, m f16, 16 nibbles
    d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    nib = raw[..., 4:]
    codes = np.concatenate([nib & 15, nib >> 4], axis=-1).reshape(rows, cols)  # first 16 low, next 16 high
    w = quants.dequantize(raw.reshape(rows, -1), GGMLQuantizationType.Q4_1)
    return w, d, m, codes


def _codes(packed: np.ndarray) -> np.ndarray:
    """Our packed int4 [N, K/block, block/2] -> codes [N, K] (low nibble first)."""
    return np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)


def test_asymmetric_int4_keeps_a_q4_1_grid_exactly():
    """A GGUF's Q4_1 weight, dequantized, comes back with llama.cpp's own codes, scales and minima to the bit,
    and its values to float32 rounding; symmetric blocks move it by a large share of a step."""
    w, d, m, codes = _q4_1(8, 128, seed=0)
    q = quantize_rows(torch.from_numpy(w), 4, 32, ASYMMETRIC)
    np.testing.assert_array_equal(q.scales, d)
    np.testing.assert_array_equal(q.mins, m)
    np.testing.assert_array_equal(_codes(q.packed), codes)
    step = np.repeat(d, 32, axis=1)
    assert np.abs(q.dequantize().numpy() - w).max() <= 4 * np.finfo(np.float32).eps * np.abs(w).max()
    sym = quantize_rows(torch.from_numpy(w), 4, 32).dequantize().numpy()
    assert (np.abs(sym - w) / step).max() > 0.3


def test_asymmetric_rounding_error_is_half_a_step_on_any_weight():
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(1)) * 3 + 1
    q = quantize_rows(w, 4, 32, ASYMMETRIC)
    step = torch.from_numpy(q.scales).repeat_interleave(32, dim=1)
    assert ((w - q.dequantize()).abs() <= step / 2 + 1e-6).all()
    assert np.array_equal(q.scales.astype(np.float16).astype(np.float32), q.scales)  # stored as float16
    assert np.array_equal(q.mins.astype(np.float16).astype(np.float32), q.mins)


def test_asymmetric_out_of_float16_range_is_refused():
    with pytest.raises(ExportError, match="exceeds float16.*--quant-scheme symmetric"):
        quantize_rows(torch.full((1, 32), 1e6), 4, 32, ASYMMETRIC)


@pytest.mark.parametrize("batch, seq, key", [(1, 1, "w"), (2, 5, "w"), (2, 5, "shadow.layers.0.w")])
def test_matmul_and_embedding_offsets_match_numpy(tmp_path, batch, seq, key):
    """The graph of an asymmetric weight (MatMulNBits on the codes + block sums x offsets; GatherBlockQuantized
    + gathered offsets; float16 scales and minima cast back, or for an adapter's weight, an adapter pack's slot,
    float32 scales and offsets as stored) against numpy's x @ W.T and W[ids] on the weight dequantized from its
    packed codes by hand, float32 arithmetic."""
    n, k = 40, 96
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(2)) * 0.1 + 0.05
    t = Dequantized(w, 4, 32, ASYMMETRIC)
    q = t.quantized()
    deq = ((_codes(q.packed).astype(np.float32).reshape(n, -1, 32) - 8) * q.scales[..., None]
           + (q.mins + 8 * q.scales)[..., None]).reshape(n, k)  # numpy, from the stored parts
    tensor = lambda name, dtype, shape: SimpleNamespace(name=name, dtype=dtype, shape=shape)
    contract = SimpleNamespace(name="g", inputs=[tensor("x", "float32", ["b", "s", k]),
                                                 tensor("input_ids", "int64", ["b", "s"])],
                               outputs=[tensor("y", "float32", ["b", "s", n]), tensor("e", "float32", ["b", "s", k])])
    store, names = WeightStore(), Tensors(accuracy_level=1)
    b = GraphBuilder(contract, store)
    b.output(names.head(b, "x", t, key), "y")  # [b, s, N]
    b.output(names.embed(b, t, key, "input_ids"), "e")  # [b, s, K]: rows of the [N, K] table
    store.write(tmp_path, ["g"])
    onnx.save_model(b.to_model(), str(tmp_path / "g.onnx"))
    assert {"MatMulNBits", "GatherBlockQuantized", "ReduceSum"} <= {nd.op_type for nd in b.nodes}
    adapter = key.startswith("shadow.")  # no Cast: onnxruntime would fold it before a pack's weights replace these
    assert ("Cast" in {nd.op_type for nd in b.nodes}) is not adapter
    assert {f"{key}.scales", f"{key}.offsets"} <= set(b.weights) if adapter else f"{key}.scales_f16" in b.weights
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, seq, k)).astype(np.float32)
    ids = rng.integers(0, n, (batch, seq))
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    got_y, got_e = sess.run(["y", "e"], {"x": x, "input_ids": ids})
    np.testing.assert_allclose(got_y, x @ deq.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_e, deq[ids], rtol=1e-6, atol=1e-7)


def _logits_error(case, art) -> float:
    """Max |runtime logits - PyTorch logits of the model quantized as the manifest records| (both modes)."""
    spec = quantize_as_recorded(load_spec(case.base_dir, case.adapter_dir, case.shadow_model_dir),
                                read_manifest(art).model["quantization"])
    ids = torch.randint(0, spec.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    rt = ShadowRuntime.load(art, threads=1)
    err = 0.0
    for mode in ("shadow_only", "base_shadow"):
        ref, _ = ShadowModel(spec).forward(StepInputs.full(ids, None), mode)
        err = max(err, float(np.abs(rt.forward(ids.numpy(), mode=mode) - ref.numpy()).max()))
    assert len(rt.generate(ids[0].tolist(), mode="base_shadow", max_new_tokens=4).token_ids) == 4
    return err


@pytest.mark.parametrize("vocab", [None, "int4"])
def test_int4_default_records_each_group_and_validates(cases, tmp_path, vocab):
    """--quantize int4: base and shadow layers asymmetric, vocabulary int8 (or --vocab-quantize int4:
    asymmetric too, through the embedding's offsets); recorded in the manifest, validated, equal to the reference."""
    case = cases("qwen3_implicit")
    art = tmp_path / "int4"
    export_artifact(case.base_dir, case.adapter_dir, art, options=ExportOptions(
        quantize="int4", quant_compute="float32", vocab_quantize=vocab), progress=lambda s: None)
    m = read_manifest(art)
    assert_validated(m)
    assert m.model["quantization"] == {"scheme": "int4", "block_size": 32, "compute": "float32",
                                       "base_layers": "asymmetric", "shadow_layers": "asymmetric",
                                       "vocabulary": "int4 asymmetric" if vocab else "int8 symmetric"}
    bits = {n.name.split("/")[1]: a.i for g in m.graphs.values()
            for n in onnx.load(str(art / g.file), load_external_data=False).graph.node
            if n.op_type in ("MatMulNBits", "GatherBlockQuantized") for a in n.attribute if a.name == "bits"}
    assert bits["lm_head"] == (4 if vocab else 8) and bits["embed"] == (4 if vocab else 8)
    assert _logits_error(case, art) <= 1e-4


def test_artifact_from_before_the_schemes_still_loads_and_runs(cases, tmp_path):
    """An int4 artifact as exported before asymmetric blocks (symmetric everywhere, int4 vocabulary; its manifest
    without the per-group record) loads, runs and equals the symmetric reference."""
    case = cases("qwen3_implicit")
    art = tmp_path / "old"
    export_artifact(case.base_dir, case.adapter_dir, art, options=ExportOptions(
        quantize="int4", quant_compute="float32", quant_scheme="symmetric", vocab_quantize="int4"),
        progress=lambda s: None)
    manifest = json.loads((art / "manifest.json").read_text())
    record = manifest["model"]["quantization"]
    for key in ("base_layers", "shadow_layers", "vocabulary"):
        del record[key]
    (art / "manifest.json").write_text(json.dumps(manifest, indent=1))
    graphs = [onnx.load(str(art / g.file), load_external_data=False).graph for g in read_manifest(art).graphs.values()]
    assert any(n.op_type == "MatMulNBits" for g in graphs for n in g.node)
    assert not any(n.name.endswith("block_sums") for g in graphs for n in g.node)  # no offsets path
    assert not any(t.name.endswith("_f16") for g in graphs for t in g.initializer)
    assert _logits_error(case, art) <= 1e-4


def test_scheme_options_are_checked():
    assert ExportOptions(quantize="int8").quant_scheme == ExportOptions(quantize="int8").shadow_quant_scheme == \
        "symmetric"
    assert ExportOptions(quantize="int4").shadow_quant_scheme == "asymmetric"  # follows the base's layers
    assert ExportOptions(quantize="int4", quant_scheme="symmetric").shadow_quant_scheme == "symmetric"
    assert ExportOptions(quantize="int4", shadow_quant_scheme="symmetric").quant_scheme == "asymmetric"
    assert ExportOptions(quantize="int4").vocab_quantize == "int8"
    with pytest.raises(ExportError, match="--quant-scheme 'minmax'"):
        ExportOptions(quantize="int4", quant_scheme="minmax")
    for flag in ("vocab_quantize", "shadow_quant_scheme"):
        with pytest.raises(ExportError, match="apply to quantized exports"):
            ExportOptions(**{flag: "int8" if flag == "vocab_quantize" else "symmetric"})
