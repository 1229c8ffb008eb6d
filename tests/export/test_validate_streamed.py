"""Streamed (block-wise) validation: agrees with full validation, names a corrupted layer, is recorded in the manifest.

Artifacts are exported without validation, then checked by both validators; corruption is written
into one tensor's bytes of the finished artifact (its external data or its inline initializer), as
a broken converter or disk would leave it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from artifact_edits import corrupt
from manifest_checks import assert_validated
from shadow_edge.core import ShadowModel, load_spec
from shadow_edge.errors import ArtifactError, ExportError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export import validation_plan
from shadow_edge.export.validate import validate_graphs
from shadow_edge.export.validate_streamed import validate_streamed
from shadow_edge.manifest import read_manifest

QUIET = dict(progress=lambda s: None)


def _export(case, out, **options):
    return export_artifact(case.base_dir, case.adapter_dir, out, shadow_model=case.shadow_model_dir,
                           options=ExportOptions(**options), **QUIET)


def _model(case) -> ShadowModel:
    return ShadowModel(load_spec(case.base_dir, case.adapter_dir, case.shadow_model_dir))


@pytest.mark.parametrize("name", ["qwen3_implicit", "qwen3_explicit"])
def test_streamed_agrees_with_full_validation(cases, tmp_path, name):
    case = cases(name)
    m = _export(case, tmp_path / "art", validation="streamed", plain_backbone=True)
    v = assert_validated(m, method="streamed")
    assert v["memory"]["requested"] == "streamed"
    model = _model(case)
    layers = {"shadow": model.spec.shadow.config.num_layers, "backbone": model.spec.base.config.num_layers,
              "backbone_plain": model.spec.base.config.num_layers}
    for graph, n in layers.items():  # every layer of every decoder graph was checked, plus embed and norm
        assert list(v["blocks"][graph]) == [f"{graph} embed"] + [f"{graph} layers.{i}" for i in range(n)] + \
            [f"{graph} norm"]
    full = validate_graphs(tmp_path / "art", model, m.graphs, m.modes)
    assert full["method"] == "full" and set(full["outputs"]) == set(v["outputs"])
    for out, r in v["outputs"].items():  # both small against the same tolerance: the graphs are right
        assert r["max_abs_err"] <= 1e-4 * max(1.0, r["ref_max_abs"])
        assert full["outputs"][out]["max_abs_err"] <= 1e-4 * max(1.0, full["outputs"][out]["ref_max_abs"])
    for graph in v["blocks"].values():
        for r in graph.values():
            assert r["max_abs_err"] <= r["allowed"]


def test_streamed_validation_of_an_int8_arithmetic_export(cases, tmp_path):
    """Streamed validation runs on the float32-arithmetic twins (blocks and end to end at 1e-4), then the int8
    graphs are bounded against them, as in full validation."""
    m = _export(cases("qwen3_implicit"), tmp_path / "art", validation="streamed", quantize="int4")
    v = assert_validated(m, atol=1e-4, method="streamed")
    assert v["int8_arithmetic"] and v["blocks"]
    assert not list((tmp_path / "art").glob("*.float32-arithmetic.onnx"))


@pytest.mark.parametrize("graph_file, tensor, block", [
    ("backbone.onnx", "base.layers.2.gate_up", "backbone layers.2"),
    ("backbone.onnx", "base.layers.0.qkv", "backbone layers.0"),
    ("shadow.onnx", "shadow.layers.0.down", "shadow layers.0"),
    ("backbone.onnx", "adapter.1.gate_out", "backbone layers.2"),  # update after adapted block 2 (of 1..3)
    ("backbone.onnx", "adapter.0.inject_down", "backbone layers.1"),  # injection before block 1
    ("backbone.onnx", "base.norm", "backbone norm"),
])
def test_streamed_validation_names_the_corrupted_block(cases, tmp_path, graph_file, tensor, block):
    case = cases("qwen3_implicit")
    art = tmp_path / "art"
    m = _export(case, art, validate=False)
    corrupt(art, graph_file, tensor)
    model = _model(case)
    with pytest.raises(ExportError, match=r"failed \(blocks\): (?P<b>[^:]+): max \|error\|") as err:
        validate_streamed(art, model, m.graphs, m.modes)
    named = [b for b in str(err.value).split("(blocks): ")[1].split("; ") if "max |error|" in b]
    assert [b.split(":")[0] for b in named] == [block]  # that block and no other
    with pytest.raises(ExportError, match="validation against PyTorch failed: "):  # full validation agrees
        validate_graphs(art, model, m.graphs, m.modes)


def test_peft_variant_blocks(peft_cases, tmp_path):
    """HF PEFT's variant (adapted blocks 2..3 only, biased GELU update, no LayerNorm) block by block."""
    case = peft_cases("qwen3_mirror1")
    art = tmp_path / "art"
    m = _export(case, art, validation="streamed")
    assert "backbone layers.3" in assert_validated(m)["blocks"]["backbone"]
    corrupt(art, "backbone.onnx", "base.layers.3.gate_up")
    with pytest.raises(ExportError, match=r"\(blocks\): backbone layers\.3: max"):
        validate_streamed(art, _model(case), m.graphs, m.modes)


