"""Checkpoint readers on bad input: each failure is a ShadowEdgeError naming the file, tensor or field."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from factories import RECIPES, make_base_model
from shadow_edge.core import load_spec
from shadow_edge.core.arch import supported_model_types
from shadow_edge.errors import CheckpointError, MismatchError, ShadowEdgeError, UnsupportedModelError

ADAPTER = "shadow_adapter.safetensors"


@pytest.fixture
def implicit(cases, tmp_path):
    """Private copies of the qwen3_implicit base and adapter, free to break."""
    case = cases("qwen3_implicit")
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(case.base_dir, base)
    shutil.copytree(case.adapter_dir, adapter)
    return base, adapter


def expect_error(kind: type[ShadowEdgeError], *needles: str, **paths) -> str:
    with pytest.raises(kind) as info:
        load_spec(paths["base"], paths["adapter"], paths.get("shadow"))
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert "\n" not in message  # the CLI prints one line
    return message


def test_loads_when_intact(implicit):
    base, adapter = implicit
    assert load_spec(base, adapter).adapted_layers == 3


def test_missing_base_dir(implicit, tmp_path):
    _, adapter = implicit
    expect_error(CheckpointError, str(tmp_path / "nope"), "--base", base=tmp_path / "nope", adapter=adapter)


def test_missing_adapter_dir(implicit, tmp_path):
    base, _ = implicit
    expect_error(CheckpointError, str(tmp_path / "nope"), "--adapter", base=base, adapter=tmp_path / "nope")


def test_missing_config_json(implicit):
    base, adapter = implicit
    (base / "config.json").unlink()
    expect_error(CheckpointError, str(base / "config.json"), base=base, adapter=adapter)


def test_missing_adapter_weights(implicit):
    base, adapter = implicit
    (adapter / ADAPTER).unlink()
    expect_error(CheckpointError, str(adapter / ADAPTER), "missing", base=base, adapter=adapter)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("which", ["adapter", "base"])
def test_corrupt_safetensors(implicit, damage, which):
    base, adapter = implicit
    file = adapter / ADAPTER if which == "adapter" else base / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x93NUMPY not a tensor file" * 40,
                      "empty": b""}[damage])
    expect_error(CheckpointError, str(file), "corrupt", base=base, adapter=adapter)


def _rewrite_adapter(adapter: Path, edit) -> None:
    tensors = load_file(str(adapter / ADAPTER))
    edit(tensors)
    save_file(tensors, str(adapter / ADAPTER))


@pytest.mark.parametrize("key", ["shadow_model.layers.0.self_attn.k_norm.weight", "shadow_model.norm.weight",
                                 "shadow_injection_model.injection_ups",
                                 "shadow_update_model.update_transforms.1.3.weight",
                                 "shadow_update_model.hidden_norm.bias"])
def test_adapter_missing_tensor(implicit, key):
    base, adapter = implicit
    _rewrite_adapter(adapter, lambda t: t.pop(key))
    expect_error(CheckpointError, key, str(adapter / ADAPTER), base=base, adapter=adapter)


def test_adapter_unexpected_tensor(implicit):
    base, adapter = implicit
    key = "shadow_model.layers.1.mlp.up_proj.weight"  # a second shadow layer the config does not declare
    _rewrite_adapter(adapter, lambda t: t.update({key: t["shadow_model.layers.0.mlp.up_proj.weight"].clone()}))
    expect_error(CheckpointError, key, "unexpected", base=base, adapter=adapter)


def test_adapter_wrong_tensor_shape(implicit):
    base, adapter = implicit
    key = "shadow_model.layers.0.mlp.down_proj.weight"
    _rewrite_adapter(adapter, lambda t: t.update({key: t[key][:, :100].contiguous()}))
    expect_error(MismatchError, "layers.0.down.weight", "(64, 100)", "(64, 128)", base=base, adapter=adapter)


@pytest.mark.parametrize("override, needle", [({"num_hidden_layers": 3}, "3 layers"),
                                              ({"hidden_size": 32, "num_attention_heads": 2}, "hidden size 32")])
def test_adapter_for_another_base(implicit, tmp_path, override, needle):
    _, adapter = implicit
    other = tmp_path / "other_base"
    make_base_model("qwen3", 0, **{**RECIPES["qwen3_implicit"].base, **override}).save_pretrained(other)
    message = expect_error(MismatchError, str(adapter / ADAPTER), needle, base=other, adapter=adapter)
    assert "4 layers and hidden size 64" in message  # what the adapter was trained for


def test_explicit_adapter_without_shadow_model(cases):
    case = cases("qwen3_explicit")
    expect_error(CheckpointError, "--shadow-model", "shadow_model.embed_tokens.weight",
                 base=case.base_dir, adapter=case.adapter_dir)
    assert load_spec(case.base_dir, case.adapter_dir, case.shadow_model_dir).projection is not None


def test_unsupported_architecture(implicit):
    base, adapter = implicit
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    expect_error(UnsupportedModelError, str(base / "config.json"), "'gpt2'", ", ".join(supported_model_types()),
                 base=base, adapter=adapter)


class _Tripwire:
    """Unpickling this creates the file `path` — proof that a reader executed the pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("payload", ["tripwire", "garbage"])
@pytest.mark.parametrize("where", ["base", "adapter", "adapter_without_config"])
def test_pickle_checkpoints_are_refused_unopened(implicit, tmp_path, where, payload):
    base, adapter = implicit
    tripped = tmp_path / "unpickled"
    data = pickle.dumps(_Tripwire(tripped)) if payload == "tripwire" else b"\x80\x04 not really a pickle"
    if where == "base":
        (base / "model.safetensors").unlink()
        file = base / "pytorch_model.bin"
    else:
        (adapter / ADAPTER).unlink()
        if where == "adapter_without_config":
            (adapter / "shadow_config.json").unlink()
        file = adapter / "shadow_adapter.pt"
    file.write_bytes(data)
    expect_error(CheckpointError, str(file), "pickle", "safetensors", base=base, adapter=adapter)
    assert not tripped.exists()
