"""Export: every core case exports with validation on; raw graph outputs equal the shadow_peft oracle;
the artifact contract (manifest, hashes, I/O tables, weights stored once) holds; --out is safe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from factories import CASE_NAMES
from manifest_checks import assert_validated
from shadow_edge import io_spec
from shadow_edge.core.model import position_ids_from_mask
from shadow_edge.errors import ExportError, ShadowEdgeError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest, sha256_file
from shadow_edge.runtime.session import session_options

ORACLE_TOL = 1e-4


@pytest.fixture(scope="module")
def exported(cases, tmp_path_factory):
    """`exported(name) -> (case, artifact dir)`, exported once with validation (and backbone_plain)."""
    root, done = tmp_path_factory.mktemp("export"), {}

    def get(name: str):
        if name not in done:
            case = cases(name)
            out = root / name
            export_artifact(case.base_dir, case.adapter_dir, out, case.shadow_model_dir,
                            options=ExportOptions(plain_backbone=True), progress=lambda s: None)
            done[name] = (case, out)
        return done[name]

    return get


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def _graph_logits(art: Path, ids: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Full-sequence logits straight from the graphs (empty past), as the manifest's mode prescribes."""
    m = read_manifest(art)
    feed = {"input_ids": ids, "attention_mask": mask,
            "position_ids": position_ids_from_mask(torch.from_numpy(mask)).numpy()}
    hidden = None
    for role in ("shadow", "backbone"):
        name = m.modes[mode].get(role)
        if name is None:
            continue
        g = m.graphs[name]
        past = {p: np.zeros((ids.shape[0], g.kv_heads, ids.shape[1], g.head_dim), np.float32)  # capacity t
                for p, _ in io_spec.kv_pairs(g.kv_layers)}
        extra = {io_spec.SHADOW_HIDDEN: hidden} if role == "backbone" else {}
        hidden = _session(art / g.file).run([g.outputs[0].name], {**feed, **extra, **past})[0]
    head = m.graphs[m.modes[mode]["head"]]
    return _session(art / head.file).run(["logits"], {io_spec.HIDDEN: hidden})[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_export_validates_and_matches_oracle(exported, name):
    case, art = exported(name)
    m = read_manifest(art)
    assert_validated(m)
    ids = torch.randint(0, m.model["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    for mode in ("shadow_only", "base_shadow"):
        with torch.no_grad():
            ref = case.oracle(mode)(input_ids=ids, attention_mask=mask,
                                    position_ids=position_ids_from_mask(mask)).logits.numpy()
        ours = _graph_logits(art, ids.numpy(), mask.numpy(), mode)
        real = mask.bool().numpy()
        assert np.abs(ours - ref)[real].max() <= ORACLE_TOL, mode
        assert np.isfinite(ours).all(), "padding rows must stay finite"


def test_manifest_contract(exported):
    case, art = exported("qwen3_implicit")
    m = read_manifest(art)
    assert set(m.files) == {p.relative_to(art).as_posix() for p in art.rglob("*") if p.name != "manifest.json"}
    for name, entry in m.files.items():
        assert sha256_file(art / name) == entry["sha256"]
    assert {"tokenizer.json", "tokenizer_config.json"} - set(m.files) == set() or not m.tokenizer["has_tokenizer"]
    assert m.source["format"] == "shadow-peft" and m.source["files"]["adapter"]
    cfg = m.model["base"]
    for name, g in m.graphs.items():
        model = onnx.load(str(art / g.file), load_external_data=False)
        assert [i.name for i in model.graph.input] == [t.name for t in g.inputs], name
        assert [o.name for o in model.graph.output] == [t.name for t in g.outputs], name
    past = [t.name for t in m.graphs["backbone"].inputs if t.name.startswith("past_key_values.")]
    assert len(past) == 2 * cfg["num_layers"] and past[:2] == ["past_key_values.0.key", "past_key_values.0.value"]
    for name in m.graphs:
        assert m.contract(name).inputs == tuple(m.graphs[name].inputs), name


def test_vocab_matrix_stored_once_per_layout_and_shadow_detached(exported):
    """The tied embedding / lm_head / shadow_lm_head is one tensor per layout on disk (embedding rows, head
    [d, vocab]); the detached shadow's files hold no backbone weights."""
    case, art = exported("qwen3_implicit")
    m = read_manifest(art)
    spec_vocab_bytes = m.model["vocab_size"] * m.model["hidden_size"] * 4
    assert m.modes["shadow_only"]["head"] == "lm_head"
    shadow_files = {m.graphs[g].file for g in m.modes["shadow_only"].values()}
    for g in m.modes["shadow_only"].values():
        shadow_files.update(m.graphs[g].data_files)
    assert not any(f.startswith("backbone") for f in shadow_files)
    inits = {}
    for name, g in m.graphs.items():
        model = onnx.load(str(art / g.file), load_external_data=False)
        for t in model.graph.initializer:
            loc = {e.key: e.value for e in t.external_data}
            if loc:
                inits.setdefault((loc["location"], loc["offset"]), set()).add(t.name)
            if name == "shadow":
                assert not t.name.startswith("base."), f"backbone tensor {t.name} inside the detached shadow"
    # the tied vocabulary matrix: [vocab, d] rows for the embedding Gather and [d, vocab] for every head's MatMul
    # (shadow_lm_head equals lm_head here: no third copy)
    stored = {t.name: t for g in m.graphs.values()
              for t in onnx.load(str(art / g.file), load_external_data=False).graph.initializer}
    for key, dims in (("model.embed_tokens.weight", [m.model["vocab_size"], m.model["hidden_size"]]),
                      ("model.embed_tokens.weight.T", [m.model["hidden_size"], m.model["vocab_size"]])):
        assert len([k for k, names in inits.items() if key in names]) == 1, f"{key} must be stored exactly once"
        assert list(stored[key].dims) == dims
        assert int({e.key: e.value for e in stored[key].external_data}["length"]) == spec_vocab_bytes
    assert len([k for k, names in inits.items() if any(n.startswith("model.embed_tokens") for n in names)]) == 2


def test_untied_and_explicit_heads(exported):
    _, art = exported("llama_untied")
    m = read_manifest(art)
    assert m.modes["base_shadow"]["head"] == "lm_head"
    _, art = exported("qwen3_explicit")
    m = read_manifest(art)
    assert m.model["shadow_kind"] == "explicit" and m.model["shadow"]["hidden_size"] < m.model["hidden_size"]


def test_existing_out_is_refused_even_with_force_unless_an_artifact(tiny_default, tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="already exists.*--force"):
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out, progress=lambda s: None)
    with pytest.raises(ExportError, match="--force only replaces a shadow-edge artifact"):
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out, options=ExportOptions(force=True),
                        progress=lambda s: None)
    assert (out / "keep.txt").read_text() == "user data"


def test_failed_validation_leaves_nothing(tiny_default, tmp_path):
    out = tmp_path / "art"
    with pytest.raises(ExportError, match=r"validation against PyTorch failed: .*max \|error\|"):
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out, options=ExportOptions(atol=1e-15),
                        progress=lambda s: None)
    assert [p.name for p in tmp_path.iterdir()] == [".art.lock"]


def test_mismatched_adapter_fails_before_writing(cases, tmp_path):
    qwen3, llama = cases("qwen3_implicit"), cases("llama_untied")
    out = tmp_path / "art"
    with pytest.raises(ShadowEdgeError, match="shadow_model.*pass the base model the adapter was trained on"):
        export_artifact(llama.base_dir, qwen3.adapter_dir, out, progress=lambda s: None)
    assert [p.name for p in tmp_path.iterdir()] == [".art.lock"]


def test_tampered_adapter_is_a_clear_error(cases, tmp_path):
    case = cases("qwen3_implicit")
    adapter = tmp_path / "adapter"
    shutil.copytree(case.adapter_dir, adapter)
    (adapter / "shadow_adapter.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ShadowEdgeError, match="shadow_adapter.safetensors"):
        export_artifact(case.base_dir, adapter, tmp_path / "art", progress=lambda s: None)
    assert not (tmp_path / "art").exists()


def test_unsupported_quantization_is_refused():
    with pytest.raises(ExportError, match="--quantize"):
        ExportOptions(quantize="int3")
