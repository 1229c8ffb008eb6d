"""The execution target: recorded once in the manifest, read by the builder (arithmetic, attention, KV dtype)
and the runtime (providers); an artifact for another device or providers of another device: one clear error."""

from __future__ import annotations

import json

import pytest

from runtime_fixtures import copy_artifact, tiny_artifact  # noqa: F401  (fixtures)
from shadow_edge.cli import main
from shadow_edge.errors import ArtifactError
from shadow_edge.export.options import ExportOptions
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.target import ExecutionTarget


def _edit(art, change) -> None:
    path = art / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_manifest_records_the_target_the_runtime_uses(tiny_artifact, capsys):
    m = read_manifest(tiny_artifact)
    t = m.execution_target
    assert m.target == t.to_dict() and t == ExportOptions().target
    assert (t.device, t.providers, t.kv_dtype, m.dtype) == ("cpu", ("CPUExecutionProvider",), "float32", t.dtype)
    kv = [s for g in m.graphs.values() for s in g.inputs if s.name.startswith("past_key_values.")]
    assert kv and {s.dtype for s in kv} == {t.kv_dtype}
    assert {g.attention for g in m.graphs.values() if g.kv_layers} <= set(t.attention)
    rt = ShadowRuntime.load(tiny_artifact, threads=1, modes=("shadow_only",))
    assert rt.providers == t.providers
    assert main(["inspect", str(tiny_artifact)]) == 0
    assert "target     cpu (CPUExecutionProvider), KV float32" in capsys.readouterr().out


@pytest.mark.parametrize("quantize, compute, level", [("none", "int8", 1), ("int4", "int8", 4),
                                                      ("int8", "float32", 1)])
def test_builder_reads_the_arithmetic_from_the_target(quantize, compute, level):
    t = ExportOptions(quantize=quantize, quant_compute=compute).target
    assert t.accuracy_level == level and t.quant_compute == (None if quantize == "none" else compute)


def test_artifact_written_before_targets_reads_as_cpu(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    _edit(art, lambda d: d.pop("target"))
    assert read_manifest(art).execution_target == ExecutionTarget()
    assert ShadowRuntime.load(art, threads=1, verify=False, modes=("shadow_only",)).providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("change, words", [
    (lambda d: d["target"].update(device="cuda"), "field `target.device` is 'cuda'; this shadow-edge runs 'cpu'"),
    (lambda d: d["target"].update(kv_dtype="float16"), "field `target.kv_dtype` is 'float16'"),
    (lambda d: d["target"].update(attention=["FlashAttention"]), "field `target.attention` is ['FlashAttention']"),
    (lambda d: d["target"].update(attention=["Attention"]), "field `graphs.shadow.attention` is 'GroupQueryAttention'; "
                                                           "expected one of the target's attention kinds (Attention)"),
    (lambda d: d.update(target=[]), "field `target` is []"),
])
def test_foreign_or_malformed_target_is_one_error(tiny_artifact, tmp_path, change, words):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    _edit(art, change)
    with pytest.raises(ArtifactError) as info:
        ShadowRuntime.load(art, threads=1, verify=False)
    assert words in str(info.value) and "manifest.json" in str(info.value)


def test_providers_of_another_device_are_refused(tiny_artifact):
    import onnxruntime as ort

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no provider besides the CPU's to pass")
    with pytest.raises(ArtifactError, match=r"providers AzureExecutionProvider do not run this artifact: it was built "
                                            r"for the cpu target"):
        ShadowRuntime.load(tiny_artifact, threads=1, providers=["AzureExecutionProvider"])
