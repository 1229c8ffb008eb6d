"""Bad PEFT inputs: one clear error naming the file and field, raised before anything is written."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from peft import LoraConfig, ShadowConfig, get_peft_model
from transformers import PretrainedConfig, PreTrainedModel

from factories import make_base_model
from peft_factories import LLAMA, QWEN3, randomize_peft
from shadow_edge.cli import main
from shadow_edge.core import load_spec
from shadow_edge.errors import CheckpointError, MismatchError, ShadowEdgeError, UnsupportedModelError


def expect(kind, base, adapter, *needles, shadow=None, name=None) -> str:
    with pytest.raises(kind) as info:
        load_spec(base, adapter, shadow, name)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert "\n" not in message
    return message


def _save(model, config, out, seed=7, **more):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, config, **more)
    randomize_peft(pm, seed)
    pm.save_pretrained(out)
    return pm


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A Qwen3 base and bases that do not match it (hidden size, layer count), plus a Llama pair (vocab)."""
    root = tmp_path_factory.mktemp("peft_bad_bases")
    specs = {"qwen3": ("qwen3", QWEN3), "qwen3_wide": ("qwen3", {**QWEN3, "hidden_size": 96}),
             "qwen3_short": ("qwen3", {**QWEN3, "num_hidden_layers": 2}),
             "llama": ("llama", LLAMA), "llama_vocab": ("llama", {**LLAMA, "vocab_size": 400})}
    for name, (arch, cfg) in specs.items():
        make_base_model(arch, 3, **cfg).save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def shadow_adapter(bases, tmp_path_factory):
    out = tmp_path_factory.mktemp("peft_bad") / "shadow"
    _save(make_base_model("qwen3", 3, **QWEN3), ShadowConfig(task_type="CAUSAL_LM", r=4), out)
    return out


def test_lora_is_not_a_shadow_adapter(bases, tmp_path):
    _save(make_base_model("qwen3", 3, **QWEN3), LoraConfig(task_type="CAUSAL_LM", r=2), tmp_path / "lora")
    expect(UnsupportedModelError, bases / "qwen3", tmp_path / "lora", "adapter_config.json", "peft_type", "'LORA'",
           "not a Shadow adapter")


def test_several_adapters_need_a_name(bases, tmp_path):
    pm = _save(make_base_model("qwen3", 3, **QWEN3), ShadowConfig(task_type="CAUSAL_LM", r=4), tmp_path / "multi")
    pm.add_adapter("sql", ShadowConfig(task_type="CAUSAL_LM", r=2))
    randomize_peft(pm, 8)
    pm.save_pretrained(tmp_path / "multi")  # default at the top, "sql" in multi/sql
    expect(CheckpointError, bases / "qwen3", tmp_path / "multi", "2 PEFT adapters", "default, sql", "--adapter-name")
    expect(CheckpointError, bases / "qwen3", tmp_path / "multi", "'chat'", "found: default, sql", name="chat")
    assert load_spec(bases / "qwen3", tmp_path / "multi", adapter_name="sql").injection_down.shape[-1] == 2
    assert load_spec(bases / "qwen3", tmp_path / "multi", adapter_name="default").injection_down.shape[-1] == 4
    rc = main(["export", "--base", str(bases / "qwen3"), "--adapter", str(tmp_path / "multi"),
               "--out", str(tmp_path / "art")])
    assert rc == 2 and not (tmp_path / "art").exists()


def test_adapter_name_on_shadow_peft_is_refused(tiny_default):
    expect(CheckpointError, tiny_default.base_dir, tiny_default.adapter_dir, "--adapter-name", "one adapter",
           name="x")


@pytest.mark.parametrize("base, needles", [
    ("qwen3_wide", ("hidden size 64", "hidden size 96")),
    ("qwen3_short", ("wraps block 3", "2 layers")),
])
def test_base_that_does_not_match(bases, shadow_adapter, base, needles):
    expect(MismatchError, bases / base, shadow_adapter, "adapter_model.safetensors", *needles)


def test_vocab_mismatch(bases, tmp_path):
    _save(make_base_model("llama", 3, **LLAMA), ShadowConfig(task_type="CAUSAL_LM", r=4, share_embeddings=False),
          tmp_path / "own")
    expect(MismatchError, bases / "llama_vocab", tmp_path / "own", "embed_tokens.weight", "vocab 320", "vocab 400")


def test_non_contiguous_blocks_are_refused(bases, tmp_path):
    cfg = ShadowConfig(task_type="CAUSAL_LM", r=4, target_modules=["model.layers.0", "model.layers.2"])
    _save(make_base_model("qwen3", 3, **QWEN3), cfg, tmp_path / "gap")
    expect(UnsupportedModelError, bases / "qwen3", tmp_path / "gap", "adapter_model.safetensors", "[0, 2]",
           "not contiguous", "missing [1]")


