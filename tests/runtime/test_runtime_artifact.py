"""Issue 8, artifact side: malformed manifests, dims that disagree with the graphs, and path escapes -> one
ArtifactError naming the field; only manifest-listed files inside the artifact are ever read."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from runtime_fixtures import copy_artifact, tiny_artifact  # noqa: F401  (fixtures)
from shadow_edge.cli import main
from shadow_edge.errors import ArtifactError
from shadow_edge.manifest import read_manifest, sha256_file
from shadow_edge.runtime import ShadowRuntime


def edit(d: dict, dotted: str, value=None, delete: bool = False) -> None:
    *parents, last = dotted.split("/")
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    if delete:
        del d[last]
    else:
        d[last] = value


def _swap_roles(d):
    d["modes"]["base_shadow"]["shadow"], d["modes"]["base_shadow"]["backbone"] = "backbone", "shadow"


MUTATIONS = [  # (id, change(manifest dict), words the message must contain)
    ("files-list", lambda d: edit(d, "files", list(d["files"])), "field `files` is ["),
    ("tokenizer-null", lambda d: edit(d, "tokenizer", None), "field `tokenizer` is None"),
    ("model-list", lambda d: edit(d, "model", []), "field `model` is []"),
    ("no-vocab", lambda d: edit(d, "model/vocab_size", delete=True), "`model.vocab_size` is missing"),
    ("no-bytes", lambda d: edit(d, "files/lm_head.onnx/bytes", delete=True), "`files.lm_head.onnx.bytes` is missing"),
    ("bytes-str", lambda d: edit(d, "files/lm_head.onnx/bytes", "12"), "`files.lm_head.onnx.bytes` is '12'"),
    ("bad-sha", lambda d: edit(d, "files/lm_head.onnx/sha256", "abc"), "64 lowercase hex"),
    ("head-as-shadow", lambda d: edit(d, "modes/shadow_only", {"shadow": "lm_head", "head": "shadow"}),
     "`modes.shadow_only.shadow` is 'lm_head'; expected a shadow graph"),
    ("swapped-roles", _swap_roles, "`modes.base_shadow.shadow` is 'backbone'"),
    ("unknown-role", lambda d: edit(d, "modes/shadow_only/turbo", "shadow"), "roles shadow, backbone, head only"),
    ("no-head", lambda d: edit(d, "modes/shadow_only", {"shadow": "shadow"}), "a `head` graph"),
    ("missing-graph", lambda d: edit(d, "modes/shadow_only/head", "nope"), "names graph 'nope'"),
    ("no-graphs", lambda d: edit(d, "graphs", {}), "at least one graph"),
    ("vocab", lambda d: edit(d, "model/vocab_size", 1000), "`model.vocab_size` is 1000; expected 512"),
    ("max-positions", lambda d: edit(d, "model/max_positions", 100000), "at most model.base.max_positions"),
    ("kv-heads", lambda d: edit(d, "graphs/shadow/kv_heads", 3), "`graphs.shadow.kv_heads` is 3; expected 2"),
    ("kv-layers", lambda d: edit(d, "graphs/backbone/kv_layers", 2), "`graphs.backbone.kv_layers` is 2"),
    ("head-dim", lambda d: edit(d, "graphs/backbone/head_dim", 8), "`graphs.backbone.head_dim` is 8"),
    ("kv-layers-str", lambda d: edit(d, "graphs/shadow/kv_layers", "1"), "`graphs.shadow.kv_layers` is '1'"),
    ("pad-str", lambda d: edit(d, "tokenizer/pad_token_id", "abc"), "`tokenizer.pad_token_id` is 'abc'"),
    ("pad-range", lambda d: edit(d, "tokenizer/pad_token_id", 10**6), "[0, 511]"),
    ("eos-str", lambda d: edit(d, "tokenizer/eos_token_ids", "2"), "`tokenizer.eos_token_ids` is '2'"),
    ("eos-item", lambda d: edit(d, "tokenizer/eos_token_ids", [2, "x"]), "`tokenizer.eos_token_ids[1]` is 'x'"),
    ("eos-bool", lambda d: edit(d, "tokenizer/eos_token_ids", [True]), "`tokenizer.eos_token_ids[0]` is True"),
    ("graph-null", lambda d: edit(d, "graphs/lm_head", None), "`graphs.lm_head` is None"),
    ("inputs-dict", lambda d: edit(d, "graphs/lm_head/inputs", {}), "`graphs.lm_head.inputs` is {}"),
    ("shape-bool", lambda d: edit(d, "graphs/lm_head/inputs/0/shape", [True]), "graphs.lm_head.inputs[0].shape"),
    ("width", lambda d: edit(d, "graphs/lm_head/inputs/0/shape", ["batch", "n_pos", 99]),
     "input hidden_states has width 99 in its I/O table where the graph contract has model.hidden_size (64)"),
    ("dtype-missing", lambda d: edit(d, "dtype", delete=True), "`dtype` is missing"),
    ("dotdot-graph", lambda d: edit(d, "graphs/shadow/file", "../shadow.onnx"), "no `..`"),
    ("abs-graph", lambda d: edit(d, "graphs/shadow/file", "/etc/passwd"), "no absolute path"),
    ("dotdot-data", lambda d: edit(d, "graphs/shadow/data_files", ["../x.data"]), "no `..`"),
    ("dotdot-file", lambda d: d["files"].update({"../secret": d["files"]["lm_head.onnx"]}), "`files.../secret`"),
    ("unlisted-graph", lambda d: edit(d, "files/backbone.onnx", delete=True), "has no entry in `files`"),
]


@pytest.fixture(scope="module")
def pristine(tiny_artifact, tmp_path_factory):
    return copy_artifact(tiny_artifact, tmp_path_factory.mktemp("pristine") / "art")


@pytest.mark.parametrize("change, words", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_bad_manifest_is_one_artifact_error(pristine, tmp_path, change, words):
    art = copy_artifact(pristine, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    change(data)
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as info:
        ShadowRuntime.load(art, threads=1, verify=False)
    assert words in str(info.value) and "manifest.json" in str(info.value)
    with pytest.raises(ArtifactError):
        read_manifest(art)  # inspect, bench, demo read it the same way


def test_bad_manifest_on_the_cli(pristine, tmp_path, capsys):
    art = copy_artifact(pristine, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["tokenizer"]["eos_token_ids"] = "2"
    (art / "manifest.json").write_text(json.dumps(data))
    for argv in (["run", str(art), "--prompt", "hi"], ["inspect", str(art)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "tokenizer.eos_token_ids" in err


@pytest.mark.parametrize("mutation", ["dotdot-graph", "abs-graph", "head-as-shadow", "vocab", "files-list"])
def test_bad_manifests_on_the_cli(pristine, tmp_path, capsys, mutation):
    change, words = next(m[1:] for m in MUTATIONS if m[0] == mutation)
    art = copy_artifact(pristine, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    change(data)
    (art / "manifest.json").write_text(json.dumps(data))
    assert main(["run", str(art), "--prompt", "hi", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err


def test_tokenizer_config_that_is_not_an_object(pristine, tmp_path):
    art = copy_artifact(pristine, tmp_path / "art")
    (art / "tokenizer_config.json").write_text("[1, 2]")
    _relist(art, "tokenizer_config.json")
    with pytest.raises(ArtifactError, match="tokenizer_config.json: holds a list, expected a JSON object"):
        ShadowRuntime.load(art, threads=1, modes=())


def _relist(art, name: str, target=None) -> None:
    """Point the manifest's entry for `name` at the bytes of `target` (default: the file itself)."""
    data = json.loads((art / "manifest.json").read_text())
    path = target or art / name
    data["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (art / "manifest.json").write_text(json.dumps(data))


def test_symlinked_graph_to_another_artifact_is_refused(pristine, tmp_path):
    """Same bytes, so the hashes match; the file still lives outside the artifact."""
    other = copy_artifact(pristine, tmp_path / "other")
    art = copy_artifact(pristine, tmp_path / "art")
    (art / "shadow.onnx").unlink()
    os.symlink(other / "shadow.onnx", art / "shadow.onnx")
    for verify in (True, False):
        with pytest.raises(ArtifactError, match="outside the artifact directory"):
            ShadowRuntime.load(art, threads=1, verify=verify)


def test_symlinked_tokenizer_out_of_the_artifact_is_refused(pristine, tmp_path):
    art = copy_artifact(pristine, tmp_path / "art")
    outside = tmp_path / "tokenizer.json"
    shutil.move(art / "tokenizer.json", outside)
    os.symlink(outside, art / "tokenizer.json")
    with pytest.raises(ArtifactError, match="tokenizer.json: resolves to .* outside the artifact"):
        ShadowRuntime.load(art, threads=1, verify=False)


def test_symlink_inside_the_artifact_is_fine(pristine, tmp_path):
    art = copy_artifact(pristine, tmp_path / "art")
    os.makedirs(art / "blobs")
    shutil.move(art / "tokenizer.json", art / "blobs" / "tok")
    os.symlink("blobs/tok", art / "tokenizer.json")
    data = json.loads((art / "manifest.json").read_text())
    data["files"]["blobs/tok"] = data["files"]["tokenizer.json"]
    (art / "manifest.json").write_text(json.dumps(data))
    assert ShadowRuntime.load(art, threads=1, modes=()).has_tokenizer


def test_unlisted_chat_template_is_never_read(pristine, tmp_path):
    art = copy_artifact(pristine, tmp_path / "art")
    rt = ShadowRuntime.load(art, threads=1, modes=())
    original = rt.chat_text("hi")
    (art / "chat_template.jinja").write_text("INJECTED {{ messages[0]['content'] }}")
    for verify in (True, False):
        assert ShadowRuntime.load(art, threads=1, modes=(), verify=verify).chat_text("hi") == original
    _relist(art, "chat_template.jinja")  # listed (and hashed): now it is the artifact's template
    assert ShadowRuntime.load(art, threads=1, modes=()).chat_text("hi") == "INJECTED hi"


def test_unlisted_tokenizer_is_never_read(pristine, tmp_path):
    art = copy_artifact(pristine, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    del data["files"]["tokenizer.json"]
    (art / "manifest.json").write_text(json.dumps(data))
    assert not ShadowRuntime.load(art, threads=1, modes=()).has_tokenizer


def test_dims_beyond_the_graphs_fail_cleanly_when_run(pristine, tmp_path):
    """max_positions raised everywhere in the manifest: the rotary tables stay 512 long; running past them is
    one ArtifactError naming the graph, not an onnxruntime traceback."""
    art = copy_artifact(pristine, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    for d in (data["model"], data["model"]["base"], data["model"]["shadow"]):
        d["max_positions"] = 4096
    (art / "manifest.json").write_text(json.dumps(data))
    rt = ShadowRuntime.load(art, threads=1, modes=("shadow_only",))
    with pytest.raises(ArtifactError, match=r"shadow\.onnx: onnxruntime failed running graph 'shadow'"):
        rt.forward([[5] * 600], mode="shadow_only")
