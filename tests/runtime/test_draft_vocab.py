"""The reduced draft vocabulary (export --draft-vocab N, FR-Spec): speculative's greedy output never changes, the
manifest records N and the ids, the draft head equals the full head's columns, bad flags are one clear error."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from factories import CASE_NAMES
from runtime_fixtures import copy_artifact
from speculative_fixtures import agreeing_rt  # noqa: F401  (fixture)
from shadow_edge.cli import main
from shadow_edge.errors import ArtifactError, ExportError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.acceptance import accept_sampled
from shadow_edge.runtime.draft_vocab import DraftHead, cost_ratio, draft_head

BATCH = [[5, 6, 7, 8, 9], [11], [3, 1, 4, 1]]  # left-padded to 5 columns
_ARTS: dict[tuple, Path] = {}
_RTS: dict[tuple, ShadowRuntime] = {}


def _export(key, base, adapter, root: Path, shadow_model=None, validate=False, **options) -> Path:
    if key not in _ARTS:
        out = root / f"draft_{'_'.join(map(str, key))}"
        export_artifact(base, adapter, out, shadow_model=shadow_model, progress=lambda m: None,
                        options=ExportOptions(validate=validate, **options))
        _ARTS[key] = out
    return _ARTS[key]


def _rt(key, art: Path) -> ShadowRuntime:
    if key not in _RTS:
        _RTS[key] = ShadowRuntime.load(art, threads=1)
    return _RTS[key]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("draft_vocab")


def _vocab(case_or_dir) -> int:
    return json.loads((Path(case_or_dir) / "config.json").read_text())["vocab_size"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_greedy_output_never_changes_on_every_case(cases, root, name):
    """Every test model, a draft vocabulary of an eighth of the tokens: k 1 / 4 / adaptive, one row and a batch."""
    case = cases(name)
    n = max(_vocab(case.base_dir) // 8, 1)
    key = (name, n)
    rt = _rt(key, _export(key, case.base_dir, case.adapter_dir, root, case.shadow_model_dir, draft_vocab=n))
    head = draft_head(rt)
    assert head.session.name == "draft_head" and len(head.ids) == n
    for prompt in (BATCH[0], BATCH):
        base = rt.generate(prompt, mode="base_shadow", max_new_tokens=10, eos=[])
        for k in (1, 4, None):
            spec = rt.generate(prompt, mode="speculative", max_new_tokens=10, draft_tokens=k, eos=[])
            assert spec.token_ids == base.token_ids, (name, prompt, k)
            full = rt.generate(prompt, mode="speculative", max_new_tokens=10, draft_tokens=k, eos=[],
                               full_draft_vocab=True)
            assert full.token_ids == base.token_ids, (name, prompt, k, "full")


@pytest.fixture(scope="module")
def agreeing_reduced(agreeing_rt, root):
    """The agreeing tiny model (drafts both accepted and rejected) with the lower half of its ids as the draft
    vocabulary: some of base_shadow's tokens lie outside it."""
    src = agreeing_rt.art_dir.parent
    n = agreeing_rt.vocab_size // 2
    key = ("agreeing", n)
    return _rt(key, _export(key, src / "base", src / "adapter", root, draft_vocab=n))


@pytest.mark.parametrize("k", (1, 4, None))
def test_greedy_output_never_changes_when_drafts_are_accepted(agreeing_reduced, k):
    rt = agreeing_reduced
    ids = set(draft_head(rt).ids.tolist())
    outside = 0
    for prompt in (BATCH[0], BATCH):
        base = rt.generate(prompt, mode="base_shadow", max_new_tokens=40, eos=[])
        spec = rt.generate(prompt, mode="speculative", max_new_tokens=40, draft_tokens=k, eos=[])
        assert spec.token_ids == base.token_ids
        s = spec.speculative
        assert 0 < s.accepted < s.drafted, "the case must exercise both acceptance and rejection"
        rows = base.token_ids if isinstance(base.token_ids[0], list) else [base.token_ids]
        outside += sum(t not in ids for row in rows for t in row)
    assert outside > 0, "some of base_shadow's tokens must lie outside the draft vocabulary"


