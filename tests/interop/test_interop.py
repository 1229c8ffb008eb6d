"""Interop: an exported artifact loads in onnxruntime-genai, optimum's ORTModelForCausalLM (separate venv)
and as ORT format, and each generates exactly shadow-edge's greedy tokens; the single graphs add no weight bytes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import pytest

from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export.interop import COMBINED_FILE, DETACHED_FILE, GENAI_CONFIG, HF_CONFIG
from shadow_edge.export.ort_format import OPERATORS_FILE, ORT_FILE
from shadow_edge.export.single_graph import Chain
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.session import session_options

from runtime_fixtures import artifact_of  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["The river runs past the old mill", "Hello"]
NEW = 12
MODES = {DETACHED_FILE: "shadow_only", COMBINED_FILE: "base_shadow"}


QUANTIZATIONS = ("none", "int4")


@pytest.fixture(scope="module")
def arts(tiny_default, tmp_path_factory) -> dict[str, Path]:
    """The tiny default exported fp32 and int4 (validated, single graphs checked against the split ones),
    with --ort-format."""
    out = {}
    for q in QUANTIZATIONS:
        out[q] = tmp_path_factory.mktemp("interop") / f"art_{q}"
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out[q],
                        options=ExportOptions(quantize=q, ort_format=True), progress=lambda m: None)
    return out


@pytest.fixture(params=QUANTIZATIONS)
def art(request, arts) -> Path:
    return arts[request.param]


_RUNTIMES: dict[Path, ShadowRuntime] = {}


def runtime(art: Path) -> ShadowRuntime:
    if art not in _RUNTIMES:
        _RUNTIMES[art] = ShadowRuntime.load(art, threads=1)
    return _RUNTIMES[art]


@pytest.fixture
def rt(art) -> ShadowRuntime:
    return runtime(art)


def until_eos(tokens, eos) -> list[int]:
    out = []
    for t in map(int, tokens):
        if t in eos:
            break
        out.append(t)
    return out


def reference(rt: ShadowRuntime, prompts: list[list[int]], mode: str) -> list[list[int]]:
    """shadow-edge's greedy new tokens per row (one left-padded batch), cut at eos."""
    res = rt.generate(prompts, mode=mode, max_new_tokens=NEW)
    return [until_eos(row, rt.eos_ids) for row in res.token_ids]


def genai_model(art: Path, file: str) -> og.Model:
    config = og.Config(str(art))
    if file == COMBINED_FILE:  # the documented option: point the decoder at the combined graph
        layers = read_manifest(art).interop["combined"]["kv_layers"]
        config.overlay(json.dumps({"model": {"decoder": {"filename": COMBINED_FILE, "num_hidden_layers": layers}}}))
    elif file != DETACHED_FILE:
        config.overlay(json.dumps({"model": {"decoder": {"filename": file}}}))
    return og.Model(config)


def genai_greedy(art: Path, file: str, prompts: list[list[int]], eos) -> list[list[int]]:
    """genai's greedy new tokens per row; rows are right-padded with the pad id (genai masks pad tokens)."""
    model = genai_model(art, file)
    params = og.GeneratorParams(model)
    width = max(map(len, prompts))
    params.set_search_options(max_length=width + NEW, do_sample=False, batch_size=len(prompts))
    gen = og.Generator(model, params)
    pad = read_manifest(art).tokenizer["pad_token_id"]
    gen.append_tokens(np.array([p + [pad] * (width - len(p)) for p in prompts], np.int32))  # genai pads right
    while not gen.is_done():
        gen.generate_next_token()
    return [until_eos(gen.get_sequence(r)[width:], eos) for r in range(len(prompts))]


def test_interop_files_and_no_new_weight_bytes(art):
    m = read_manifest(art)
    for name in (DETACHED_FILE, COMBINED_FILE, GENAI_CONFIG, HF_CONFIG, ORT_FILE, OPERATORS_FILE):
        assert name in m.files, name
    data_files = {f for g in m.graphs.values() for f in g.data_files}
    assert {p.name for p in art.glob("*.data")} == data_files  # no new weight file
    for file, mode in MODES.items():
        parts = [onnx.load(str(art / m.graphs[g].file), load_external_data=False)
                 for g in Chain.of_mode(m.modes[mode]).graphs]
        model = onnx.load(str(art / file), load_external_data=False)
        assert inline_bytes(model) <= sum(map(inline_bytes, parts))  # only the parts' small constants, deduped
        external = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert external and external <= data_files  # every weight read from the artifact's existing data files
        assert sum(len(t.external_data) > 0 for t in model.graph.initializer) == len(
            {t.name for p in parts for t in p.graph.initializer if t.external_data})
        entry = m.interop["detached" if file == DETACHED_FILE else "combined"]
        assert entry["file"] == file and entry["validation"]["passed"]
        assert entry["tools"] == ["onnxruntime-genai", "optimum"]
    genai = json.loads((art / GENAI_CONFIG).read_text())
    assert genai["model"]["decoder"]["filename"] == DETACHED_FILE
    assert genai["search"]["past_present_share_buffer"] is True
    assert genai["model"]["eos_token_id"] == list(m.tokenizer["eos_token_ids"])
    hf = json.loads((art / HF_CONFIG).read_text())
    assert hf["hidden_size"] // hf["num_attention_heads"] == hf["head_dim"] == m.model["shadow"]["head_dim"]


