"""Speculative decoding: greedy output equals base_shadow's, caches roll back exactly, sampling keeps p.

The random factory models make the shadow and the combined model disagree almost always
(the drafts are rejected), so most tests use the `agreeing` variant of the tiny default
model (speculative_fixtures.py), on which drafts are both accepted and rejected.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from runtime_fixtures import artifact_of, copy_artifact, runtime_once, tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from speculative_fixtures import agreeing_rt  # noqa: F401  (fixture)
from factories import CASE_NAMES
from shadow_edge.errors import InputError
from shadow_edge.runtime import GenerationOptions, ShadowRuntime
from shadow_edge.runtime.acceptance import AdaptiveDraft, accept_greedy, accept_sampled
from shadow_edge.runtime.sampling import log_softmax, shaped_probs
from shadow_edge.runtime.strategies import strategy
from shadow_edge.runtime.strategies.base import LoopState
from shadow_edge.runtime.sampling import Sampler

BATCH = [[5, 6, 7, 8, 9], [11], [3, 1, 4, 1]]  # left-padded to 5 columns
TOL = 1e-4


def _pair(rt, prompt, n, k, **kw):
    base = rt.generate(prompt, mode="base_shadow", max_new_tokens=n, **kw)
    spec = rt.generate(prompt, mode="speculative", max_new_tokens=n, draft_tokens=k, **kw)
    return base, spec


@pytest.mark.parametrize("name", CASE_NAMES)
def test_greedy_equals_base_shadow_on_every_case(artifact_of, name):
    _, art = artifact_of(name)
    rt = runtime_once(name, art)
    for prompt in (BATCH[0], BATCH):
        for k in (1, 3, 8, None):
            base, spec = _pair(rt, prompt, 12, k, eos=[])
            assert spec.token_ids == base.token_ids, (name, prompt, k)
            s = spec.speculative
            assert s.rounds >= 1 and s.drafted >= s.accepted >= 0


@pytest.mark.parametrize("k", (1, 3, 8, None))
def test_greedy_equals_base_shadow_when_drafts_are_accepted(agreeing_rt, k):
    for prompt in (BATCH[0], BATCH):
        base, spec = _pair(agreeing_rt, prompt, 40, k, eos=[])
        assert spec.token_ids == base.token_ids
        s = spec.speculative
        assert 0 < s.accepted < s.drafted, "the case must exercise both acceptance and rejection"
        assert s.acceptance_rate == s.accepted / s.drafted and s.mean_accepted_length == s.accepted / s.rounds
        if k is not None:
            assert s.draft_lengths[0] == k and max(s.draft_lengths) == k  # later rounds: at most the tokens left


def _rounds(rt, prompt, k, **sampling):
    """The tokens of each step of a speculative generation (eos off), read from the strategy's steps."""
    opts = GenerationOptions.of(mode="speculative", max_new_tokens=40, draft_tokens=k, eos=(), **sampling)
    state = LoopState(np.zeros(1, dtype=bool))
    sampler = Sampler(opts.do_sample, opts.temperature, opts.top_k, opts.top_p, opts.seed)
    steps = strategy("speculative").steps(rt, np.array([prompt]), np.ones((1, len(prompt)), np.int64), opts, sampler,
                                          (), False, state, {})
    return [rec.tokens[0] for rec in steps]


def _inside_a_round(rounds) -> list[int]:
    """Output positions followed by more tokens of the same round (accepted drafts that are not the last)."""
    out, i = [], 0
    for row in rounds:
        out += range(i, i + len(row) - 1)
        i += len(row)
    return out


def test_stop_string_inside_a_draft_greedy(agreeing_rt):
    rt = agreeing_rt
    prompt = rt.codec.encode("The river runs past the old mill")
    rounds = _rounds(rt, prompt, 4)
    tokens = [t for row in rounds for t in row]
    stop = next(s for p in _inside_a_round(rounds) if p >= 1
                for s in [rt.codec.decode(tokens[p - 1:p + 1]).strip()]
                if s and s not in rt.codec.decode(tokens[:p]))  # its first appearance ends inside a round
    base, spec = _pair(rt, prompt, 40, 4, eos=[], stop=[stop])
    assert (spec.token_ids, spec.text, spec.finish_reason) == (base.token_ids, base.text, base.finish_reason)
    assert spec.finish_reason == "stop" and len(spec.token_ids) < len(tokens)
    streamed = rt.stream(prompt, mode="speculative", max_new_tokens=40, draft_tokens=4, eos=[], stop=[stop])
    assert "".join(streamed) == base.text and streamed.result.token_ids == base.token_ids
    for eos in sorted(set(tokens))[:8]:  # eos wherever it first appears
        base, spec = _pair(rt, prompt, 40, 4, eos=[eos])
        assert spec.token_ids == base.token_ids and spec.finish_reason == base.finish_reason == "eos"