def test_pretrained_shadow_needs_its_directory(bases, tmp_path):
    shadow = make_base_model("qwen3", 4, **{**QWEN3, "hidden_size": 32, "num_attention_heads": 2,
                                            "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 64})
    shadow.save_pretrained(tmp_path / "shadow_model")
    cfg = ShadowConfig(task_type="CAUSAL_LM", r=4, shadow_model=str(tmp_path / "shadow_model"))
    _save(make_base_model("qwen3", 3, **QWEN3), cfg, tmp_path / "pre")
    expect(CheckpointError, bases / "qwen3", tmp_path / "pre", "adapter_config.json", "shadow_model",
           "--shadow-model")
    assert load_spec(bases / "qwen3", tmp_path / "pre", tmp_path / "shadow_model").projection is not None


class _DiTConfig(PretrainedConfig):
    model_type = "tiny_dit_for_tests"

    def __init__(self, hidden_size: int = 16, **kw):
        super().__init__(**kw)
        self.hidden_size = hidden_size


class _DiT(PreTrainedModel):
    """The smallest Diffusers-style transformer peft's Shadow tuner accepts (generic token-MLP shadow)."""

    config_class = _DiTConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
                                                       for _ in range(2)])


def test_diffusion_shadow_is_refused(bases, tmp_path):
    _save(_DiT(_DiTConfig()), ShadowConfig(r=2), tmp_path / "dit")
    expect(UnsupportedModelError, bases / "qwen3", tmp_path / "dit", "adapter_model.safetensors", "diffusion")


@pytest.mark.parametrize("with_config", [True, False])
def test_pickles_are_refused_unopened(bases, shadow_adapter, tmp_path, with_config):
    adapter = tmp_path / "pickled"
    adapter.mkdir()
    if with_config:
        shutil.copy(shadow_adapter / "adapter_config.json", adapter)
    (adapter / "adapter_model.bin").write_bytes(b"not a pickle: opening it would fail differently")
    expect(CheckpointError, bases / "qwen3", adapter, "adapter_model.bin", "pickle", "refused")


def test_bad_config_fields_name_the_field(bases, shadow_adapter, tmp_path):
    adapter = shutil.copytree(shadow_adapter, tmp_path / "edited")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "TOKEN_CLS"}))
    expect(UnsupportedModelError, bases / "qwen3", adapter, "adapter_config.json", "task_type", "TOKEN_CLS")
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "shadow_num_attention_heads": 3}))
    msg = expect(ShadowEdgeError, bases / "qwen3", adapter, "adapter_config.json")
    assert "shadow_num_attention_heads" in msg or "num_attention_heads" in msg


def test_config_types_name_the_field(bases, shadow_adapter, tmp_path):
    adapter = shutil.copytree(shadow_adapter, tmp_path / "typed")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    for field, value in (("shadow_num_hidden_layers", "two"), ("share_embeddings", "yes"), ("shadow_alpha", "0.1"),
                         ("shadow_model", 3)):
        (adapter / "adapter_config.json").write_text(json.dumps({**cfg, field: value}))
        expect(CheckpointError, bases / "qwen3", adapter, "adapter_config.json", f"`{field}`", repr(value))


@pytest.mark.parametrize("field,value,kind,needles", [
    ("r", "four", CheckpointError, ("`r` is 'four'", "an integer >= 1")),
    ("r", 0, CheckpointError, ("`r` is 0", "an integer >= 1")),
    ("update_hidden_size", -1, CheckpointError, ("`update_hidden_size` is -1", "an integer >= 1")),
    ("r", 5, MismatchError, ("`r` is 5", "width 4", "(4, 64)")),
    ("update_hidden_size", 6, MismatchError, ("`update_hidden_size` is 6", "width 4")),
])
def test_rank_fields_are_checked_against_the_weights(bases, shadow_adapter, tmp_path, capsys, field, value, kind,
                                                     needles):
    """These exported with exit 0 before (issue 24): peft's config fields were never read."""
    adapter = shutil.copytree(shadow_adapter, tmp_path / "sized")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, field: value}))
    expect(kind, bases / "qwen3", adapter, "adapter_config.json", *needles)
    out = tmp_path / "art"
    assert main(["export", "--base", str(bases / "qwen3"), "--adapter", str(adapter), "--out", str(out),
                 "--no-validate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"`{field}`" in err and not out.exists()


def test_adapter_trained_on_a_base_of_another_vocabulary_is_refused(bases, tmp_path):
    """A default adapter shares the base's embeddings (no tensor has the vocabulary's size): the base it was trained
    on, recorded by peft as base_model_name_or_path, is compared with --base."""
    from transformers import AutoModelForCausalLM

    trained_on = AutoModelForCausalLM.from_pretrained(bases / "llama")  # name_or_path: that directory
    _save(trained_on, ShadowConfig(task_type="CAUSAL_LM", r=4), tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(bases / "llama")
    expect(MismatchError, bases / "llama_vocab", tmp_path / "a", "adapter_config.json", "base_model_name_or_path",
           "vocab_size 320 vs 400", str(bases / "llama"))
    assert load_spec(bases / "llama", tmp_path / "a").base.embed.shape[0] == 320  # its own base is fine
