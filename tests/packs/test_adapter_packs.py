"""Adapter packs: one base artifact, several packs switched per request; outputs equal each adapter's full
artifact; the base's sessions are shared; every bad input is one clear error."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from manifest_checks import assert_validated
from pack_fixtures import QUIET, families, make_adapter  # noqa: F401  (fixture)
from shadow_edge.adapter_pack import PARAMS_FILE
from shadow_edge.cli import main
from shadow_edge.errors import ArtifactError, ExportError, InputError
from shadow_edge.export import ExportOptions, export_artifact, export_pack
from shadow_edge.runtime import ShadowRuntime

PROMPTS = [[5, 6, 7, 8, 9], [11, 3]]  # a left-padded batch of two
GRAPH_MODES = ("shadow_only", "base_shadow")


def load(fam, **kw):
    return ShadowRuntime.load(fam.base_art, threads=1, adapters={n: p for n, p in fam.packs.items()}, **kw)


@pytest.mark.parametrize("name", ["qwen3_implicit", "qwen3_explicit"])
def test_each_pack_equals_its_full_artifact(families, name):
    fam = families(name)
    rt = load(fam)
    ids = np.random.default_rng(0).integers(0, fam.case.vocab_size, size=(2, 9))  # [2, 9]
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    for adapter in fam.packs:
        full = ShadowRuntime.load(fam.fulls[adapter], threads=1)
        for mode in GRAPH_MODES:
            np.testing.assert_allclose(rt.forward(ids, mask, mode=mode, adapter=adapter),
                                       full.forward(ids, mask, mode=mode), rtol=0, atol=1e-5)
        for mode in rt.modes:  # shadow_only, base_shadow, cascade
            got = rt.generate(PROMPTS, mode=mode, adapter=adapter, max_new_tokens=6)
            want = full.generate(PROMPTS, mode=mode, max_new_tokens=6)
            assert got.token_ids == want.token_ids and got.answered_by == want.answered_by, (adapter, mode)
    # the packs really differ from each other and from the base's own adapter
    outs = [rt.forward(ids, mode="base_shadow", adapter=a) for a in (None, *fam.packs)]
    assert all(np.abs(outs[i] - outs[j]).max() > 1e-3 for i in range(3) for j in range(i))


def expected_tokens(fam):
    """(adapter, mode) -> greedy tokens, from the full artifacts (None: the base artifact alone)."""
    arts = {None: fam.base_art, **fam.fulls}
    return {(a, m): ShadowRuntime.load(art, threads=1).generate(PROMPTS, mode=m, max_new_tokens=5).token_ids
            for a, art in arts.items() for m in GRAPH_MODES}


def test_interleaved_and_threaded_requests(families):
    fam = families("qwen3_implicit")
    want = expected_tokens(fam)
    rt = load(fam)
    order = [(a, m) for _ in range(2) for a in (None, "two", "three") for m in GRAPH_MODES]
    for a, m in order:  # switching adapter on every request
        assert rt.generate(PROMPTS, mode=m, adapter=a, max_new_tokens=5).token_ids == want[(a, m)]
    jobs = order * 3
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: rt.generate(PROMPTS, mode=job[1], adapter=job[0],
                                                    max_new_tokens=5).token_ids, jobs))
    assert got == [want[j] for j in jobs]


def test_packs_share_the_base_sessions_and_hold_only_their_own_bytes(families):
    fam = families("qwen3_implicit")
    rt = ShadowRuntime.load(fam.base_art, threads=1)
    sessions = dict(rt._graphs)
    one = rt.load_adapter("two", fam.packs["two"])
    two = rt.load_adapter("three", fam.packs["three"])
    twin = rt.manifest.adapter_slots["constant_graphs"]["shadow"]
    for mode in GRAPH_MODES:
        rt.generate(PROMPTS, mode=mode, adapter="three", max_new_tokens=2)
        pipes = [rt.pipeline(mode, a) for a in (None, "two", "three")]
        for role in ("head", "backbone"):
            assert len({id(getattr(p, role)) for p in pipes}) == 1  # one session whatever the adapter
        assert len({id(p.shadow) for p in pipes}) == 3  # the shadow: one session per pack (and the base's own)
        for pipe, pack in zip(pipes, (None, one, two)):
            assert pipe.shadow.path.name == twin  # the twin graph: slots are constant, onnxruntime prepacks them
            assert not {o.name for o in pipe.shadow.session.get_overridable_initializers()} & \
                set(rt.manifest.adapter_slots["params"]["shadow"])
            assert "shadow" not in pipe.params  # not fed: the pack's weights are its session's initializers
            if pack is not None:
                assert all(pipe.shadow.initializers[k] is v for k, v in pack.feeds["shadow"].items())  # no copy
                assert pipe.params["backbone"] is pack.feeds["backbone"]  # the backbone's slots: fed
    assert rt._graphs == sessions  # loading packs opened no shared session
    # a pack's session reads only the shadow graph's data file (embedding rows memory-mapped), never the backbone's
    assert rt.twins["shadow"].data_files == rt.manifest.graphs["shadow"].data_files == ["shadow.onnx.data"]
    slots = rt.manifest.adapter_slots["params"]
    slot_bytes = sum(np.dtype(dt).itemsize * int(np.prod(shape)) for p in slots.values() for dt, shape in p.values())
    assert one.nbytes == two.nbytes == slot_bytes  # a pack holds exactly the adapter's own weights ...
    files = rt.manifest.files
    backbone_bytes = sum(files[f]["bytes"] for f in rt.manifest.graphs["backbone"].data_files)
    vocab_bytes = rt.vocab_size * rt.manifest.model["hidden_size"] * 4
    assert slot_bytes < backbone_bytes - vocab_bytes  # ... which are not the backbone's
    pack_file = (fam.packs["two"] / PARAMS_FILE).stat().st_size
    assert slot_bytes <= pack_file < slot_bytes + 64 * 1024  # and the pack on disk is those weights


def test_bad_inputs_are_clear_errors(families, tmp_path):
    fam = families("qwen3_implicit")
    rt = load(fam)
    with pytest.raises(InputError, match=r"adapter 'nope' is not loaded \(loaded: two, three\)"):
        rt.generate([1, 2], adapter="nope")
    with pytest.raises(InputError, match="adapter 'nope' is not loaded"):
        rt.forward([[1, 2]], adapter="nope")
    with pytest.raises(InputError, match="'two' is already loaded"):
        rt.load_adapter("two", fam.packs["three"])
    with pytest.raises(InputError, match="adapter name 'a b'"):
        rt.load_adapter("a b", fam.packs["three"])
    with pytest.raises(InputError, match="adapter is 3"):
        rt.generate([1, 2], adapter=3)
    with pytest.raises(ArtifactError, match="not a base artifact"):  # a pack into a full (non-base) artifact
        ShadowRuntime.load(fam.fulls["two"], adapters={"two": fam.packs["two"]})
    with pytest.raises(ArtifactError, match="is not an adapter pack|format"):  # a full artifact as a pack
        rt.load_adapter("full", fam.fulls["two"])
    with pytest.raises(ArtifactError, match="no such adapter pack directory"):
        rt.load_adapter("gone", tmp_path / "missing")
    bad = shutil.copytree(fam.packs["two"], tmp_path / "tampered")
    (bad / PARAMS_FILE).write_bytes((bad / PARAMS_FILE).read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        rt.load_adapter("tampered", bad)


@pytest.mark.parametrize("entry,field,expected", [
    (5, "files.adapter.onnx_adapter", "an object {sha256, bytes}"),  # was a TypeError (issue 24)
    ({"sha256": 7, "bytes": 1}, "files.adapter.onnx_adapter.sha256", "a sha256 hex digest"),
    ({"sha256": "0" * 64, "bytes": "many"}, "files.adapter.onnx_adapter.bytes", "an integer >= 0"),
])
def test_malformed_pack_file_table_is_one_error_naming_the_field(families, tmp_path, capsys, entry, field, expected):
    fam = families("qwen3_implicit")
    bad = shutil.copytree(fam.packs["two"], tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"][PARAMS_FILE] = entry
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"field `{field}` is .*; expected {expected}; export the pack again"):
        ShadowRuntime.load(fam.base_art, threads=1, adapters={"bad": bad})
    assert main(["run", str(fam.base_art), "--adapter", f"bad={bad}", "--use-adapter", "bad", "--input-ids", "1,2",
                 "--mode", "shadow_only", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and field in err and err.count("\n") == 1


def test_unload_while_streaming_is_refused(tiny_default, tmp_path):
    base_art, pack = tmp_path / "base", tmp_path / "own"  # a pack of the base's own adapter is a valid pack
    export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, base_art,
                    options=ExportOptions(as_base=True, validate=False), **QUIET)
    export_pack(tiny_default.base_dir, tiny_default.adapter_dir, pack, base_art, **QUIET)
    rt = ShadowRuntime.load(base_art, threads=1, adapters={"own": pack})
    want = rt.generate("The river", mode="base_shadow", max_new_tokens=8).text
    stream = rt.stream("The river", mode="base_shadow", adapter="own", max_new_tokens=8)
    pieces = iter(stream)
    first = next(pieces)  # the generation has started and holds the pack
    with pytest.raises(InputError, match="'own' is in use by 1 running generation"):
        rt.unload_adapter("own")
    assert first + "".join(pieces) == want == stream.result.text  # the refused unload did not disturb it
    rt.unload_adapter("own")  # done: now it unloads
    with pytest.raises(InputError, match="'own' is not loaded"):
        rt.generate("The river", adapter="own")
    rt.load_adapter("own", pack)  # and the name is free again
    assert rt.generate("The river", adapter="own", max_new_tokens=8).text == want


def test_export_refuses_packs_that_do_not_fit(families, cases, tmp_path):
    from shadow_peft import ShadowConfig

    fam = families("qwen3_implicit")
    case = fam.case
    with pytest.raises(ExportError, match="not a base artifact"):
        export_pack(case.base_dir, fam.adapters["two"], tmp_path / "p1", fam.fulls["two"], **QUIET)
    other = cases("qwen2_implicit")  # another base checkpoint
    with pytest.raises(ExportError, match="very same base checkpoint"):
        export_pack(other.base_dir, other.adapter_dir, tmp_path / "p2", fam.base_art, **QUIET)
    wide = make_adapter(case, tmp_path / "wide", 7, ShadowConfig(num_shadow_layers=1, injection_hidden_size=4,
                                                                  gate_hidden_size=6))
    with pytest.raises(ExportError, match="do not fit the base artifact .* adapter slots .*inject"):
        export_pack(case.base_dir, wide, tmp_path / "p3", fam.base_art, **QUIET)
    with pytest.raises(ExportError, match="--as-base, --plain-backbone and --ort-format"):
        export_pack(case.base_dir, fam.adapters["two"], tmp_path / "p4", fam.base_art,
                    options=ExportOptions(as_base=True), **QUIET)
    assert not any(tmp_path.glob("p*"))  # nothing half-written
    with pytest.raises(ExportError, match="already exists"):
        export_pack(case.base_dir, fam.adapters["two"], fam.packs["two"], fam.base_art, **QUIET)
    export_pack(case.base_dir, fam.adapters["two"], fam.packs["two"], fam.base_art, options=ExportOptions(force=True),
                **QUIET)  # --force replaces a pack (it is ours)


def test_pack_against_a_rebuilt_base_is_refused_at_load(families, tmp_path):
    fam = families("qwen3_implicit")
    case = fam.case
    other_base = tmp_path / "base_int8"  # same checkpoint, other bytes: another identity
    export_artifact(case.base_dir, case.adapter_dir, other_base,
                    options=ExportOptions(as_base=True, validate=False, quantize="int8"), **QUIET)
    with pytest.raises(ArtifactError, match="exported against a base artifact with identity"):
        ShadowRuntime.load(other_base, adapters={"two": fam.packs["two"]})


def test_cli_runs_a_pack(families, capsys):
    fam = families("qwen3_implicit")
    args = ["--input-ids", "5,6,7", "--max-new-tokens", "4", "--json", "--threads", "1", "--mode", "base_shadow"]
    assert main(["run", str(fam.base_art), "--adapter", f"two={fam.packs['two']}", "--adapter",
                 f"three={fam.packs['three']}", "--use-adapter", "three", *args]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["run", str(fam.fulls["three"]), *args]) == 0
    assert got["token_ids"] == json.loads(capsys.readouterr().out)["token_ids"]
    for bad, message in ((["--adapter", "two"], "expected NAME=PACK"),
                         (["--adapter", f"t={fam.packs['two']}", "--adapter", f"t={fam.packs['three']}"],
                          "already given"),
                         (["--use-adapter", "zzz"], "adapter 'zzz' is not loaded")):
        assert main(["run", str(fam.base_art), *bad, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_base_without_constant_twin_falls_back_to_fed_weights(families, tmp_path):
    """A base artifact written before the twin graph (no adapter_slots.constant_graphs) still runs its packs,
    fed to its shared sessions, with a warning; a malformed entry is one clear error."""
    fam = families("qwen3_implicit")
    old = shutil.copytree(fam.base_art, tmp_path / "old_base")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["adapter_slots"]["constant_graphs"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    rt = ShadowRuntime.load(old, threads=1)
    with pytest.warns(UserWarning, match="predates per-pack sessions.*export the base artifact and its packs again"):
        rt.load_adapter("two", fam.packs["two"])
    pipe = rt.pipeline("shadow_only", "two")
    assert pipe.shadow is rt.graph("shadow") and "shadow" in pipe.params  # the shared session, fed
    ids = [[5, 6, 7, 8, 9]]
    full = ShadowRuntime.load(fam.fulls["two"], threads=1)
    for mode in GRAPH_MODES:
        np.testing.assert_allclose(rt.forward(ids, mode=mode, adapter="two"), full.forward(ids, mode=mode),
                                   rtol=0, atol=1e-5)
    for bad, message in (({"lm_head": "shadow_constant.onnx"}, "names graph 'lm_head', which has no adapter slots"),
                         ({"shadow": "gone.onnx"}, r"constant_graphs`.shadow is 'gone.onnx', which is not a file"),
                         (["shadow"], "expected an object graph -> file")):
        manifest["adapter_slots"]["constant_graphs"] = bad
        (old / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=message + ".*re-export the artifact"):
            ShadowRuntime.load(old, threads=1, verify=False)


def test_base_export_validates_the_graphs_the_runtime_opens(cases, tmp_path, monkeypatch):
    """A base artifact's own adapter runs the shadow graph's constant twin: export validates that file."""
    import shadow_edge.export.validate as validate

    case, opened = cases("qwen3_implicit"), []
    real = validate.GraphSession
    monkeypatch.setattr(validate, "GraphSession", lambda name, entry, *a, **kw: opened.append(entry.file)
                        or real(name, entry, *a, **kw))
    manifest = export_artifact(case.base_dir, case.adapter_dir, tmp_path / "base", options=ExportOptions(
        as_base=True, validation="full"), **QUIET)
    assert_validated(manifest)
    assert "shadow_constant.onnx" in opened and "shadow.onnx" not in opened
