"""The graph contract (io_spec) drives builder, manifest and runtime: a manifest whose dims, KV layout or mode
map disagree with it is refused at load with one clear error; the builder refuses I/O it did not wire."""

from __future__ import annotations

import json

import pytest

from runtime_fixtures import copy_artifact, tiny_artifact  # noqa: F401  (fixtures)
from shadow_edge import io_spec
from shadow_edge.errors import ArtifactError, ExportError
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime


def _edit(art, change) -> None:
    path = art / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_manifest_records_the_contract_and_runtime_sessions_use_it(tiny_artifact):
    m = read_manifest(tiny_artifact)
    rt = ShadowRuntime.load(tiny_artifact, threads=1)
    for mode in io_spec.GRAPH_MODES:
        for role, graph in m.modes[mode].items():
            assert io_spec.GRAPH_ROLES[graph] == role
            c = m.contract(graph)
            assert c.inputs == tuple(m.graphs[graph].inputs) and c.outputs == tuple(m.graphs[graph].outputs)
            session = rt.graph(graph)
            assert session.kv_pairs == io_spec.kv_pairs(c.kv_layers) and session.main_output == c.main_output
    assert io_spec.kv_pairs(2) == [("past_key_values.0.key", "present.0.key"),
                                   ("past_key_values.0.value", "present.0.value"),
                                   ("past_key_values.1.key", "present.1.key"),
                                   ("past_key_values.1.value", "present.1.value")]


def _rename_graph(d: dict, old: str, new: str) -> None:
    d["graphs"][new] = d["graphs"].pop(old)
    for roles in d["modes"].values():
        for role, graph in roles.items():
            roles[role] = new if graph == old else graph


# The structure is held to the contract regenerated from the manifest's dims when the manifest is read.
@pytest.mark.parametrize("change, words", [
    (lambda d: d["model"].update(hidden_size=d["model"]["hidden_size"] * 2),
     r"graph 'shadow' output shadow_hidden_states has width 64 in its I/O table where the graph contract has "
     r"model.hidden_size \(128\)"),
    (lambda d: d["graphs"]["shadow"]["inputs"][0].update(shape=["batch", "tokens"]),
     r"graph 'shadow': input input_ids int64 \['batch', 'tokens'\] where the graph contract has "
     r"input_ids int64 \['batch', 'seq'\]"),
    (lambda d: d["graphs"]["backbone"]["inputs"].pop(),
     r"field `graphs.backbone.kv_layers` is \d+; expected half the number of its past_key_values inputs \(\d+\) and "
     r"present outputs"),
    (lambda d: d["modes"]["base_shadow"].pop("shadow"),
     r"field `modes.base_shadow.backbone` is 'backbone'; expected a backbone graph without the input "
     r"shadow_hidden_states \(the mode has no shadow graph\)"),
    (lambda d: d["graphs"]["lm_head"].update(attention="GroupQueryAttention"),
     r"graph 'lm_head': graph 'lm_head' is a head graph: it has no KV cache and no attention"),
    (lambda d: _rename_graph(d, "lm_head", "vocab_head"),
     r"graph 'vocab_head': graph 'vocab_head' is not one of shadow, backbone"),
])
def test_manifest_disagreeing_with_the_contract_is_refused(tiny_artifact, tmp_path, change, words):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    _edit(art, change)
    with pytest.raises(ArtifactError, match=words):
        ShadowRuntime.load(art, threads=1, verify=False)


def test_builder_refuses_contract_io_it_did_not_wire():
    c = io_spec.graph_contract(io_spec.GRAPH_LM_HEAD, hidden=8, vocab=16)
    b = GraphBuilder(c, WeightStore())
    b.op("Identity", [io_spec.HIDDEN])  # reads the input but never produces `logits`
    with pytest.raises(ExportError, match=r"graph lm_head: contract I/O \['logits'\] not wired"):
        b.to_model()


def test_contract_refuses_unknown_graphs_and_attention():
    with pytest.raises(ValueError, match="graph 'draft' is not one of"):
        io_spec.graph_contract("draft", 8, 16)
    with pytest.raises(ValueError, match="attention 'flash'"):
        io_spec.graph_contract(io_spec.GRAPH_SHADOW, 8, 16, 1, 1, 4, "flash")