def inline_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer if not t.external_data)


@pytest.mark.parametrize("file", [DETACHED_FILE, COMBINED_FILE])
def test_genai_greedy_matches(art, rt, file):
    tok = og.Tokenizer(genai_model(art, file))
    ids = [list(map(int, tok.encode(p))) for p in PROMPTS]
    assert ids == [rt.codec.encode(p) for p in PROMPTS]  # og.Tokenizer reads the artifact's tokenizer files
    want = reference(rt, ids, MODES[file])
    assert genai_greedy(art, file, ids[:1], rt.eos_ids) == want[:1]  # batch 1
    assert genai_greedy(art, file, ids, rt.eos_ids) == want  # batch 2 of different lengths


def ort_greedy(path: Path, prompt: list[int], layers: int, kv_heads: int, head_dim: int) -> list[int]:
    """Plain onnxruntime greedy loop over a single-graph decoder (past = previous present)."""
    sess = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    past = {f"past_key_values.{i}.{k}": np.zeros((1, kv_heads, 0, head_dim), np.float32)
            for i in range(layers) for k in ("key", "value")}
    ids, out = np.array([prompt]), []
    names = [o.name for o in sess.get_outputs()]
    for _ in range(NEW):
        total = len(prompt) + len(out)
        feed = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(total - ids.shape[1], total)[None], **past}
        res = dict(zip(names, sess.run(None, feed)))
        out.append(int(res["logits"][0, -1].argmax()))
        past = {n.replace("present.", "past_key_values."): v for n, v in res.items() if n.startswith("present.")}
        ids = np.array([[out[-1]]])
    return out


def test_ort_format_matches_onnx(art, rt):
    m = read_manifest(art)
    g = m.graphs[m.modes["shadow_only"]["shadow"]]
    prompt = rt.codec.encode(PROMPTS[0])
    dims = (g.kv_layers, g.kv_heads, g.head_dim)
    from_ort = ort_greedy(art / ORT_FILE, prompt, *dims)
    assert from_ort == ort_greedy(art / DETACHED_FILE, prompt, *dims)
    assert until_eos(from_ort, rt.eos_ids) == reference(rt, [prompt], "shadow_only")[0]
    assert genai_greedy(art, ORT_FILE, [prompt], rt.eos_ids) == [until_eos(from_ort, rt.eos_ids)]  # genai runs it too
    ops = (art / OPERATORS_FILE).read_text()
    assert "com.microsoft;1;" in ops and "GroupQueryAttention" in ops and str(art) not in ops


ARCH_CASES = ("qwen2_implicit", "llama_untied", "mistral_implicit", "qwen3_explicit", "qwen3_explicit_hd4")
ID_PROMPTS = [[5, 17, 99, 3, 7], [42, 8]]


@pytest.mark.parametrize("name", ARCH_CASES)
def test_genai_across_architectures(artifact_of, name):
    """Qwen2, Llama (untied), Mistral, explicit shadows (GroupQueryAttention and the ONNX Attention fallback):
    every single graph written runs in genai with shadow-edge's tokens (batch of 2); what is not written or not
    for optimum is said in the manifest."""
    _, art = artifact_of(name)
    m, rt = read_manifest(art), runtime(art)
    for key, mode in (("detached", "shadow_only"), ("combined", "base_shadow")):
        entry = m.interop[key]
        if entry["file"] is None:  # explicit shadows: the KV shapes differ
            assert key == "combined" and "KV shapes differ" in entry["limits"]["all"]
            assert not (art / COMBINED_FILE).exists()
            continue
        assert "onnxruntime-genai" in entry["tools"]
        assert ("optimum" in entry["tools"]) != ("optimum" in entry["limits"])
        assert genai_greedy(art, entry["file"], ID_PROMPTS, rt.eos_ids) == reference(rt, ID_PROMPTS, mode)
    assert (art / HF_CONFIG).exists() == ("optimum" in m.interop["detached"]["tools"])


