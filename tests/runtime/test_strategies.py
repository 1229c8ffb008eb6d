"""Generation strategies are units found by name: a new one plugs into the runtime without runtime edits."""

from __future__ import annotations

import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.errors import InputError
from shadow_edge.runtime import ALL_MODES
from shadow_edge.runtime.strategies import base, mode_names, strategy
from shadow_edge.runtime.strategies.base import StepRecord, StepStrategy


class Repeat(StepStrategy):
    """A toy strategy: two tokens per step, each a copy of the last prompt token (no model)."""

    name, order = "repeat_last", 50  # uses no graphs

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        made = 0
        while made < opts.max_new_tokens:
            n = min(2, opts.max_new_tokens - made)
            yield StepRecord([[] if state.done[r] else [int(ids[r, -1])] * n for r in range(ids.shape[0])],
                             None, 1.0)
            made += n
        stats["steps"] = made


def test_registry_lists_the_built_in_strategies():
    assert mode_names()[:3] == ("shadow_only", "base_shadow", "cascade") and set(ALL_MODES) <= set(mode_names())
    assert "base_plain" in mode_names() and "base_plain" not in ALL_MODES  # accepted, not advertised
    assert strategy("cascade").available(("shadow_only", "base_shadow"))
    assert not strategy("cascade").available(("shadow_only",))


def test_a_new_strategy_is_one_registration(tiny_rt, monkeypatch):
    with pytest.raises(InputError, match="repeat_last"):
        tiny_rt.generate([3, 4, 5], mode="repeat_last", max_new_tokens=3)
    monkeypatch.setitem(base._REGISTRY, Repeat.name, Repeat())
    out = tiny_rt.generate([3, 4, 5], mode="repeat_last", max_new_tokens=5, eos=[])
    assert out.token_ids == [5] * 5 and out.finish_reason == "length"
    # steps of 2, 2, 1 tokens: the first is the time to first token, the others count per token (ms / n)
    assert out.timings.decode_ms_per_token == [0.5, 0.5, 1.0]
    batch = tiny_rt.generate([[3, 4], [7]], mode="repeat_last", max_new_tokens=3, eos=[7])
    assert batch.token_ids == [[4, 4, 4], [7]] and batch.finish_reason == ["length", "eos"]
    assert "repeat_last" in tiny_rt.modes
