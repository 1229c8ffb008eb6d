"""The exported graphs use the fused forms (issue 14), and the decode loop's `DecodeState` binds its buffers once.

The numbers these fusions produce are checked against shadow_peft by test_runtime_parity.py (every
case, both modes, left-padded batches, prefill + decode steps, greedy tokens); here: that those are the
fused graphs, and that reusing the bindings across steps (and rebinding a cache that grew) stays exact.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from runtime_fixtures import artifact_of, runtime_once  # noqa: F401  (fixtures)
import shadow_edge.runtime.session as session_mod
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime.decode_state import DecodeState


def op_counts(art, graph: str) -> Counter:
    model = onnx.load(str(art / f"{graph}.onnx"), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node)


def nodes(art, graph: str) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in onnx.load(str(art / f"{graph}.onnx"), load_external_data=False).graph.node}


@pytest.mark.parametrize("name", ["qwen3_implicit", "llama_untied", "qwen3_explicit"])
def test_graphs_use_the_fused_forms(artifact_of, name):
    case, art = artifact_of(name)
    m = read_manifest(art)
    for graph in ("shadow", "backbone", "backbone_plain"):
        if graph not in m.graphs:
            continue
        ops, layers, by_name = op_counts(art, graph), m.graphs[graph].kv_layers, nodes(art, graph)
        assert ops["RotaryEmbedding"] == layers, "q and k rotated as one tensor of H + KV heads"
        assert ops["Gemm"] == 0
        assert ops["LayerNormalization"] == 0 if graph != "backbone" else ops["LayerNormalization"] > 0
        for i in range(layers):  # the attention residual is added inside the post-attention norm
            assert by_name[f"/layers.{i}/attn_residual"].op_type == "SkipSimplifiedLayerNormalization"
        if graph != "backbone":  # every layer's output is added inside the next norm (the last: the final norm)
            assert {by_name[f"/layers.{i}/mlp_residual"].op_type for i in range(layers)} == \
                {"SkipSimplifiedLayerNormalization"}
    by_name = nodes(art, "backbone")
    adapted = [int(n.split("/")[1].split(".")[1]) for n in by_name if n.endswith("/inject/Sub")]
    assert adapted == list(range(len(adapted))) and adapted
    first = m.graphs["backbone"].kv_layers - len(adapted)  # shadow-peft: blocks 1..L-1
    for i in range(m.graphs["backbone"].kv_layers):
        kind = by_name[f"/layers.{i}/mlp_residual"].op_type
        if first <= i < m.graphs["backbone"].kv_layers - 1:  # an update follows: Add, then its LayerNorm (unfused)
            assert kind == "Add" and by_name[f"/layers.{i}/mlp_residual_norm"].op_type == "LayerNormalization"
        elif i == first - 1:  # the injection reads the stream
            assert kind == "Add"
        else:
            assert kind == "SkipSimplifiedLayerNormalization"
        if i >= first:  # the injection's delta is added inside the layer's input norm
            assert by_name[f"/layers.{i}/input_norm"].op_type == "SkipSimplifiedLayerNormalization"
    backbone = onnx.load(str(art / "backbone.onnx"), load_external_data=False).graph
    outs = {t.name: list(t.dims) for t in backbone.initializer if t.name.endswith(("gate_out", "transform_out"))}
    assert outs and all(dims == [m.model["gate_size"], m.model["hidden_size"]] for dims in outs.values()), \
        "G's and T's output layers read their half of the activation (no zero-padded [2g, d] weights)"
    head = onnx.load(str(art / "lm_head.onnx"), load_external_data=False)
    assert [n.op_type for n in head.graph.node] == ["MatMul"]
    (w,) = [t for t in head.graph.initializer if t.name == head.graph.node[0].input[1]]
    assert list(w.dims) == [m.model["hidden_size"], m.model["vocab_size"]], "the head is stored [d, vocab]"


@pytest.mark.parametrize("mode", ["shadow_only", "base_shadow"])
def test_decode_state_binds_once_and_rebinds_a_grown_cache(artifact_of, mode):
    case, art = artifact_of("qwen3_implicit")
    rt = runtime_once("qwen3_implicit", art)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, case.vocab_size, (2, 12), dtype=np.int64)
    mask = np.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0  # row 1 left-padded
    full = rt.forward(ids, mask, mode=mode)  # [b, t, V]
    k = 6
    state = DecodeState(rt.pipeline(mode), 2, k + 2)  # room for 2 steps, then growth
    state.prefill(ids[:, :k], mask[:, :k])
    capacity = state.caches[0].capacity
    state.step(ids[:, k])
    ios = [entry[2] for entry in state._step.stacks]
    for t in range(k + 1, ids.shape[1]):
        logits = state.step(ids[:, t])
        assert [entry[2] for entry in state._step.stacks] == ios, "one IOBinding per graph for the whole loop"
        assert all(entry[3] is c.tensors for entry, c in zip(state._step.stacks, state.caches)), "bound to live buffers"
        np.testing.assert_allclose(logits, full[:, t], atol=1e-4, rtol=0)
    assert state.caches[0].capacity > capacity, "the caches grew during the loop"


def test_runtime_sessions_keep_the_update_layernorm_unfused(artifact_of, tmp_path, monkeypatch):
    """The update's Add + LayerNormalization stays two kernels in the session onnxruntime optimizes (its fused
    SkipLayerNormalization is 3.7x slower per call at one position: export/graphs.py `_add_norm`)."""
    _, art = artifact_of("qwen3_implicit")
    optimized = tmp_path / "backbone.optimized.onnx"
    plain = session_mod.session_options

    def dumping(*args, **kwargs):
        so = plain(*args, **kwargs)
        so.optimized_model_filepath = str(optimized)
        return so

    monkeypatch.setattr(session_mod, "session_options", dumping)
    session_mod.GraphSession("backbone", read_manifest(art).graphs["backbone"], art)
    ops = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    assert ops["LayerNormalization"] > 0 and ops["SkipLayerNormalization"] == 0