def test_drafts_come_from_the_draft_vocabulary_and_sampling_stays_reproducible(agreeing_reduced):
    from shadow_edge.runtime.sampling import Sampler
    from shadow_edge.runtime.strategies.speculative import Rounds, draft

    rt = agreeing_reduced
    for greedy in (True, False):
        rounds = Rounds(rt, None, 1, 16)
        assert rounds.draft_head.session.name == "draft_head"
        rounds.state.prefill(np.array([BATCH[0]], np.int64))
        fed, hidden, q = draft(rounds, np.array([3]), 6, Sampler(not greedy, seed=1), (1.0, 0, 1.0))
        assert np.isin(fed[0, 1:], rounds.draft_head.ids).all() and hidden.shape[:2] == (1, 7)
        if not greedy:
            assert len(q) == 6 and all(qj.shape == (1, rt.vocab_size) for qj in q)
            outside = np.setdiff1d(np.arange(rt.vocab_size), rounds.draft_head.ids)
            assert all(float(qj[0, outside].sum()) == 0.0 and abs(float(qj.sum()) - 1) < 1e-5 for qj in q)
    a, b = (rt.generate(BATCH, mode="speculative", max_new_tokens=12, do_sample=True, seed=7, draft_tokens=3,
                        eos=[]) for _ in range(2))
    assert a.token_ids == b.token_ids


def test_acceptance_rule_is_exact_with_a_draft_distribution_zero_outside_the_draft_vocabulary():
    """Sampled drafts from a reduced vocabulary: the first emitted token is still distributed as p (chi-square)."""
    from tests.runtime.test_speculative import _chi2_p_value

    rng = np.random.default_rng(0)
    p = np.array([[0.4, 0.3, 0.2, 0.1, 0.0], [0.2] * 5])  # [k + 1, V]; token 3 lies outside the draft vocabulary
    head = DraftHead(None, np.array([0, 2, 4]), 5)
    q = head.full(np.array([[0.2, 0.5, 0.3]]))  # [1, V]: zero on tokens 1 and 3
    assert q.tolist() == [[0.2, 0.0, 0.5, 0.0, 0.3]]
    n, counts = 20000, np.zeros(5)
    for _ in range(n):
        d = np.array([head.tokens(np.array([rng.choice(3, p=[0.2, 0.5, 0.3])]))[0]])
        accepted, nxt = accept_sampled(d, p, q, rng)
        counts[d[0] if accepted else nxt] += 1
    assert counts[4] == 0 and counts[3] > 0  # a token outside the draft vocabulary still comes (as a correction)
    assert _chi2_p_value(counts[:4], n * p[0, :4]) > 1e-6


