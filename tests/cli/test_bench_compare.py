"""`shadow-edge bench A B`: two tiny artifacts timed interleaved, load order rotated; the JSON document and the
errors. Checks structure, orders and the arithmetic that needs no clock (a ratio to itself), never a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The benchmark is part of the torch-free runtime: torch and transformers unimportable.
NO_TORCH_CLI = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
                "from shadow_edge.cli import main; sys.exit(main(sys.argv[1:]))")
FAST = ("--prompt-len", "6", "--new-tokens", "3", "--threads", "1", "--bandwidth-mib", "0")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, timeout=300)


def test_two_artifacts_interleaved_with_rotated_load_orders(tiny_artifact_pair, tmp_path):
    a, b = tiny_artifact_pair
    out = tmp_path / "ab.json"
    proc = run_cli("bench", str(a), str(b), "--modes", "shadow_only,base_shadow", "--reps", "3", "--warmup", "1",
                   *FAST, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "shadow-edge-bench-compare/1"
    ka, kb = f"0:{a}", f"1:{b}"
    rounds = doc["rounds"]
    assert rounds["load_orders"] == [[ka, kb], [kb, ka]]  # default: one load order per artifact
    assert rounds["run_orders"] == [[ka, kb], [kb, ka], [ka, kb], [kb, ka], [ka, kb], [kb, ka]]
    assert {k: len(v) for k, v in rounds["load_ms"].items()} == {ka: 2, kb: 2}
    assert doc["workload"]["rounds_per_load_order"] == 3 and doc["workload"]["load_orders"] == 2
    assert [x["path"] for x in doc["artifacts"]] == [str(a), str(b)]
    assert doc["artifacts"][0]["quantization"] != doc["artifacts"][1]["quantization"]  # fp32 vs int8
    recs = {(r["artifact_index"], r["mode"]): r for r in doc["records"]}
    assert sorted(recs) == [(0, "base_shadow"), (0, "shadow_only"), (1, "base_shadow"), (1, "shadow_only")]
    for (i, mode), r in recs.items():
        assert r["reps"] == 6 and r["decode_steps"] == 6 * 2
        assert r["decode_tok_s_rounds"]["n"] == 6
        t = r["decode_tok_s_rounds"]
        assert t["min"] <= t["p25"] <= t["median"] <= t["p75"] <= t["max"]
        assert r["decode_tok_s_vs_first"]["n"] == 6
    for mode in ("shadow_only", "base_shadow"):  # the first artifact against itself: exactly 1 in every round
        assert recs[(0, mode)]["decode_tok_s_vs_first"] == {"n": 6, "median": 1.0, "min": 1.0, "max": 1.0,
                                                            "p25": 1.0, "p75": 1.0}
        assert recs[(0, mode)]["same_tokens_as_first"] is True
    assert "x first" in proc.stderr and "load order 2/2" in proc.stderr


def test_same_artifact_twice_gives_the_same_tokens(tiny_artifact_pair, tmp_path):
    a, _ = tiny_artifact_pair
    out = tmp_path / "aa.json"
    proc = run_cli("bench", str(a), str(a), "--modes", "base_plain", "--reps", "1", "--warmup", "0",
                   "--load-orders", "1", *FAST, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["rounds"]["load_orders"] == [[f"0:{a}", f"1:{a}"]]
    assert all(r["same_tokens_as_first"] for r in doc["records"])


@pytest.mark.parametrize("extra,needle", [
    (["--modes", "base_plain"], "plain_backbone"),  # the int8 artifact (second) has no base_plain
    (["--plot", "x.png"], "--plot"),
    (["--load-orders", "0"], "--load-orders"),
    (["--adapter", "x=/nonexistent"], "adapter"),
])
def test_compare_errors_are_one_line(tiny_artifact_pair, extra, needle):
    a, b = tiny_artifact_pair
    proc = run_cli("bench", str(a), str(b), *FAST, *extra)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and needle in proc.stderr
    assert "Traceback" not in proc.stderr
    if needle == "plain_backbone":
        assert str(b) in proc.stderr


def test_load_orders_needs_several_artifacts(tiny_artifact_pair):
    proc = run_cli("bench", str(tiny_artifact_pair[0]), "--load-orders", "2", *FAST)
    assert proc.returncode == 2 and "two or more" in proc.stderr and "Traceback" not in proc.stderr


def test_help_teaches_the_comparison():
    proc = run_cli("bench", "--help")
    assert proc.returncode == 0
    for phrase in ("OLD_ART NEW_ART", "INTERLEAVED", "--load-orders", "x first"):
        assert phrase in proc.stdout, phrase