def test_eos_inside_a_draft_sampling(agreeing_rt):
    """With a seed, eos = a token first emitted as an accepted draft mid-round: the output is the eos-free
    output cut right after it (later drafts of that round are dropped)."""
    rt = agreeing_rt
    prompt = rt.codec.encode("Once upon a time")
    kw = dict(do_sample=True, temperature=0.7, seed=3)
    rounds = _rounds(rt, prompt, 4, **kw)
    tokens = [t for row in rounds for t in row]
    p = next(p for p in _inside_a_round(rounds) if tokens[p] not in tokens[:p])
    out = rt.generate(prompt, mode="speculative", max_new_tokens=40, draft_tokens=4, eos=[tokens[p]], **kw)
    assert out.token_ids == tokens[:p + 1] and out.finish_reason == "eos"


@pytest.mark.parametrize("prompts", [BATCH, BATCH[:1]], ids=["batch", "one_row_bound"])
def test_caches_roll_back_exactly(agreeing_rt, prompts):
    """Every emitted token's log-probability (so every round after a rejection, in every row of a left-padded
    batch with holes; one row: the one-call verify pass with its logits fetched) equals a fresh full forward over
    the accepted prefix."""
    rt = agreeing_rt
    t = max(map(len, prompts))
    ids = np.array([[rt.pad_id] * (t - len(p)) + p for p in prompts])
    mask = np.array([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    opts = GenerationOptions.of(mode="speculative", max_new_tokens=30, draft_tokens=3, eos=())
    gen = strategy("speculative").run(rt, ids, mask, opts, False, want_logprobs=True)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            rows = done.value
            break
    s = rows.stats
    assert 0 < s.accepted < s.drafted
    for r, prompt in enumerate(prompts):
        full = np.array(prompt + rows.ids[r][:-1])
        fresh = log_softmax(rt.forward(full, mode="base_shadow")[0])  # [t, V]
        expected = fresh[len(prompt) - 1 + np.arange(len(rows.ids[r])), rows.ids[r]]
        np.testing.assert_allclose(rows.logprobs[r], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("k", (1, 4, None))
def test_a_greedy_round_is_k_draft_calls_and_one_verify_call(agreeing_rt, k, monkeypatch):
    """One row, greedy: after the prefill, a round of k drafts is k calls of shadow_only's merged step graph and ONE
    call of base_shadow's over the k + 1 positions (no split graph runs); the tokens equal base_shadow's and those of
    the split round (a runtime loaded with decode_step='split')."""
    from shadow_edge.runtime import decode_state
    from shadow_edge.runtime.session import GraphSession

    calls: list[str] = []
    real = GraphSession.run_bound
    monkeypatch.setattr(GraphSession, "run_bound", lambda self, io: (calls.append(self.name), real(self, io))[1])
    before = dict(decode_state.STEP_CALLS)
    spec = agreeing_rt.generate(BATCH[0], mode="speculative", max_new_tokens=30, draft_tokens=k, eos=[])
    paths = {p: n - before.get(p, 0) for p, n in decode_state.STEP_CALLS.items() if n != before.get(p, 0)}
    s = spec.speculative
    assert 0 < s.accepted < s.drafted
    assert paths == {"advance": 1, "verify_bound": s.rounds, **({"step": s.drafted} if s.drafted else {})}, paths
    assert calls.count("step:base_shadow") == s.rounds and calls.count("step:shadow_only") == s.drafted
    assert calls[:2] == ["shadow", "backbone"]  # the prompt (its head runs unbound), then rounds only
    assert set(calls[2:]) == {"step:base_shadow", "step:shadow_only"}
    from shadow_edge.runtime.strategies.speculative import Rounds

    split = ShadowRuntime.load(agreeing_rt.art_dir, threads=1, decode_step="split")
    head = agreeing_rt.pipeline("base_shadow").head  # one call: no prepacked copy of the head for a split verify
    assert Rounds(agreeing_rt, None, 1, 8).state.pipe.head is head
    assert Rounds(agreeing_rt, None, 1, 8, split_verify=True).state.pipe.head is not head
    assert Rounds(split, None, 1, 8).state.pipe.head is not split.pipeline("base_shadow").head
    base = agreeing_rt.generate(BATCH[0], mode="base_shadow", max_new_tokens=30, eos=[])
    old = split.generate(BATCH[0], mode="speculative", max_new_tokens=30, draft_tokens=k, eos=[])
    assert spec.token_ids == base.token_ids == old.token_ids
    assert old.speculative.accepted == s.accepted


def test_sampling_is_reproducible_with_a_seed(agreeing_rt):
    kw = dict(mode="speculative", max_new_tokens=30, do_sample=True, temperature=0.8, draft_tokens=3, eos=[])
    a = agreeing_rt.generate(BATCH, seed=7, **kw)
    assert agreeing_rt.generate(BATCH, seed=7, **kw).token_ids == a.token_ids
    assert a.speculative.accepted > 0


def _chi2_p_value(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson chi-square goodness of fit (cells with expected < 5 pooled); survival function via torch."""
    order = np.argsort(expected)
    obs, exp = observed[order].astype(float), expected[order].astype(float)
    pooled_o, pooled_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(obs, exp):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            pooled_o.append(acc_o), pooled_e.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e:
        pooled_o[-1] += acc_o
        pooled_e[-1] += acc_e
    o, e = np.array(pooled_o), np.array(pooled_e)
    stat = float(((o - e) ** 2 / e).sum())
    df = len(o) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_accept_sampled_emits_exactly_p():
    """The acceptance rule on fixed p, q: the first emitted token is distributed as p (chi-square, p > 1e-6)."""
    rng = np.random.default_rng(0)
    p = np.array([[0.5, 0.3, 0.15, 0.05, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])  # [k + 1, V], k = 1
    q = np.array([[0.1, 0.1, 0.2, 0.3, 0.3]])  # the draft disagrees a lot, even on a token p rules out
    n = 20000
    counts = np.zeros(5)
    for _ in range(n):
        d = np.array([rng.choice(5, p=q[0])])
        accepted, nxt = accept_sampled(d, p, q, rng)
        counts[d[0] if accepted else nxt] += 1
    assert counts[4] == 0  # never a token the target rules out
    assert _chi2_p_value(counts[:4], n * p[0, :4]) > 1e-6


def test_first_speculative_token_distribution_matches_base_shadow(agreeing_rt):
    """The second new token (the first one that passes the acceptance rule) is distributed as under base_shadow:
    exact joint of (token 1, token 2) from full forwards vs 3000 speculative samples, chi-square p > 1e-6."""
    rt, prompt = agreeing_rt, [5, 6, 7, 8, 9]
    shape = dict(temperature=1.5, top_k=4)
    p1 = shaped_probs(rt.forward(prompt)[0, -1:], **shape)[0]
    cells = {}
    for t1 in np.flatnonzero(p1):
        p2 = shaped_probs(rt.forward(prompt + [int(t1)])[0, -1:], **shape)[0]
        for t2 in np.flatnonzero(p2):
            cells[(int(t1), int(t2))] = p1[t1] * p2[t2]
    counts = dict.fromkeys(cells, 0)
    samples = 0
    for seed in range(30):
        out = rt.generate([prompt] * 100, mode="speculative", max_new_tokens=2, do_sample=True, seed=seed,
                          draft_tokens=1, eos=[], **shape)
        for row in out.token_ids:
            counts[tuple(row)] += 1  # a KeyError would be a token outside top-k: a failure too
            samples += 1
    keys = list(cells)
    assert _chi2_p_value(np.array([counts[c] for c in keys]), samples * np.array([cells[c] for c in keys])) > 1e-6


def test_adaptive_draft_length_follows_the_acceptance_rate():
    policy = AdaptiveDraft(cost_ratio=0.2, k_max=8, rate=0.9)
    assert policy.next_k() >= 4
    for _ in range(20):
        policy.update(accepted=0, trials=4)
    ks = [policy.next_k() for _ in range(8)]
    assert set(ks) == {0, 1} and ks.count(1) == 2  # plain steps, with a k = 1 probe every 4th round
    assert accept_greedy(np.array([3, 4, 5]), np.eye(8)[[3, 4, 1, 2]]) == (2, 1)
    assert accept_greedy(np.array([3, 4]), np.eye(8)[[3, 4, 6]]) == (2, 6)  # all accepted: the bonus token


def test_bad_input_is_one_clear_error(tiny_rt, tiny_artifact, tmp_path):
    with pytest.raises(InputError, match="draft_tokens is 0"):
        tiny_rt.generate([1, 2], mode="speculative", draft_tokens=0)
    with pytest.raises(InputError, match="positions remain after the"):
        tiny_rt.generate([1, 2], mode="speculative", draft_tokens=tiny_rt.max_positions, max_new_tokens=4)
    with pytest.raises(InputError, match="applies to mode 'speculative' only"):
        tiny_rt.generate([1, 2], mode="base_shadow", draft_tokens=3)
    for drop in ("base_shadow", "shadow_only"):
        art = copy_artifact(tiny_artifact, tmp_path / drop)
        manifest = json.loads((art / "manifest.json").read_text())
        del manifest["modes"][drop]
        (art / "manifest.json").write_text(json.dumps(manifest))
        rt = ShadowRuntime.load(art, threads=1, modes=())
        with pytest.raises(InputError, match="speculative needs the graphs of shadow_only and base_shadow"):
            rt.generate([1, 2], mode="speculative")


def test_cli_speculative(tiny_artifact):
    run = [sys.executable, "-m", "shadow_edge.cli", "run", str(tiny_artifact), "--threads", "1", "--prompt", "Hi",
           "--max-new-tokens", "6"]
    ok = subprocess.run(run + ["--mode", "speculative", "--draft-tokens", "2", "--json"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["mode"] == "speculative" and out["speculative"]["drafted"] > 0 and "acceptance_rate" in out["speculative"]
    assert "speculative:" in ok.stderr and "drafted tokens accepted" in ok.stderr
    base = subprocess.run(run + ["--mode", "base_shadow", "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(base.stdout)["token_ids"] == out["token_ids"]
    bad = subprocess.run(run + ["--mode", "speculative", "--draft-tokens", "0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "draft_tokens is 0" in bad.stderr


def test_cascade_escalation_reuses_the_shadow_prompt_pass(agreeing_rt, monkeypatch):
    """Escalated rows equal base_shadow's answers, and the shadow graph runs over the prompt once (not twice)."""
    rt = agreeing_rt
    shadow_graph = rt.pipeline("base_shadow").shadow
    widths, runs = [], []
    run_in_place, run_bound = shadow_graph.run_in_place, shadow_graph.run_bound

    def counting(feed, kv, *bound):  # the multi-token passes (prompts)
        widths.append(feed["input_ids"].shape()[1])
        return run_in_place(feed, kv, *bound)

    def counting_runs(io):  # every run of the graph: those passes and a decode loop's steps (decode_state.DecodeState)
        runs.append(io)
        return run_bound(io)

    monkeypatch.setattr(shadow_graph, "run_in_place", counting)
    monkeypatch.setattr(shadow_graph, "run_bound", counting_runs)
    base = rt.generate(BATCH, mode="base_shadow", max_new_tokens=6, eos=[])
    shadow = rt.generate(BATCH, mode="shadow_only", max_new_tokens=6, eos=[])
    widths.clear()
    runs.clear()
    out = rt.generate(BATCH, mode="cascade", max_new_tokens=6, eos=[], cascade_threshold=1.0)
    assert out.answered_by == ["base_shadow"] * 3 and out.token_ids == base.token_ids
    merged = rt.step_graph("shadow_only") is not None and rt.step_graph("base_shadow") is not None
    steps = 0 if merged else 5 + 5  # decode steps run the merged step graphs where the artifact has them
    assert widths == [max(map(len, BATCH))] and len(runs) == 1 + steps  # the prompt once
    conf = rt.generate(BATCH, mode="cascade", max_new_tokens=6, eos=[], cascade_threshold=0.0).confidence
    mid = sorted(conf)[1]  # escalate the rows below the middle confidence only
    out = rt.generate(BATCH, mode="cascade", max_new_tokens=6, eos=[], cascade_threshold=mid)
    for r in range(3):
        want = base if conf[r] < mid else shadow
        assert out.token_ids[r] == want.token_ids[r] and out.answered_by[r] == ("base_shadow" if conf[r] < mid
                                                                                   else "shadow_only")


def test_bench_speculative_record(tiny_artifact):
    from shadow_edge.bench import BenchOptions
    from shadow_edge.bench.report import RECORD_KEYS, format_table
    from shadow_edge.bench.runner import run_bench

    records = run_bench(tiny_artifact, BenchOptions(modes=("base_shadow", "speculative"), prompt_len=8, new_tokens=6,
                                                    reps=1, warmup=0, threads=1, bandwidth_mib=0,
                                                    strategy_options=(("draft_tokens", 2),)),
                        progress=lambda msg: None)
    assert [r["mode"] for r in records] == ["base_shadow", "speculative"]
    assert all(set(RECORD_KEYS) <= set(r) for r in records) and records[0]["speculative"] is None
    spec = records[1]["speculative"]
    assert spec["draft_tokens"] == 2 and spec["rounds"] >= 1 and 0 <= spec["acceptance_rate"] <= 1
    assert records[1]["artifact_bytes"] >= records[0]["artifact_bytes"] and "speculative" in format_table(records)
    with pytest.raises(InputError, match="draft_tokens"):
        BenchOptions(modes=("speculative",), strategy_options=(("draft_tokens", 0),))
