"""Every bad input or broken artifact raises InputError / ArtifactError with a message naming the problem."""

from __future__ import annotations

import json

import pytest

from runtime_fixtures import copy_artifact, tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.runtime import ShadowRuntime

BAD_GENERATE = [  # (prompt, kwargs, error type, words the message must contain)
    ("", {}, InputError, "empty"),
    ([], {}, InputError, "empty"),
    ([[1, 2], []], {}, InputError, "prompt 1 is empty"),
    ([1, 2, 100000], {}, InputError, "[0, 511]"),
    ([1, -1], {}, InputError, "token 1 is -1"),
    ([1, 2.5], {}, InputError, "integers"),
    ("hi", {"max_new_tokens": 0}, InputError, "max_new_tokens"),
    ("hi", {"max_new_tokens": 600}, InputError, "max_positions 512"),
    ("hi", {"mode": "turbo"}, InputError, "shadow_only, base_shadow, cascade"),
    ("hi", {"temperature": -1.0}, InputError, "temperature"),
    ("hi", {"top_p": 0.0}, InputError, "top_p"),
    ("hi", {"top_p": 1.01}, InputError, "top_p"),
    ("hi", {"top_k": -2}, InputError, "top_k"),
    ("hi", {"seed": "x"}, InputError, "seed"),
    ([1, 2], {"chat": True}, InputError, "chat"),
    ({"a": 1}, {}, InputError, "not understood"),
]


@pytest.mark.parametrize("prompt, kwargs, err, words", BAD_GENERATE)
def test_bad_generate_inputs(tiny_rt, prompt, kwargs, err, words):
    with pytest.raises(err) as info:
        tiny_rt.generate(prompt, **kwargs)
    assert words in str(info.value)
    with pytest.raises(err):  # stream() checks eagerly, before the first piece
        tiny_rt.stream(prompt, **kwargs)


def test_bad_forward_and_stream_inputs(tiny_rt):
    with pytest.raises(InputError, match="cascade"):
        tiny_rt.forward([[1, 2]], mode="cascade")
    with pytest.raises(InputError, match="attention_mask"):
        tiny_rt.forward([[1, 2]], attention_mask=[[1, 1, 1]])
    with pytest.raises(InputError, match="511"):
        tiny_rt.forward([[1, 512]])
    with pytest.raises(InputError, match="one prompt"):
        tiny_rt.stream(["a", "b"], mode="shadow_only")


def edit_manifest(art, change):
    path = art / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_tampered_file_fails_the_hash_check(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    data = bytearray((art / "shadow.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (art / "shadow.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"shadow\.onnx\.data: sha256 does not match"):
        ShadowRuntime.load(art)


def test_missing_graph_file(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    (art / "backbone.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"backbone\.onnx: missing"):
        ShadowRuntime.load(art)


def test_newer_format_version(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    edit_manifest(art, lambda d: d.update(format_version=99))
    with pytest.raises(ArtifactError, match="format_version 99 is newer.*upgrade"):
        ShadowRuntime.load(art)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact"):
        ShadowRuntime.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="manifest.json: not found"):
        ShadowRuntime.load(tmp_path)


def test_session_io_mismatch_lists_the_diff(tiny_artifact, tmp_path):
    """A graph file whose I/O differs from its (contract-consistent) manifest table: the session check names it."""
    import onnx

    art = copy_artifact(tiny_artifact, tmp_path / "art")
    path = art / "backbone.onnx"
    model = onnx.load(str(path), load_external_data=False)  # the data file stays where it is
    model.graph.input[0].name = "token_ids"  # renamed input
    for node in model.graph.node:
        node.input[:] = ["token_ids" if n == "input_ids" else n for n in node.input]
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError) as info:
        ShadowRuntime.load(art, verify=False)
    msg = str(info.value)
    assert "backbone.onnx: graph 'backbone' does not match its I/O table in manifest.json" in msg
    for words in ("'input_ids' expected by the manifest is missing", "'token_ids' is not in the manifest"):
        assert words in msg


def test_mode_naming_a_missing_graph(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    edit_manifest(art, lambda d: d["modes"]["shadow_only"].update(head="nope"))
    with pytest.raises(ArtifactError, match="'nope'"):
        ShadowRuntime.load(art)


def test_ragged_forward_input(tiny_rt):
    with pytest.raises(InputError, match="different lengths"):
        tiny_rt.forward([[1, 2], [3]])
