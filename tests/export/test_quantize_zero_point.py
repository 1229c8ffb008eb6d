"""Zero-point int4/int8 blocks (an integer zero point per block, MatMulNBits' and GatherBlockQuantized's own input):
the rounding, the packed zero points against the ops, a tiny-model export per weight group, and its record."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from manifest_checks import assert_validated
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export.graphs import Tensors
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.export.quantize import ZERO_POINT, Dequantized, dequantized_rows, quantize_rows
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime.session import session_options
from tests.export.test_quantize_asymmetric import _logits_error


@pytest.mark.parametrize("bits", [4, 8])
def test_zero_point_rounding_is_half_a_step_and_zero_stays_exact(bits):
    """Rows of every sign pattern (all positive, all negative, mixed), three blocks per row (an odd count: the
    last 4-bit zero point sits alone in its byte): within half a step, 0 exactly representable, the dequantized
    values those of the validation reference, the zero points packed low nibble first."""
    w = torch.randn(6, 96, generator=torch.Generator().manual_seed(5)) * 0.1
    w[0] += 1.0  # every value positive: the range still holds 0, so z = 0
    w[1] -= 1.0  # every value negative: z = 2^bits - 1
    w[2, :32] = 0.0  # an all-zero block
    q = quantize_rows(w, bits, 32, ZERO_POINT)
    deq = q.dequantize()
    step = torch.from_numpy(q.scales).repeat_interleave(32, dim=1)
    assert ((w - deq).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(deq, dequantized_rows(w, bits, 32, ZERO_POINT))
    assert (q.zero_points[0] == 0).all() and (q.zero_points[1] == 2 ** bits - 1).all()
    assert (deq[2, :32] == 0).all()
    z, packed = q.zero_points, q.packed_zero_points
    if bits == 8:
        assert np.array_equal(packed, z)
    else:
        assert packed.shape == (6, 2)
        assert np.array_equal(packed[:, 0], z[:, 0] | (z[:, 1] << 4)) and np.array_equal(packed[:, 1], z[:, 2])


@pytest.mark.parametrize("bits, key", [(4, "w"), (8, "w"), (4, "shadow.layers.0.w")])
def test_matmul_and_embedding_zero_points_match_numpy(tmp_path, bits, key):
    """MatMulNBits and GatherBlockQuantized with the packed zero points against numpy's x @ W.T and W[ids] on the
    weight dequantized by hand from the stored codes, scales and zero points; no offsets path, no casts."""
    n, k = 40, 96
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(2)) * 0.1 + 0.05
    t = Dequantized(w, bits, 32, ZERO_POINT)
    q = t.quantized()
    codes = q.packed if bits == 8 else np.stack([q.packed & 15, q.packed >> 4], axis=-1).reshape(n, k // 32, 32)
    deq = ((codes.astype(np.float32) - q.zero_points[..., None]) * q.scales[..., None]).reshape(n, k)
    tensor = lambda name, dtype, shape: SimpleNamespace(name=name, dtype=dtype, shape=shape)  # noqa: E731
    contract = SimpleNamespace(name="g", inputs=[tensor("x", "float32", ["b", "s", k]),
                                                 tensor("input_ids", "int64", ["b", "s"])],
                               outputs=[tensor("y", "float32", ["b", "s", n]), tensor("e", "float32", ["b", "s", k])])
    store, names = WeightStore(), Tensors(accuracy_level=1)
    b = GraphBuilder(contract, store)
    b.output(names.head(b, "x", t, key), "y")
    b.output(names.embed(b, t, key, "input_ids"), "e")
    store.write(tmp_path, ["g"])
    onnx.save_model(b.to_model(), str(tmp_path / "g.onnx"))
    ops = {nd.op_type: len(nd.input) for nd in b.nodes}
    assert ops == {"MatMulNBits": 4, "GatherBlockQuantized": 4}
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, k)).astype(np.float32)
    ids = rng.integers(0, n, (2, 5))
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    got_y, got_e = sess.run(["y", "e"], {"x": x, "input_ids": ids})
    np.testing.assert_allclose(got_y, x @ deq.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_e, deq[ids], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shadow_scheme, vocab", [(None, None), ("asymmetric", "int4")])
def test_zero_point_export_records_each_group_and_validates(cases, tmp_path, shadow_scheme, vocab):
    """--quant-scheme zero-point: the base's layers (and the shadow's, which follow; or asymmetric ones beside
    them) with their zero points, recorded in the manifest, validated, equal to the reference; no offsets path on a
    zero-point weight; with --vocab-quantize int4 the vocabulary's blocks are zero-point too."""
    case = cases("qwen3_implicit")
    art = tmp_path / "zp"
    export_artifact(case.base_dir, case.adapter_dir, art, options=ExportOptions(
        quantize="int4", quant_compute="float32", quant_scheme=ZERO_POINT, shadow_quant_scheme=shadow_scheme,
        vocab_quantize=vocab), progress=lambda s: None)
    m = read_manifest(art)
    assert_validated(m)
    record = m.model["quantization"]
    assert (record["base_layers"], record["shadow_layers"]) == (ZERO_POINT, shadow_scheme or ZERO_POINT)
    assert record["vocabulary"] == ("int4 zero-point" if vocab else "int8 symmetric")
    graphs = [onnx.load(str(art / g.file), load_external_data=False).graph for g in m.graphs.values()]
    matmuls = {n.input[1]: len(n.input) for g in graphs for n in g.node if n.op_type == "MatMulNBits"}
    base = {w: n for w, n in matmuls.items() if ".layers." in w and not w.startswith("shadow.")}
    assert base and set(base.values()) == {4}  # x, codes, scales, zero points
    minima = {t.name.split(".")[0] for g in graphs for t in g.initializer if t.name.endswith((".mins_f16", ".offsets"))}
    assert minima == ({"shadow"} if shadow_scheme == "asymmetric" else set())  # the offsets path: asymmetric only
    assert _logits_error(case, art) <= 1e-4
