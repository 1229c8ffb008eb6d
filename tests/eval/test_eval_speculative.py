"""`eval` for speculative decoding: draft acceptance per k against generate/forward oracles, speculative's
perplexity equal to base_shadow's, the CLI section and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtime_fixtures import copy_artifact, tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from speculative_fixtures import agreeing_rt  # noqa: F401  (fixture)
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.evaluate import EvalOptions, evaluate, windows
from shadow_edge.runtime.sampling import log_softmax
from shadow_edge.runtime.speculative_eval import scan, summarize


def oracle_round(rt, prefix: list[int], k: int) -> tuple[int, list[float]]:
    """(drafts accepted, the shadow's probability of each draft) from generate + full forwards."""
    drafts = rt.generate(prefix, mode="shadow_only", max_new_tokens=k, eos=()).token_ids
    seq = np.array(prefix + drafts)
    target = rt.forward(seq, mode="base_shadow")[0].argmax(-1)  # [t]
    n = 0
    while n < k and drafts[n] == target[len(prefix) - 1 + n]:
        n += 1
    shadow = log_softmax(rt.forward(seq, mode="shadow_only")[0])  # [t, V]
    return n, [math.exp(shadow[len(prefix) - 1 + j, d]) for j, d in enumerate(drafts)]


def test_acceptance_per_position_equals_generate_and_forward(agreeing_rt):
    rt, k = agreeing_rt, 4
    ids = np.random.default_rng(3).integers(0, rt.vocab_size, 30)
    result = scan(rt, ids, windows(len(ids), len(ids), 15), k)
    rounds = [oracle_round(rt, ids[:s + 1].tolist(), k) for s in range(1, len(ids) - 1)]
    expected_n = [n for n, _ in rounds]
    assert result.accepted == expected_n and result.room == [k] * len(expected_n)
    assert 0 < sum(expected_n) and min(expected_n) < k  # drafts both accepted and rejected
    verified = [c for n, conf in rounds for c in conf[:min(n + 1, k)]]
    np.testing.assert_allclose(result.confidence, verified, atol=1e-4)
    assert result.verdict == [j < n for n, _ in rounds for j in range(min(n + 1, k))]
    summary = summarize(result, k, None)
    for d in summary.per_k:
        got = np.minimum(expected_n, d.k)
        assert d.rounds == len(expected_n)
        assert d.acceptance_rate == pytest.approx(got.sum() / (d.k * len(got)))
        assert d.accepted_per_round == pytest.approx(got.mean())
    assert summary.accepted_histogram == np.bincount(expected_n, minlength=k + 1).tolist()
    assert sum(b.drafts for b in summary.by_confidence) == len(verified)


@pytest.mark.parametrize("window,stride", [(12, 5), (None, None)])
def test_speculative_perplexity_equals_base_shadows(agreeing_rt, window, stride):
    """Same positions, same contexts: equal perplexity; with one window over the model's whole context the
    drafts near its end are cut to the positions left."""
    rt = agreeing_rt
    n = 40 if window else rt.max_positions
    ids = np.random.default_rng(5).integers(0, rt.vocab_size, n)
    report = evaluate(rt, ids, EvalOptions(modes=("base_shadow", "speculative"), window=window, stride=stride,
                                           draft_tokens=3))
    spec, base = report.modes["speculative"], report.modes["base_shadow"]
    assert spec.tokens == base.tokens == n - 1
    assert spec.perplexity == pytest.approx(base.perplexity, rel=1e-5)
    assert spec.top1_accuracy == base.top1_accuracy
    assert report.speculative.max_logprob_diff < 1e-4
    per_k = report.speculative.per_k
    assert [d.k for d in per_k] == [1, 2, 3] and per_k[0].acceptance_rate > 0
    if window is None:  # the last two positions had room for 2 and 1 drafts
        assert [d.rounds for d in per_k] == [n - 2, n - 3, n - 4]


def test_cli_eval_speculative(tmp_path, tiny_artifact, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The river runs past the old mill, under the stone bridge, and down to the harbour.",
                    encoding="utf-8")
    out_json = tmp_path / "q.json"
    rc = main(["eval", str(tiny_artifact), "--text", str(text), "--modes", "base_shadow,speculative",
               "--draft-tokens", "3", "--json", str(out_json), "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "speculative: the shadow's greedy drafts" in out and "max |log p speculative" in out
    data = json.loads(out_json.read_text())
    assert set(data["modes"]) == {"base_shadow", "speculative"} and len(data["speculative"]["per_k"]) == 3
    assert data["modes"]["speculative"]["perplexity"] == pytest.approx(data["modes"]["base_shadow"]["perplexity"],
                                                                       rel=1e-5)
    rc = main(["eval", str(tiny_artifact), "--text", str(text), "--modes", "speculative", "--draft-tokens", "0",
               "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "draft_tokens is 0" in err and err.count("\n") == 1


def test_speculative_needs_both_halves(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "no_backbone")
    manifest = json.loads((art / "manifest.json").read_text())
    del manifest["modes"]["base_shadow"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    rt = ShadowRuntime.load(art, threads=1, modes=())
    with pytest.raises(InputError, match="no mode 'speculative'"):
        evaluate(rt, [1, 2, 3, 4], EvalOptions(modes=("speculative",)))


def test_eval_flag_is_speculatives_own_option(capsys):
    """eval's --draft-tokens is generated from speculative's registration, not written a second time."""
    from dataclasses import fields

    from shadow_edge.runtime.strategies.speculative import SpeculativeOptions

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in fields(SpeculativeOptions):
        assert " ".join(f.metadata["help"].split()) in help_text
