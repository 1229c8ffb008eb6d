"""A new strategy with an option and a stat is one registration: it reaches the API, the CLI and the server
without edits elsewhere (the options/stats registry of issue 24)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import httpx
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from serve_fixtures import LiveServer
from shadow_edge.errors import InputError
from shadow_edge.runtime.inputs import as_int
from shadow_edge.runtime.strategies import base
from shadow_edge.runtime.strategies.base import StepRecord, StepStrategy, register


@dataclass(frozen=True)
class EchoOptions:
    times: int = field(default=1, metadata={"name": "echo_times", "help": "echo: copies of the last prompt token "
                                                                          "per step (>= 1)"})

    def __post_init__(self):
        object.__setattr__(self, "times", as_int(self.times, "echo_times", 1))


@dataclass(frozen=True)
class EchoStats:
    steps: int

    def to_dict(self) -> dict:
        return asdict(self)


class Echo(StepStrategy):
    """Repeats the last prompt token, `echo_times` tokens per step (no model)."""

    name, order = "echo", 60
    Options, Stats = EchoOptions, EchoStats

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        made, n = 0, opts.strategy.times
        stats["steps"] = 0
        while made < opts.max_new_tokens and not state.done.all():
            k = min(n, opts.max_new_tokens - made)
            yield StepRecord([[] if state.done[r] else [int(ids[r, -1])] * k for r in range(ids.shape[0])], None, 1.0)
            made += k
            stats["steps"] += 1


@pytest.fixture
def echo():
    register(Echo())
    yield
    del base._REGISTRY["echo"]


def test_api(echo, tiny_rt):
    out = tiny_rt.generate([3, 4, 5], mode="echo", max_new_tokens=5, eos=[], echo_times=2)
    assert out.token_ids == [5] * 5 and out.stats == EchoStats(steps=3) and out.to_dict()["echo"] == {"steps": 3}
    assert tiny_rt.generate([3, 4, 5], mode="echo", max_new_tokens=5, eos=[]).stats.steps == 5  # the default
    with pytest.raises(InputError, match="echo_times is 0"):
        tiny_rt.generate([3, 4, 5], mode="echo", echo_times=0)
    with pytest.raises(InputError, match="echo_times applies to mode 'echo' only"):
        tiny_rt.generate([3, 4, 5], mode="shadow_only", echo_times=2)
    with pytest.raises(ValueError, match="already used"):  # public names are unique across strategies
        register(type("Clash", (Echo,), {"name": "echo2"})())


def test_cli(echo, tiny_artifact, capsys):
    from shadow_edge.cli import main

    assert main(["run", str(tiny_artifact), "--mode", "echo", "--input-ids", "3,4,5", "--max-new-tokens", "4",
                 "--echo-times", "4", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["echo"] == {"steps": 1} and out["token_ids"][:1] == [5]
    assert main(["inspect", str(tiny_artifact)]) == 0
    assert "--echo-times (echo_times, default 1)" in capsys.readouterr().out


@pytest.mark.integration
def test_server(echo, tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("tiny",)) as srv:
        body = {"model": "tiny:echo", "prompt": [3, 4, 5], "max_tokens": 6, "echo_times": 3, "ignore_eos": True}
        r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["shadow_edge"]["echo"] == {"steps": 2} and r.json()["shadow_edge"]["token_ids"] == [5] * 6
        bad = httpx.post(f"{srv.url}/v1/completions", json={**body, "echo_times": "many"}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "echo_times"
