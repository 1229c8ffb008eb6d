"""Bad export inputs, table-driven: each is one ShadowEdgeError (API) and one `error:` line with exit 2 (CLI)
naming the file, field or tensor, and nothing is written. Plus the symlink policy (HF cache layout works)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadow_edge.cli import main
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest

BASE_W, ADAPTER_W = "model.safetensors", "shadow_adapter.safetensors"


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, edit: Callable[[dict], None]) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def set_tensor(path: Path, key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> None:
    edit_tensors(path, lambda t: t.update({key: make(t[key])}))


def with_nan(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


def shard(base: Path, weight_map) -> None:
    """Replace model.safetensors by one shard plus an index whose weight_map is `weight_map` (or the real one)."""
    tensors = load_file(str(base / BASE_W))
    (base / BASE_W).unlink()
    save_file(tensors, str(base / "model-00001-of-00001.safetensors"))
    real = {k: "model-00001-of-00001.safetensors" for k in tensors}
    index = {"metadata": {}, "weight_map": real if weight_map is None else weight_map}
    (base / "model.safetensors.index.json").write_text(json.dumps(index) if not isinstance(weight_map, bytes)
                                                       else weight_map.decode())


MOVED, NORM = "model.layers.0.mlp.up_proj.weight", "model.norm.weight"


def two_shards(base: Path, second: dict, weight_map: dict | None = None) -> dict:
    """Shard 1 holds every tensor but MOVED; shard 2 holds MOVED plus `second` (name -> tensor); the index maps
    every tensor to its own shard unless `weight_map` overrides entries. Returns the original tensors."""
    tensors = load_file(str(base / BASE_W))
    (base / BASE_W).unlink()
    one, two = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file({k: v for k, v in tensors.items() if k != MOVED}, str(base / one))
    save_file({MOVED: tensors[MOVED], **second}, str(base / two))
    index = {k: one for k in tensors} | {MOVED: two} | (weight_map or {})
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return tensors


def unlisted_in_two_shards(base: Path) -> None:
    """NORM in both shards (different values) and missing from weight_map: which copy is meant is unknowable."""
    index = base / "model.safetensors.index.json"
    norm = load_file(str(base / BASE_W))[NORM]
    two_shards(base, {NORM: torch.zeros_like(norm)})
    data = json.loads(index.read_text())
    del data["weight_map"][NORM]
    index.write_text(json.dumps(data))


def big_eos_token(base: Path) -> None:
    """The eos comes from the tokenizer's own token string, whose id lies beyond the model's vocabulary."""
    tok = json.loads((base / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": 600, "content": "<|big|>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (base / "tokenizer.json").write_text(json.dumps(tok))
    edit_json(base / "generation_config.json", eos_token_id=None)
    edit_json(base / "tokenizer_config.json", eos_token="<|big|>")


def link_outside(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def outside_copy(path: Path, tmp: Path) -> Path:
    other = tmp / "elsewhere" / path.name
    other.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, other)
    return other


U = "shadow_update_model."
L0 = "model.layers.0."
# (id, mutate(base, adapter, tmp), needles in the message)
CASES = [
    # config values
    ("hidden_size-str", lambda b, a, t: edit_json(b / "config.json", hidden_size="abc"),
     ["config.json", "`hidden_size` is 'abc'"]),
    ("hidden_size-null", lambda b, a, t: edit_json(b / "config.json", hidden_size=None),
     ["config.json", "`hidden_size` is None"]),
    ("heads-zero", lambda b, a, t: edit_json(b / "config.json", num_attention_heads=0),
     ["`num_attention_heads` is 0", ">= 1"]),
    ("layers-float", lambda b, a, t: edit_json(b / "config.json", num_hidden_layers=2.5),
     ["`num_hidden_layers` is 2.5"]),
    ("vocab-bool", lambda b, a, t: edit_json(b / "config.json", vocab_size=True), ["`vocab_size` is True"]),
    ("kv-heads-str", lambda b, a, t: edit_json(b / "config.json", num_key_value_heads="2"),
     ["`num_key_value_heads` is '2'"]),
    ("eps-negative", lambda b, a, t: edit_json(b / "config.json", rms_norm_eps=-1), ["`rms_norm_eps` is -1"]),
    ("tie-str", lambda b, a, t: edit_json(b / "config.json", tie_word_embeddings="yes"),
     ["`tie_word_embeddings` is 'yes'"]),
    ("rope_theta-str", lambda b, a, t: edit_json(b / "config.json", rope_parameters={"rope_theta": "big"}),
     ["`rope_theta` is 'big'"]),
    ("rope_theta-top-level", lambda b, a, t: edit_json(b / "config.json", rope_parameters=None, rope_theta="big"),
     ["`rope_theta` is 'big'"]),
    ("rope-not-object", lambda b, a, t: edit_json(b / "config.json", rope_scaling="abc"),
     ["`rope_scaling` is 'abc'"]),
    ("rope-longrope", lambda b, a, t: edit_json(b / "config.json", rope_scaling={
        "rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
     ["longrope `short_factor` must be a list of", "one per rotary frequency", "got [1.0]"]),  # longrope is
    # implemented (Phi-4-mini); malformed factors are refused naming the field
    ("rope-unknown", lambda b, a, t: edit_json(b / "config.json", rope_parameters={"rope_type": "wavy"}),
     ["`rope_parameters` asks for rope_type 'wavy'"]),
    ("rope-partial", lambda b, a, t: edit_json(b / "config.json", partial_rotary_factor=0.5),
     ["`partial_rotary_factor` 0.5"]),
    ("rope-yarn-factor", lambda b, a, t: edit_json(b / "config.json", rope_scaling={"type": "yarn", "factor": "x"}),
     ["`factor` is 'x'"]),
    ("rope-linear-no-factor", lambda b, a, t: edit_json(b / "config.json", rope_scaling={"type": "linear"}),
     ["required field `factor`"]),
    ("alpha-str", lambda b, a, t: edit_json(a / "shadow_config.json", alpha="abc"),
     ["shadow_config.json", "`alpha` is 'abc'"]),
    ("shadow-layers-zero", lambda b, a, t: edit_json(a / "shadow_config.json", num_shadow_layers=0),
     ["`num_shadow_layers` is 0"]),
    ("shadow-heads-str", lambda b, a, t: edit_json(a / "shadow_config.json", shadow_num_attention_heads="four"),
     ["`shadow_num_attention_heads` is 'four'"]),
    ("eos-str", lambda b, a, t: edit_json(b / "generation_config.json", eos_token_id="abc"),
     ["generation_config.json", "`eos_token_id` is 'abc'"]),
    ("eos-out-of-vocab", lambda b, a, t: edit_json(b / "generation_config.json", eos_token_id=[2, 99999]),
     ["`eos_token_id` 99999 is outside the model's vocabulary"]),
    ("pad-negative", lambda b, a, t: edit_json(b / "generation_config.json", pad_token_id=-1),
     ["generation_config.json", "`pad_token_id` is -1"]),
    ("bos-in-config", lambda b, a, t: edit_json(b / "config.json", bos_token_id=[0.5]) or edit_json(
        b / "generation_config.json", bos_token_id=None) or (b / "generation_config.json").write_text(
        json.dumps({k: v for k, v in json.loads((b / "generation_config.json").read_text()).items()
                    if k != "bos_token_id"})), ["config.json", "`bos_token_id` is [0.5]"]),
    # weights
    ("int-weight", lambda b, a, t: set_tensor(b / BASE_W, L0 + "mlp.up_proj.weight", lambda x: x.to(torch.int32)),
     [BASE_W, "'model.layers.0.mlp.up_proj.weight' has dtype torch.int32"]),
    ("bool-adapter-weight", lambda b, a, t: set_tensor(a / ADAPTER_W, U + "hidden_norm.bias", lambda x: x > 0),
     [ADAPTER_W, "hidden_norm.bias' has dtype torch.bool"]),
    ("nan-base", lambda b, a, t: set_tensor(b / BASE_W, L0 + "self_attn.q_proj.weight", with_nan),
     [BASE_W, "'model.layers.0.self_attn.q_proj.weight' holds 1 NaN/Inf"]),
    ("inf-adapter", lambda b, a, t: set_tensor(a / ADAPTER_W, "shadow_injection_model.injection_ups",
                                               lambda x: with_nan(x, float("inf"))),
     [ADAPTER_W, "injection_ups' holds 1 NaN/Inf"]),
    ("gate-one-wrong", lambda b, a, t: set_tensor(a / ADAPTER_W, U + "update_gates.1.0.weight",
                                                  lambda x: x[:, :-1]),
     [ADAPTER_W, "'shadow_update_model.update_gates.1.0.weight' has shape (10, 63)", "hidden = 64"]),
    ("gates-g-mismatch", lambda b, a, t: edit_tensors(a / ADAPTER_W, lambda d: d.update(
        {f"{U}update_gates.{i}.2.weight": d[f"{U}update_gates.{i}.2.weight"][:, :-1] for i in range(3)})),
     ["tensor gate_out: shape (3, 64, 9), expected (3, 64, 10)"]),
    ("transform-3d", lambda b, a, t: set_tensor(a / ADAPTER_W, U + "update_transforms.0.3.weight",
                                                lambda x: x[None]),
     ["'shadow_update_model.update_transforms.0.3.weight' has shape (1, 64, 10)"]),
    ("base-layer0-shape", lambda b, a, t: set_tensor(b / BASE_W, L0 + "self_attn.o_proj.weight", lambda x: x[:, :64]),
     ["tensor base.layers.0.o.weight: shape (64, 64), expected (64, 128)"]),
    # sharded index
    ("index-not-json", lambda b, a, t: shard(b, b"{not json"), ["model.safetensors.index.json", "cannot read"]),
    ("index-list", lambda b, a, t: shard(b, ["model-00001-of-00001.safetensors"]), ["`weight_map` is ["]),
    ("index-empty", lambda b, a, t: shard(b, {}), ["`weight_map` is {}"]),
    ("index-traversal", lambda b, a, t: shard(b, {"lm_head.weight": "../../../etc/passwd.safetensors"}),
     ["`weight_map['lm_head.weight']` is '../../../etc/passwd.safetensors'"]),
    ("index-missing-shard", lambda b, a, t: shard(b, {"x": "model-00002-of-00002.safetensors"}),
     ["model-00002-of-00002.safetensors", "missing"]),
    ("index-maps-to-the-wrong-shard", lambda b, a, t: two_shards(b, {}, {MOVED: "model-00001-of-00002.safetensors"}),
     ["model.safetensors.index.json", f"puts tensor {MOVED!r} in model-00001-of-00002.safetensors, which does not "
      "hold it"]),
    ("unlisted-tensor-in-two-shards", lambda b, a, t: unlisted_in_two_shards(b),
     ["model.safetensors.index.json", f"tensor {NORM!r} is in 2 shards (model-00001-of-00002.safetensors, "
      "model-00002-of-00002.safetensors) and `weight_map` does not say which"]),
    # tokenizer files: refused at export, not at run
    ("tokenizer-garbage", lambda b, a, t: (b / "tokenizer.json").write_text("{\"model\": 42}"),
     ["tokenizer.json", "not a tokenizer the runtime can load"]),
    ("tokenizer-binary", lambda b, a, t: (b / "tokenizer.json").write_bytes(b"\xff\xfe\x00garbage"),
     ["tokenizer.json", "not a tokenizer"]),
    ("tok-config-not-json", lambda b, a, t: (b / "tokenizer_config.json").write_text("{not json"),
     ["tokenizer_config.json", "not valid JSON"]),
    ("tok-config-list", lambda b, a, t: (b / "tokenizer_config.json").write_text("[1, 2]"),
     ["tokenizer_config.json", "holds a list, expected a JSON object"]),
    ("eos-token-out-of-vocab", lambda b, a, t: big_eos_token(b), ["tokenizer_config.json", "`eos_token` '<|big|>'"]),
    ("tok-config-eos-int", lambda b, a, t: edit_json(b / "tokenizer_config.json", eos_token=5),
     ["tokenizer_config.json", "`eos_token` is 5"]),
    ("chat-template-syntax", lambda b, a, t: edit_json(b / "tokenizer_config.json", chat_template="{% for %}"),
     ["tokenizer_config.json", "chat template does not compile"]),
    ("chat-template-int", lambda b, a, t: edit_json(b / "tokenizer_config.json", chat_template=42),
     ["`chat_template` is 42"]),
    ("chat-template-jinja-binary", lambda b, a, t: (b / "chat_template.jinja").write_bytes(b"\xff\xfe{{"),
     ["chat_template.jinja", "unreadable"]),
    ("generation-config-list", lambda b, a, t: (b / "generation_config.json").write_text("[]"),
     ["generation_config.json", "expected a JSON object"]),
    # symlinks out of the input directory
    ("symlink-tokenizer-etc-passwd", lambda b, a, t: link_outside(b / "tokenizer.json", Path("/etc/passwd")),
     ["tokenizer.json: resolves to /etc/passwd, outside"]),
    ("symlink-config-outside", lambda b, a, t: link_outside(b / "config.json", outside_copy(b / "config.json", t)),
     ["config.json: resolves to", "outside"]),
    ("symlink-weights-outside", lambda b, a, t: link_outside(b / BASE_W, outside_copy(b / BASE_W, t)),
     [BASE_W + ": resolves to", "outside"]),
    ("symlink-adapter-outside", lambda b, a, t: link_outside(a / ADAPTER_W, outside_copy(a / ADAPTER_W, t)),
     [ADAPTER_W + ": resolves to", "outside"]),
]


@pytest.fixture
def inputs(tiny_default, tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(tiny_default.base_dir, base)
    shutil.copytree(tiny_default.adapter_dir, adapter)
    return base, adapter


@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-validate"])
@pytest.mark.parametrize("name, mutate, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(inputs, tmp_path, capsys, name, mutate, needles, validate):
    base, adapter = inputs
    mutate(base, adapter, tmp_path)
    out = tmp_path / "art"
    with pytest.raises(ShadowEdgeError) as info:
        export_artifact(base, adapter, out, options=ExportOptions(validate=validate), progress=lambda s: None)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert main(["export", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]
                + ([] if validate else ["--no-validate"])) == 2
    err = capsys.readouterr().err  # progress lines, then the error
    assert err.count("error: ") == 1 and err.splitlines()[-1].startswith("error: ") and needles[0] in err, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".art.partial-*"))


def test_a_stray_copy_in_another_shard_is_ignored_as_weight_map_says(inputs, tmp_path):
    """Shard 2 also holds a zeroed NORM, but weight_map puts NORM in shard 1: the export uses shard 1's (it used
    whichever shard came last, silently)."""
    base, adapter = inputs
    reference = tmp_path / "ref"
    export_artifact(base, adapter, reference, options=ExportOptions(validate=False), progress=lambda s: None)
    tensors = two_shards(base, {NORM: torch.zeros_like(load_file(str(base / BASE_W))[NORM])})
    from shadow_edge.core.checkpoint import read_base

    norm = read_base(base).weights.norm
    assert norm.path.name == "model-00001-of-00002.safetensors" and torch.equal(norm.load(), tensors[NORM])
    out = tmp_path / "art"
    export_artifact(base, adapter, out, options=ExportOptions(validate=False), progress=lambda s: None)
    graphs = [g.file for g in read_manifest(out).graphs.values()]
    for name in graphs + [f for g in read_manifest(out).graphs.values() for f in g.data_files]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name  # same weights as unsharded


def _as_hf_cache(src: Path, repo: Path) -> Path:
    """Lay `src` out as the Hugging Face cache does: snapshots/<rev>/<file> -> ../../blobs/<sha256>."""
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    return snap


def test_hf_cache_snapshot_symlinks_and_inside_links_work(inputs, tmp_path):
    base, adapter = inputs
    snap_base = _as_hf_cache(base, tmp_path / "hub" / "models--org--base")
    snap_adapter = _as_hf_cache(adapter, tmp_path / "hub" / "models--org--adapter")
    (snap_base / "sub").mkdir()  # a link that stays inside the directory is fine too
    (snap_base / "sub" / "template.jinja").write_text("{{ messages[0]['content'] }}")
    (snap_base / "chat_template.jinja").symlink_to(Path("sub") / "template.jinja")
    out = tmp_path / "art"
    export_artifact(snap_base, snap_adapter, out, options=ExportOptions(validate=False), progress=lambda s: None)
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert not (out / "tokenizer.json").is_symlink()
    assert read_manifest(out).tokenizer["chat_template_file"] == "chat_template.jinja"