@pytest.fixture(scope="session")
def optimum_python() -> str:
    """The separate optimum venv, prepared by `scripts/setup.sh ...,optimum` (CI's set-up); tests never install it."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "optimum-venv.sh"), "--check"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip()[-500:])
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.integration
def test_optimum_greedy_matches(arts, artifact_of, optimum_python):
    """ORTModelForCausalLM.from_pretrained(ART) (and file_name=model_combined.onnx) on the tiny default fp32 and
    int4 and on Qwen2 / Llama / Mistral cases: batch 1 and a left-padded batch of 2, all in one run of the optimum
    venv (its imports take seconds)."""
    jobs, want = [], []
    case_arts = [artifact_of(n)[1] for n in ARCH_CASES if "implicit" in n or "untied" in n]
    for art in [*arts.values(), *case_arts]:
        rt = runtime(art)
        ids = [rt.codec.encode(p) for p in PROMPTS] if rt.has_tokenizer else ID_PROMPTS
        for file, mode in MODES.items():
            for rows in (ids[:1], ids):
                jobs.append((str(art), None if file == DETACHED_FILE else file, rows))
                want.append((reference(rt, rows, mode), rt.eos_ids))
    done = subprocess.run([optimum_python, str(ROOT / "tests" / "interop" / "optimum_greedy.py"), str(NEW), json.dumps(jobs)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for job, result, (expected, eos) in zip(jobs, got, want):
        assert [until_eos(r, eos) for r in result] == expected, job


def test_attention_fallback_runs_in_genai_not_optimum(tiny_default, tmp_path):
    """The ONNX Attention fallback (head_dim % 8 != 0, here forced) writes KV into a preallocated buffer: genai's
    shared-buffer KV runs it (detached and combined) with shadow-edge's tokens; optimum cannot, so there is no
    config.json and the manifest says why."""
    art = tmp_path / "art"
    export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, art, options=ExportOptions(attention="Attention"),
                    progress=lambda m: None)
    m = read_manifest(art)
    assert not (art / HF_CONFIG).exists() and HF_CONFIG not in m.interop["configs"]
    rt = ShadowRuntime.load(art, threads=1)
    ids = [rt.codec.encode(p) for p in PROMPTS]
    for file, mode in MODES.items():
        entry = m.interop["detached" if file == DETACHED_FILE else "combined"]
        assert entry["tools"] == ["onnxruntime-genai"] and "concatenates" in entry["limits"]["optimum"]
        assert genai_greedy(art, file, ids, rt.eos_ids) == reference(rt, ids, mode)


def test_inspect_lists_interop_files(arts, capsys):
    from shadow_edge.cli import main

    assert main(["inspect", str(arts["int4"])]) == 0
    out = capsys.readouterr().out
    for needle in ("interop", "model.onnx ", "og.Model(ART)", "ORTModelForCausalLM.from_pretrained(ART)",
                   'file_name="model_combined.onnx"', "genai_config.json", "model.ort",
                   "--include_ops_by_config model.required_operators.config"):
        assert needle in out, needle


def test_check_catches_miswired_kv(arts, tmp_path):
    """The export's check of a single graph fails when a layer reads another layer's past."""
    from shadow_edge.errors import ExportError
    from shadow_edge.export.interop import check_joined

    art = tmp_path / "art"
    shutil.copytree(arts["none"], art)
    m = read_manifest(art)
    model = onnx.load(str(art / COMBINED_FILE), load_external_data=False)
    swap = {"past_key_values.1.key": "past_key_values.2.key", "past_key_values.2.key": "past_key_values.1.key"}
    for node in model.graph.node:
        node.input[:] = [swap.get(v, v) for v in node.input]
    onnx.save_model(model, str(art / COMBINED_FILE))
    with pytest.raises(ExportError, match="logits differ from the split graphs"):
        check_joined(art, m.graphs, Chain.of_mode(m.modes["base_shadow"]), COMBINED_FILE)


def test_ort_format_failure_is_one_error_and_no_artifact(tiny_default, tmp_path, monkeypatch):
    from shadow_edge.errors import ExportError
    from shadow_edge.export import ort_format

    monkeypatch.setattr(ort_format, "LAUNCH", "import sys; print('converter exploded', file=sys.stderr); sys.exit(3)")
    out = tmp_path / "art"
    with pytest.raises(ExportError, match=r"ORT format: .*exit 3.*converter exploded.*without --ort-format"):
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out,
                        options=ExportOptions(validate=False, ort_format=True), progress=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".art*partial*"))
