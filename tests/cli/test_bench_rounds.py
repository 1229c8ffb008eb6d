"""shadow_edge.bench.rounds: rotation of run and load orders, samples, medians, spreads and paired ratios.

A fake clock makes every wall time exact, so these check the arithmetic and the orders, never a real timing.
"""

from __future__ import annotations

import pytest

from shadow_edge.bench.rounds import Contestant, paired_ratios, rotate, run_rounds, spread, summarize_rounds


class FakeClock:
    """Advances only when a contestant 'works': work(ms) moves time forward by ms."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, ms: float) -> None:
        self.now += ms / 1e3


def test_rotate():
    assert rotate("abc", 0) == ["a", "b", "c"]
    assert rotate("abc", 1) == ["b", "c", "a"]
    assert rotate("abc", 5) == ["c", "a", "b"]
    assert rotate([], 3) == []


def test_run_orders_rotate_each_round_and_load_orders_each_pass():
    log = []
    cs = [Contestant(k, run=lambda k=k: log.append(("run", k)), load=lambda k=k: log.append(("load", k)),
                     close=lambda k=k: log.append(("close", k))) for k in "abc"]
    r = run_rounds(cs, reps=3, load_orders=3, warmup=1, clock=FakeClock())
    assert r.load_orders == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]
    # pass p, timed round i: the pass's load order rotated by i -> every contestant runs first once per pass
    assert r.run_orders[:3] == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]
    assert r.run_orders[3:6] == [("b", "c", "a"), ("c", "a", "b"), ("a", "b", "c")]
    assert [o[0] for o in r.run_orders].count("a") == 3
    # loads come first in a pass, then 1 warm-up round + 3 timed, then every contestant is closed
    first_pass = log[:3 + 3 + 9 + 3]
    assert first_pass[:3] == [("load", "a"), ("load", "b"), ("load", "c")]
    assert first_pass[-3:] == [("close", "a"), ("close", "b"), ("close", "c")]
    assert sum(1 for e in log if e[0] == "run") == 3 * (1 + 3) * 3
    for k in "abc":
        assert [s.round for s in r.samples[k]] == list(range(9))  # paired by index
        assert len(r.load_ms[k]) == 3
    assert {s.position for s in r.samples["a"]} == {0, 1, 2}


def test_warmup_is_not_recorded_and_values_are_kept():
    calls = {"a": 0}

    def run_a():
        calls["a"] += 1
        return calls["a"]

    r = run_rounds({"a": run_a}, reps=2, warmup=3, clock=FakeClock())
    assert calls["a"] == 5
    assert [s.value for s in r.samples["a"]] == [4, 5]


def test_wall_times_medians_spreads_and_paired_ratios():
    clock = FakeClock()
    # "slow" takes 2x "fast" in every round, but the machine slows down round by round (drift): round r runs
    # both at (r + 1) times their speed
    calls = []

    def make(factor):
        def run():
            ms = 10 * factor * (1 + len(calls) // 2)
            calls.append(ms)
            clock.work(ms)
            return ms
        return run

    r = run_rounds([Contestant("fast", make(1)), Contestant("slow", make(2))], reps=4, warmup=0,
                   clock=clock)
    assert [round(s.ms, 6) for s in r.samples["fast"]] == [10, 20, 30, 40]
    assert [round(s.ms, 6) for s in r.samples["slow"]] == [20, 40, 60, 80]
    table = summarize_rounds(r, metric=lambda s: s.ms)
    assert table["fast"]["median"] == pytest.approx(25)
    assert table["slow"]["min"] == pytest.approx(20) and table["slow"]["max"] == pytest.approx(80)
    # medians say 2x with a wide spread of values; paired per-round ratios say exactly 2x (drift cancels)
    assert table["slow"]["ratio"] == pytest.approx({"n": 4, "median": 2, "min": 2, "max": 2, "p25": 2, "p75": 2})
    assert table["fast"]["ratio"]["median"] == pytest.approx(1)
    tok_s = summarize_rounds(r, metric=lambda s: 1e3 / s.ms, first="slow")
    assert tok_s["fast"]["ratio"]["median"] == pytest.approx(2)


def test_spread_quartiles():
    s = spread([4, 1, 3, 2, 5])
    assert s == {"n": 5, "median": 3, "min": 1, "max": 5, "p25": 2, "p75": 4}
    assert spread([7]) == {"n": 1, "median": 7, "min": 7, "max": 7, "p25": 7, "p75": 7}
    with pytest.raises(ValueError):
        spread([])
    with pytest.raises(ValueError, match="pair"):
        paired_ratios([1, 2], [1])


def test_a_failed_load_closes_only_what_was_loaded():
    closed = []

    def boom():
        raise RuntimeError("load failed")

    cs = [Contestant("a", run=lambda: None, close=lambda: closed.append("a")),
          Contestant("b", run=lambda: None, load=boom, close=lambda: closed.append("b"))]
    with pytest.raises(RuntimeError, match="load failed"):
        run_rounds(cs, reps=1)
    assert closed == ["a"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        run_rounds([Contestant("a", run=lambda: None), Contestant("a", run=lambda: None)], reps=1)
    with pytest.raises(ValueError, match="reps"):
        run_rounds({"a": lambda: None}, reps=0)