def test_manifest_records_n_and_the_ids_ranked_by_a_text(tiny_default, root):
    from tokenizers import Tokenizer

    text = root / "freq.jsonl"
    rows = [{"messages": [{"role": "user", "content": "the river"}, {"role": "assistant", "content": w}]}
            for w in ("the sea the sea", "a river runs", "the sea")]
    text.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    art = _export(("tiny_text", 12), tiny_default.base_dir, tiny_default.adapter_dir, root, validate=True,
                  draft_vocab=12, draft_vocab_from=str(text))
    m = read_manifest(art)
    dv = m.draft_vocab
    assert dv["size"] == 12 and dv["file"] == "draft_vocab.json" and dv["file"] in m.files
    assert dv["source"]["kind"] == "text" and dv["source"]["file"] == "freq.jsonl"
    ids = json.loads((art / dv["file"]).read_text())["token_ids"]
    tok = Tokenizer.from_file(str(art / "tokenizer.json"))
    counted = Counter(t for r in rows for msg in r["messages"] for s in msg.values()
                      for t in tok.encode(s, add_special_tokens=False).ids)
    eos = set(m.tokenizer["eos_token_ids"])
    ranked = [t for t in sorted(counted, key=lambda t: (-counted[t], t)) if t not in eos]
    assert ids == sorted(eos | set(ranked[:12 - len(eos)]))  # the eos ids, then the most frequent (ties: lower id)
    assert dv["source"]["tokens"] == sum(counted.values())
    assert dv["coverage"] == round(sum(counted[t] for t in ids) / sum(counted.values()), 6) < 1.0
    assert m.graphs["draft_head"].outputs[0].shape[-1] == 12
    report = m.validation["outputs"]["draft_head.logits"]
    assert report["max_abs_err"] <= report["allowed"]
    # ranking by token id (no text): the lowest ids, the eos ids kept
    by_id = _export(("tiny_id", 12), tiny_default.base_dir, tiny_default.adapter_dir, root, draft_vocab=12)
    m = read_manifest(by_id)
    ids = json.loads((by_id / "draft_vocab.json").read_text())["token_ids"]
    eos = set(m.tokenizer["eos_token_ids"])
    assert m.draft_vocab["source"] == {"kind": "token_id_order"} and m.draft_vocab["coverage"] is None
    rest = [t for t in range(12 + len(eos)) if t not in eos][:12 - len(eos)]
    assert ids == sorted(eos | set(rest))


