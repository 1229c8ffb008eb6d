"""benchmarks.suites.load against a live `shadow-edge serve` subprocess on a tiny artifact: the levels, the targets
it reports, and `--max-tokens-spread` (requests of different lengths, outputs compared with the serial run over the
shorter of the two)."""

from __future__ import annotations

import json

import pytest

from runtime_fixtures import tiny_artifact  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration  # a server on loopback


def test_load_suite_with_spread_lengths(tiny_artifact, tmp_path):  # noqa: F811
    from benchmarks.suites import load

    out = tmp_path / "load.json"
    assert load.main(["--artifact", str(tiny_artifact), "--concurrency", "1,3", "--requests", "6", "--max-tokens",
                      "6", "--max-tokens-spread", "3", "--threads", "1", "--stagger-ms", "5", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["max_tokens_spread"] == 3 and [r["concurrency"] for r in record["levels"]] == [1, 3]
    assert all(r["errors"] == 0 and r["greedy_equal_serial"] for r in record["levels"])
    lengths = record["max_tokens_per_request"]
    assert len(lengths) == 6 and all(3 <= n <= 9 for n in lengths) and len(set(lengths)) > 1
    assert [r["generated_tokens"] for r in record["levels"]] == [sum(lengths)] * 2  # ignore_eos: each its own length
    assert set(record["targets"]) == {"ttft_p50_le_2x_lone", "aggregate_ge_4x_one_client", "zero_errors",
                                      "outputs_equal_serial"}
    with pytest.raises(SystemExit):
        load.main(["--artifact", str(tiny_artifact), "--max-tokens", "4", "--max-tokens-spread", "4"])


def test_same_start_compares_over_the_shorter():
    from benchmarks.suites.load import same_start

    assert same_start([1, 2, 3], [1, 2]) and same_start([1], [1, 2, 3]) and same_start(None, None)
    assert not same_start([1, 2, 3], [1, 3]) and not same_start([1], None)
