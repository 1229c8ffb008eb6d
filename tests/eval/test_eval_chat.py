"""`eval --chat`: chat JSONL scored on the assistant turns only, batched rows equal to each chat run alone."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime.chat_eval import chat_rows, evaluate_chats
from shadow_edge.runtime.sampling import log_softmax

CHATS = [
    [{"role": "user", "content": "Define the word lamp."}, {"role": "assistant", "content": "lamp (noun): a light."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "And?"},
     {"role": "assistant", "content": "Nothing more."}],
    [{"role": "user", "content": "What does tree mean?"}, {"role": "assistant", "content": "a tall plant"}],
]


@pytest.fixture
def chats(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    return path


def test_only_assistant_turns_are_scored(tiny_rt, chats):
    rows = chat_rows(tiny_rt, chats)
    for (ids, scored), messages in zip(rows, CHATS):
        want = []  # the assistant turns' tokens, end-of-turn included, rendered on their own
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before = tiny_rt.codec.encode(tiny_rt.chat_text(messages[:i]), add_special_tokens=False)
                upto = tiny_rt.codec.encode(tiny_rt.chat_text(messages[:i + 1], add_generation_prompt=False),
                                            add_special_tokens=False)
                assert upto[:len(before)] == before
                want += upto[len(before):]
        assert ids[scored].tolist() == want
        end_of_turn = tiny_rt.codec.encode("<|im_end|>", add_special_tokens=False)
        assert len(end_of_turn) == 1 and want.count(end_of_turn[0]) == sum(m["role"] == "assistant" for m in messages)


@pytest.mark.parametrize("mode", ["shadow_only", "base_shadow"])
def test_batched_perplexity_equals_each_chat_alone(tiny_rt, chats, mode):
    report = evaluate_chats(tiny_rt, chats, modes=(mode,), batch=3)
    nll, n = 0.0, 0
    for ids, scored in chat_rows(tiny_rt, chats):
        lp = log_softmax(tiny_rt.forward(ids[None], mode=mode)[0])  # [t, V]
        at = np.flatnonzero(scored)
        nll -= float(lp[at - 1, ids[at]].sum())
        n += len(at)
    q = report.modes[mode]
    assert q.tokens == n == report.tokens
    assert math.isclose(q.perplexity, math.exp(nll / n), rel_tol=1e-4)


def test_agreement_by_confidence_counts_the_assistant_tokens(tiny_rt, chats):
    report = evaluate_chats(tiny_rt, chats, modes=("shadow_only", "base_shadow"), batch=2)
    agree = correct = n = 0
    for ids, scored in chat_rows(tiny_rt, chats):
        at = np.flatnonzero(scored) - 1
        a = tiny_rt.forward(ids[None], mode="shadow_only")[0, at].argmax(-1)
        b = tiny_rt.forward(ids[None], mode="base_shadow")[0, at].argmax(-1)
        agree, correct, n = agree + int((a == b).sum()), correct + int((b == ids[at + 1]).sum()), n + len(at)
    bins = report.agreement_by_confidence
    assert sum(b.positions for b in bins) == n and report.agreement == pytest.approx(agree / n)
    assert sum(b.agreement * b.positions for b in bins if b.positions) == pytest.approx(agree)
    assert sum(b.base_shadow_accuracy * b.positions for b in bins if b.positions) == pytest.approx(correct)
    assert evaluate_chats(tiny_rt, chats, modes=("base_shadow",)).agreement_by_confidence == []


def test_cli_chat_and_its_errors(capsys, tiny_artifact, chats, tmp_path):
    assert main(["eval", str(tiny_artifact), "--chat", str(chats), "--quiet", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "shadow_only" in out and "base_shadow" in out and "agreement" in out
    assert "by base_shadow's top-1 probability" in out
    assert re.search(r"\n  \[0\.\d, [01]\.\d[)\]] +\d+ +[01]\.\d{3} ", out)  # a bin's row
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n[1, 2]\n')
    assert main(["eval", str(tiny_artifact), "--chat", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2" in err and "messages" in err
    with pytest.raises(InputError, match="no chat with an assistant turn"):
        evaluate_chats(tiny_rt_from(tiny_artifact), _write(tmp_path, [CHATS[0][:1]]))


def tiny_rt_from(art):
    from runtime_fixtures import runtime_once
    return runtime_once("tiny_default", art)


def _write(tmp_path, chats):
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    return path