def test_auto_picks_streamed_when_reference_and_sessions_do_not_fit(cases, tmp_path, monkeypatch):
    spec = load_spec(cases("qwen3_implicit").base_dir, cases("qwen3_implicit").adapter_dir)
    ref = validation_plan.reference_bytes(spec)
    total = sum(4 * t.numel() for layer in spec.base.layers + spec.shadow.layers for t in layer.values())
    assert ref > total  # layers from their configs, plus embeddings, norms and the adapter
    monkeypatch.setattr(validation_plan, "available_bytes", lambda: 2 * (ref + 999))  # full needs 2x headroom
    assert validation_plan.plan_validation("auto", spec, 1000).method == "streamed"
    assert validation_plan.plan_validation("auto", spec, 999).method == "full"
    assert validation_plan.plan_validation("full", spec, 10 ** 12).method == "full"
    monkeypatch.setattr(validation_plan, "available_bytes", lambda: None)  # unknown: full, as before
    assert validation_plan.plan_validation("auto", spec, 10 ** 12).method == "full"
    with pytest.raises(ExportError, match="--validation 'half'.*auto, full, streamed"):
        ExportOptions(validation="half")


def test_manifest_records_method_and_stays_compatible(cases, tmp_path):
    art = tmp_path / "art"
    m = _export(cases("qwen3_implicit"), art)  # auto on a tiny model: full
    assert m.validation["method"] == "full" and m.validation["memory"]["requested"] == "auto"
    path = art / "manifest.json"
    raw = json.loads(path.read_text())
    for validation, ok in (({k: v for k, v in raw["validation"].items() if k not in ("method", "memory")}, True),
                           ({**raw["validation"], "method": "sampled"}, False),
                           ({**raw["validation"], "method": "streamed"}, False)):  # streamed needs its blocks
        path.write_text(json.dumps({**raw, "validation": validation}))
        if ok:  # written before the method was recorded (format version 2): still reads
            assert_validated(read_manifest(art))
        else:
            with pytest.raises(ArtifactError, match="validation.(method|blocks)"):
                read_manifest(art)


def test_taps_missing_from_a_graph_are_named(cases, tmp_path):
    from shadow_edge.export.graph_taps import find_taps

    m = _export(cases("qwen3_implicit"), tmp_path / "art", validate=False)
    model = onnx.load(str(tmp_path / "art" / m.graphs["backbone"].file), load_external_data=False)
    taps = find_taps(model, "backbone", 4, 3)
    assert len(taps.layers) == 4 and sorted(taps.states) == [0, 1, 2] and taps.states[0] == "shadow_hidden_states"
    next(n for n in model.graph.node if n.name == "/layers.2/mlp_residual").name = "/layers.2/renamed"
    with pytest.raises(ExportError, match=r"graph 'backbone' has no node /layers\.2/mlp_residual.*exporter bug"):
        find_taps(model, "backbone", 4, 3)