@pytest.mark.parametrize("flags, expect", [
    (["--draft-vocab", "0"], "--draft-vocab 0 must be a whole number of tokens >= 1"),
    (["--draft-vocab", "abc"], "--draft-vocab 'abc' must be a whole number of tokens >= 1"),
    (["--draft-vocab", "1.5"], "--draft-vocab '1.5' must be a whole number"),
    (["--draft-vocab", "99999999"], "--draft-vocab 99999999 is more than the model's vocabulary"),
    (["--draft-vocab", "8", "--draft-vocab-from", "{missing}"], "no such file"),
    (["--draft-vocab-from", "{text}"], "needs --draft-vocab N"),
])
def test_bad_draft_vocab_is_one_clear_error(tiny_default, tmp_path, capsys, flags, expect):
    text = tmp_path / "t.txt"
    text.write_text("the sea\n", encoding="utf-8")
    out = tmp_path / "art"
    argv = ["export", "--base", str(tiny_default.base_dir), "--adapter", str(tiny_default.adapter_dir),
            "--out", str(out), "--no-validate"] + [f.format(missing=tmp_path / "nope.txt", text=text) for f in flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expect in err, err
    assert not out.exists(), "no half-written artifact"
    with pytest.raises(ExportError, match="must be a whole number"):
        ExportOptions(draft_vocab=True)


def test_a_tampered_draft_vocabulary_is_refused(tiny_default, root, tmp_path):
    art = _export(("tiny_id", 12), tiny_default.base_dir, tiny_default.adapter_dir, root, draft_vocab=12)
    bad = copy_artifact(art, tmp_path / "ids")
    (bad / "draft_vocab.json").write_text(json.dumps({"token_ids": list(range(11)) + [10]}))
    rt = ShadowRuntime.load(bad, threads=1, verify=False)
    with pytest.raises(ArtifactError, match="distinct ascending ids"):
        rt.generate([1, 2], mode="speculative", max_new_tokens=3)
    size = copy_artifact(art, tmp_path / "size")
    manifest = json.loads((size / "manifest.json").read_text())
    manifest["draft_vocab"]["size"] = 13
    (size / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="draft_vocab.size"):
        ShadowRuntime.load(size, threads=1, verify=False)
    del manifest["draft_vocab"]
    (size / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="field `draft_vocab`"):
        ShadowRuntime.load(size, threads=1, verify=False)


@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_a_quantized_draft_head_reads_the_quantized_rows(tiny_default, root, quantize):
    """The draft head's rows are quantized as the full head's (row-wise): validation finds its logits equal to the
    full head's columns, and greedy speculative output stays base_shadow's (float32 arithmetic in the quantized
    kernels: with int8 activations a multi-position verify may round a near-tie differently, docs/speculative.md)."""
    key = ("tiny_q", quantize, 64)
    art = _export(key, tiny_default.base_dir, tiny_default.adapter_dir, root, validate=True, quantize=quantize,
                  quant_compute="float32", draft_vocab=64)
    report = read_manifest(art).validation["outputs"]["draft_head.logits"]
    assert report["max_abs_err"] <= 1e-5 * max(1.0, report["ref_max_abs"])
    rt = _rt(key, art)
    base = rt.generate(BATCH, mode="base_shadow", max_new_tokens=8, eos=[])
    for k in (1, 4):
        assert rt.generate(BATCH, mode="speculative", max_new_tokens=8, draft_tokens=k, eos=[]).token_ids == \
            base.token_ids


@pytest.mark.parametrize("k", (1, 4, None))
def test_a_greedy_draft_step_is_one_call_of_the_merged_draft_graph(agreeing_reduced, k, monkeypatch):
    """The export writes step_draft.onnx (the shadow + draft_head + ArgMax, its column mapped to the vocabulary id):
    its next_token is the split draft's token; a one-row greedy round is k calls of it and one verify call; the
    tokens equal base_shadow's, and those of the same artifact without the graph (an older export)."""
    from shadow_edge.runtime.session import GraphSession
    from shadow_edge.runtime.strategies.speculative import Rounds

    rt = agreeing_reduced
    entry = rt.manifest.interop["step"]["draft"]
    assert entry["file"] == "step_draft.onnx" and entry["graphs"] == ["shadow", "draft_head"]
    assert entry["graph"]["outputs"][0]["shape"][-1] == len(draft_head(rt).ids)
    from shadow_edge.commands.interop_info import interop_lines

    lines = interop_lines(rt.manifest)  # `shadow-edge inspect`
    assert any(line.split()[:3] == ["step_draft.onnx", "speculative's", "greedy"] for line in lines)
    rounds = Rounds(rt, None, 1, 32)
    assert rounds.quick is not None and rounds.quick.merged.name == "step:draft"
    rounds.state.prefill(np.array([BATCH[0]], np.int64))
    rounds.drafter.follow(rounds.state)
    rounds.quick.follow(rounds.state)
    for token in (3, 17, 5):
        want = rounds.draft_head.tokens(np.argmax(rounds.drafter.step(np.array([token])), axis=-1))
        rounds.quick.step(np.array([token]))
        assert rounds.quick.next_token.tolist() == want.tolist() and np.isin(want, rounds.draft_head.ids).all()
    calls: list[str] = []
    real = GraphSession.run_bound
    monkeypatch.setattr(GraphSession, "run_bound", lambda self, io: (calls.append(self.name), real(self, io))[1])
    spec = rt.generate(BATCH[0], mode="speculative", max_new_tokens=30, draft_tokens=k, eos=[])
    monkeypatch.setattr(GraphSession, "run_bound", real)
    s = spec.speculative
    assert calls.count("step:draft") == s.drafted and calls.count("step:base_shadow") == s.rounds
    assert set(calls[2:]) == {"step:draft", "step:base_shadow"}
    assert spec.token_ids == rt.generate(BATCH[0], mode="base_shadow", max_new_tokens=30, eos=[]).token_ids


def test_an_artifact_without_the_merged_draft_graph_drafts_through_the_split_graphs(agreeing_reduced, tmp_path):
    """An export from before step_draft.onnx (manifest without interop.step.draft) drafts with the split shadow and
    draft_head and gives the same tokens; a draft step graph whose logits do not have draft_vocab.size columns is one
    clear error."""
    from shadow_edge.runtime.strategies.speculative import Rounds

    rt = agreeing_reduced
    old = copy_artifact(rt.art_dir, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["interop"]["step"]["draft"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    older = ShadowRuntime.load(old, threads=1, verify=False)
    assert Rounds(older, None, 1, 8).quick is None
    for prompt in (BATCH[0], BATCH):
        for k in (1, 4, None):
            want = rt.generate(prompt, mode="speculative", max_new_tokens=16, draft_tokens=k, eos=[]).token_ids
            assert older.generate(prompt, mode="speculative", max_new_tokens=16, draft_tokens=k, eos=[]).token_ids \
                == want
    wide = copy_artifact(rt.art_dir, tmp_path / "wide")
    manifest = json.loads((wide / "manifest.json").read_text())
    manifest["interop"]["step"]["draft"]["graph"]["outputs"][0]["shape"][-1] += 1
    (wide / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"interop.step.draft has logits of width \d+; expected \d+"):
        ShadowRuntime.load(wide, threads=1, verify=False).generate([1, 2], mode="speculative", max_new_tokens=3)


def test_adaptive_cost_ratio_counts_the_bytes_a_step_reads(cases, root):
    """The adaptive draft length's cost model against a model whose bytes we count by hand: qwen3_implicit (d 64,
    4 heads of 32, 2 kv heads, MLP 128, 4 base layers, 1 shadow layer, rank 8, gate 6, tied vocab 384) with a
    48-token draft vocabulary. A step reads one row of the embedding table (a Gather) and every other weight once;
    the RoPE tables and the embedding are stored once for the shadow and the backbone. Float32: 4 bytes."""
    case = cases("qwen3_implicit")
    key = ("qwen3_implicit", 48)
    rt = _rt(key, _export(key, case.base_dir, case.adapter_dir, root, draft_vocab=48))
    d, heads, kv, hd, mlp, positions, vocab, n, rank, gate, layers = 64, 4, 2, 32, 128, 512, 384, 48, 8, 6, 4
    layer = d * (heads + 2 * kv) * hd + heads * hd * d + 3 * d * mlp + 2 * d + (heads + kv) * hd  # qk norm per head
    shared = positions * hd + d  # cos + sin tables [positions, hd / 2] each, one embedding row
    shadow = layer + d + shared  # its layer and final norm
    adapter = (layers - 1) * 2 * d * rank + (layers - 2) * 4 * d * gate + 2 * d  # the last update is skipped
    draft = 4 * (shadow + d * n)
    step = 4 * (shadow + layers * layer + d + adapter + d * vocab)
    reduced, full = cost_ratio(rt, draft_head(rt)), cost_ratio(rt, draft_head(rt, full_vocab=True))
    # the exporter's small shape constants: ~0.1%; the whole embedding table would add 4 * d * vocab = 98 KB
    assert reduced == pytest.approx(draft / step, rel=5e-3)
    assert full == pytest.approx(4 * (shadow + d * vocab) / step, rel=5e-3)


def test_a_quantized_embedding_counts_one_row_in_the_draft_cost(tiny_default, root, monkeypatch):
    """int4: the shadow reads its embedding through GatherBlockQuantized (packed rows + row scales); the draft cost
    counts one row of each table, as for a float32 Gather (bench/weights.py ROW_LOOKUPS)."""
    import onnx

    from shadow_edge.bench import weights

    key = ("tiny_q", "int4", 64)  # the export of test_a_quantized_draft_head_reads_the_quantized_rows
    art = _export(key, tiny_default.base_dir, tiny_default.adapter_dir, root, validate=True, quantize="int4",
                  quant_compute="float32", draft_vocab=64)
    model = onnx.load(str(art / "shadow.onnx"), load_external_data=False)
    used: dict[str, set] = {}
    for node in model.graph.node:
        for name in node.input:
            used.setdefault(name, set()).add(node.op_type)
    tables = [t for t in model.graph.initializer if used.get(t.name) == {"GatherBlockQuantized"}]
    assert len(tables) >= 2, "packed rows and their scales"
    size = {t.name: int(np.prod(t.dims)) * weights.ELEM_BYTES[t.data_type] for t in tables}
    rows = weights.weight_bytes([art / "shadow.onnx"])
    monkeypatch.setattr(weights, "ROW_LOOKUPS", {"Gather"})
    whole = weights.weight_bytes([art / "shadow.onnx"])
    assert whole - rows == sum(size[t.name] - size[t.name] // t.dims[0] for t in tables)


def test_benchmark_suite_refuses_two_artifacts_of_one_size(cases, root):
    """benchmarks.suites.draft_vocab keys its runtimes by N: a second artifact of the same N is one clear error
    (it was measured in place of the first, silently)."""
    from benchmarks.suites import draft_vocab as suite

    case = cases(CASE_NAMES[0])
    n = max(_vocab(case.base_dir) // 8, 1)
    art = _export((CASE_NAMES[0], n), case.base_dir, case.adapter_dir, root, case.shadow_model_dir, draft_vocab=n)
    with pytest.raises(SystemExit, match=f"draft vocabulary size {n} of an earlier --artifact"):
        suite.main(["--artifact", str(art), "--artifact", str(art), "--reps", "1", "--new-tokens", "2"])


def test_benchmark_suite_adds_the_heldout_questions(tiny_default, root, tmp_path):
    """--heldout N adds the demo pair's last N held-out questions (the quality suite's generation prompts) as the
    domain `heldout`, beside the suite's own prompts, for every setup and k. Two new tokens: a run that drafts
    nothing has no acceptance, and the medians skip it (they raised on None)."""
    from benchmarks.suites import draft_vocab as suite
    from benchmarks.suites.quality import prompts

    art = _export(("tiny_id", 12), tiny_default.base_dir, tiny_default.adapter_dir, root, draft_vocab=12)
    out = tmp_path / "dv.json"
    assert suite.main(["--artifact", str(art), "--reps", "1", "--new-tokens", "2", "--k", "1", "--heldout", "2",
                       "--threads", "1", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    own = sum(len(texts) for texts in suite.PROMPTS.values())
    assert len(runs) == (own + 2) * 2  # (the suite's prompts + 2 held-out) x (full head, N=12)
    assert sum(r["domain"] == "heldout" for r in runs) == 4 and len(prompts(2)) == 2
    assert any(r["acceptance"] is None for r in runs)
    rows = json.loads(out.read_text())["rows"]
    assert {r["domain"] for r in rows} == {"all", *suite.PROMPTS, "heldout"}


def test_benchmark_suite_runs_the_plain_runtime_beside(tiny_default, root, tmp_path, capsys):
    """--genai DIR times onnxruntime-genai's model in DIR on the same prompts, as many tokens as base_shadow decoded,
    and every row gives speculative's and base_shadow's tok/s over it; a folder without genai_config.json, or two of
    one name, is one error naming it."""
    from benchmarks.suites import draft_vocab as suite

    art = _export(("tiny_id", 12), tiny_default.base_dir, tiny_default.adapter_dir, root, draft_vocab=12)
    assert (art / "genai_config.json").is_file()  # the artifact's own genai folder: the combined model
    out = tmp_path / "dv.json"
    assert suite.main(["--artifact", str(art), "--reps", "1", "--new-tokens", "3", "--k", "1", "--threads", "1",
                       "--genai", str(art), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    keys = [f"speculative over genai {art.name}", f"base_shadow over genai {art.name}"]
    assert all(r[k] > 0 for r in result["runs"] for k in keys)
    assert all(r[k] > 0 for r in result["rows"] for k in keys)
    with pytest.raises(SystemExit):
        suite.main(["--artifact", str(art), "--genai", str(tmp_path)])
    assert f"--genai {tmp_path}: expected an onnxruntime-genai model folder" in capsys.readouterr().err
    twin = tmp_path / "other" / art.name  # a second folder of the same name would share its columns
    twin.mkdir(parents=True)
    (twin / "genai_config.json").write_text("{}")
    with pytest.raises(SystemExit):
        suite.main(["--artifact", str(art), "--genai", str(art), "--genai", str(twin)])
    assert f"also named {art.name!r}" in capsys.readouterr().err
