"""Every decode loop steps through the one decode state (runtime/decode_state.py): each strategy and the server's
continuous batch, counted. A graph chain run from anywhere else during generation fails the test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.runtime import decode_state
from shadow_edge.runtime.generate import Pipeline
from shadow_edge.runtime.session import GraphSession
from shadow_edge.runtime.strategies import registry
from shadow_edge.serve.slots import SlotBatch

ALLOWED = {"decode_state.py"}  # who may run a graph chain (Pipeline.step) or a bound step during generation


@pytest.fixture
def callers(monkeypatch):
    """{what: set of caller file names} of Pipeline.step and GraphSession.run_bound while the test runs."""
    seen: dict[str, set[str]] = {"Pipeline.step": set(), "run_bound": set(), "Pipeline.run": set(), "run": set()}
    step, run_bound, pipe_run, run = Pipeline.step, GraphSession.run_bound, Pipeline.run, GraphSession.run

    def caller() -> str:
        return Path(sys._getframe(2).f_code.co_filename).name

    def counted_step(self, *a, **kw):
        seen["Pipeline.step"].add(caller())
        return step(self, *a, **kw)

    def counted_run_bound(self, io):
        seen["run_bound"].add(caller())
        return run_bound(self, io)

    def counted_pipe_run(self, *a, **kw):  # one graph of a chain in place: only under Pipeline.step
        seen["Pipeline.run"].add(caller())
        return pipe_run(self, *a, **kw)

    def counted_run(self, feed):  # a head without KV: only under Pipeline.step
        seen["run"].add(caller())
        return run(self, feed)

    monkeypatch.setattr(Pipeline, "run", counted_pipe_run)
    monkeypatch.setattr(GraphSession, "run", counted_run)
    monkeypatch.setattr(Pipeline, "step", counted_step)
    monkeypatch.setattr(GraphSession, "run_bound", counted_run_bound)
    return seen


def steps_of(fn) -> dict[str, int]:
    before = dict(decode_state.STEP_CALLS)
    fn()
    return {k: v - before.get(k, 0) for k, v in decode_state.STEP_CALLS.items() if v != before.get(k, 0)}


@pytest.mark.parametrize("mode", [m for m in registry() if m != "base_plain"])
def test_every_strategy_steps_through_the_decode_state(tiny_rt, callers, mode):
    kw = {"cascade_threshold": 1.0} if mode == "cascade" else {}  # escalate: both cascade passes run
    for sampling in ({}, {"do_sample": True, "temperature": 0.8, "seed": 1}):
        counts = steps_of(lambda: tiny_rt.generate(["The river", "Trains run"], mode=mode, max_new_tokens=6, eos=(),
                                                   **sampling, **kw))
        assert counts.get("advance", 0) >= 1 and counts.get("step", 0) >= 1, (mode, counts)
    check(callers)


def check(callers: dict[str, set[str]]) -> None:
    assert callers["Pipeline.step"] <= ALLOWED, callers
    assert callers["Pipeline.run"] <= {"generate.py"} and callers["run"] <= {"generate.py"}, callers
    assert callers["run_bound"] <= ALLOWED | {"session.py"}, callers  # session.py: run_in_place, under Pipeline.run


def test_the_servers_batch_steps_through_the_decode_state(tiny_rt, callers):
    batch = SlotBatch(tiny_rt.pipeline("base_shadow"), 2, tiny_rt.pad_id, merged=tiny_rt.step_graph("base_shadow"))

    def serve():
        n = batch.join("row", tiny_rt.codec.encode("The river"))
        batch.prefill(n)
        batch.seat(n, int(np.argmax(n.logits[0])))
        for _ in range(3):
            batch.step()

    counts = steps_of(serve)
    assert counts == {"advance": 1, "step": 3}
    assert isinstance(batch.state, decode_state.DecodeState)
    check(callers)
