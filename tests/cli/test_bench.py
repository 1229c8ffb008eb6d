"""`shadow-edge bench` and benchmarks/suites/compare.py: every JSON field present, plots written headless. No timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from runtime_fixtures import artifact_of, tiny_artifact  # noqa: F401  (fixtures)
from shadow_edge.bench import BenchOptions
from shadow_edge.bench.weights import ELEM_BYTES, weight_bytes_per_token
from shadow_edge.errors import InputError
from shadow_edge.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
BENCH_KEYS = {
    "schema", "tool", "versions", "machine", "threads", "provider", "read_bandwidth_gbs", "bandwidth_method",
    "artifact", "mode", "created_utc", "workload", "load_ms", "prefill_ms", "ttft_ms", "ttft_ms_p90",
    "decode_ms_p50", "decode_ms_p90", "decode_ms_mean", "decode_tok_s", "e2e_ms", "e2e_tok_s", "reps",
    "decode_steps", "peak_rss_bytes", "peak_rss_scope", "rss_before_load_bytes", "artifact_bytes",
    "weight_bytes_per_token", "achieved_gbs", "bandwidth_fraction",
}
COMPARE_TOP_KEYS = {"schema", "created_utc", "command", "preset", "workload", "machine", "versions", "threads",
                    "read_bandwidth_gbs", "bandwidth_method", "artifact", "records", "elapsed_s", "ratios",
                    "adapter_overhead", "targets"}
COMPARE_RECORD_KEYS = {
    "key", "family", "mode", "weights", "status", "note", "load_ms", "reps", "decode_steps", "ttft_ms",
    "ttft_ms_p90", "decode_ms_p50", "decode_ms_p90", "decode_ms_mean", "decode_tok_s", "e2e_ms", "e2e_tok_s",
    "peak_rss_bytes", "peak_rss_scope", "rss_before_load_bytes", "size_bytes", "weight_bytes_per_token",
    "achieved_gbs", "bandwidth_fraction", "tokens",
}
SUMMARY_KEYS = {"reps", "decode_steps", "ttft_ms", "ttft_ms_p90", "decode_ms_p50", "decode_ms_p90",
                "decode_ms_mean", "decode_tok_s", "e2e_ms", "e2e_tok_s"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Runs the CLI with torch and transformers unimportable: the benchmark is part of the torch-free runtime.
NO_TORCH_CLI = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
                "from shadow_edge.cli import main; sys.exit(main(sys.argv[1:]))")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("field,value", [
    ("modes", ()), ("modes", ("cascade",)), ("modes", ("shadow_only", "shadow_only")), ("prompt_len", 0),
    ("new_tokens", 1), ("batch", 0), ("reps", 0), ("warmup", -1), ("threads", 0), ("bandwidth_mib", -1),
    ("prompt_len", True), ("reps", 2.0),
])
def test_bench_options_reject(field, value):
    with pytest.raises(InputError, match=field if field != "modes" else "mode"):
        BenchOptions(**{field: value})


def test_bench_cli_json_and_plot(tiny_artifact, tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    proc = run_cli("bench", str(tiny_artifact), "--modes", "shadow_only,base_shadow", "--prompt-len", "8",
                   "--new-tokens", "4", "--reps", "2", "--warmup", "1", "--threads", "1", "--bandwidth-mib", "16",
                   "--json", str(out_json), "--plot", str(out_png))
    assert proc.returncode == 0, proc.stderr
    assert "[bench] shadow_only: rep 2/2" in proc.stderr and "decode ms p50/p90" in proc.stderr
    records = json.loads(out_json.read_text())["records"]
    assert [r["mode"] for r in records] == ["shadow_only", "base_shadow"]
    manifest = read_manifest(tiny_artifact)
    for r in records:
        assert BENCH_KEYS <= set(r), BENCH_KEYS - set(r)
        assert r["reps"] == 2 and r["decode_steps"] == 2 * 3 and r["threads"] == 1
        assert r["workload"] == {"prompt_len": 8, "new_tokens": 4, "batch": 1, "reps": 2, "warmup": 1,
                                 "greedy": True, "seed": 0}
        assert r["artifact_bytes"] == manifest.mode_bytes(r["mode"])
        assert r["provider"] == "CPUExecutionProvider"
        assert r["machine"]["cpu_model"] and r["versions"]["onnxruntime"]
        assert len(r["artifact"]["manifest_sha256"]) == 64
        assert all(r[k] is not None for k in BENCH_KEYS)
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_bench_batch_and_no_bandwidth(tiny_artifact, tmp_path):
    out_json = tmp_path / "b.json"
    proc = run_cli("bench", str(tiny_artifact), "--modes", "base_shadow", "--prompt-len", "3", "--new-tokens", "2",
                   "--batch", "2", "--reps", "1", "--warmup", "0", "--threads", "1", "--bandwidth-mib", "0",
                   "--json", str(out_json))
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(out_json.read_text())["records"]
    assert r["workload"]["batch"] == 2 and r["decode_steps"] == 1
    assert r["read_bandwidth_gbs"] is None and r["bandwidth_fraction"] is None


@pytest.mark.parametrize("args,needle", [
    (["--modes", "base_plain"], "plain_backbone"),
    (["--modes", "turbo"], "cannot be benchmarked"),
    (["--new-tokens", "1"], "new_tokens"),
    (["--prompt-len", "100000"], "max_positions"),
])
def test_bench_cli_errors_are_one_line(tiny_artifact, args, needle):
    proc = run_cli("bench", str(tiny_artifact), "--bandwidth-mib", "0", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_cli_missing_artifact(tmp_path):
    proc = run_cli("bench", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _onnx_weight_bytes(art: Path, files: list[str]) -> int:
    """The same count with the onnx package: initializers deduplicated by storage, tables read only by Gather /
    GatherBlockQuantized one row."""
    full, row = {}, {}
    for f in files:
        model = onnx.load(str(art / f), load_external_data=False)
        used: dict[str, set] = {}
        for node in model.graph.node:
            for name in node.input:
                used.setdefault(name, set()).add(node.op_type)
        for t in model.graph.initializer:
            ext = {e.key: e.value for e in t.external_data}
            key = (ext["location"], int(ext.get("offset", 0))) if ext else (f, t.name)
            size = int(ELEM_BYTES[t.data_type] * max(1, int(__import__("math").prod(t.dims))))
            if used.get(t.name) and used[t.name] <= {"Gather", "GatherBlockQuantized"}:
                row[key] = size // (t.dims[0] if t.dims else 1)  # a scalar index constant: itself
            else:
                full[key] = size
    return sum(full.values()) + sum(v for k, v in row.items() if k not in full)


@pytest.mark.parametrize("name", ["qwen3_implicit", "llama_untied", "qwen3_explicit"])
def test_weight_bytes_match_onnx(artifact_of, name):
    _, art = artifact_of(name)
    manifest = read_manifest(art)
    for mode, roles in manifest.modes.items():
        files = [manifest.graphs[g].file for g in roles.values()]
        assert weight_bytes_per_token(art, manifest, mode) == _onnx_weight_bytes(art, files)
    assert weight_bytes_per_token(art, manifest, "shadow_only") < weight_bytes_per_token(art, manifest, "base_shadow")


@pytest.mark.slow
def test_compare_tiny_preset(tmp_path):
    out, md = tmp_path / "out", tmp_path / "RESULTS.md"
    md.write_text("# results\n\nhand-written text stays\n")
    cmd = [sys.executable, "-m", "benchmarks.suites.compare", "--preset", "tiny", "--prompt-len", "8",
           "--new-tokens", "4", "--reps", "1", "--reference-reps", "1", "--warmup", "1", "--warmup-tokens", "2",
           "--threads", "1", "--bandwidth-mib", "16", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
           "--sweep", "--sweep-prompts", "4,8", "--sweep-new", "2,3", "--results-md", str(md)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert COMPARE_TOP_KEYS <= set(result), COMPARE_TOP_KEYS - set(result)
    by_key = {r["key"]: r for r in result["records"]}
    required = ["shadow-edge/shadow_only", "shadow-edge/base_shadow", "shadow-edge/base_plain",
                "shadow-peft/shadow_only", "shadow-peft/base_shadow", "transformers/plain"]
    assert all(by_key[k]["status"] == "ok" for k in required)
    for key in ("ort-genai/fp32", "ort-genai/int4"):  # optional anchor: measured, or skipped with a note
        assert by_key[key]["status"] in ("ok", "skipped") and by_key[key]["note"]
    for r in result["records"]:
        if r["status"] == "ok":
            assert COMPARE_RECORD_KEYS <= set(r), (r["key"], COMPARE_RECORD_KEYS - set(r))
            assert len(r["tokens"]) == 4 and r["decode_steps"] == 3
            if r["family"] == "shadow-peft":
                assert "sweep" not in r  # the slow reference is not swept by default
            else:
                assert set(r["sweep"]) == {"prompt", "new"}
                assert [p["prompt_len"] for p in r["sweep"]["prompt"]] == [4, 8]
                assert [p["new_tokens"] for p in r["sweep"]["new"]] == [2, 3]
                assert all(SUMMARY_KEYS <= set(p) for p in r["sweep"]["prompt"] + r["sweep"]["new"])
    # greedy decoding must agree with the reference implementation, token for token
    assert by_key["shadow-edge/shadow_only"]["tokens"] == by_key["shadow-peft/shadow_only"]["tokens"]
    assert by_key["shadow-edge/base_shadow"]["tokens"] == by_key["shadow-peft/base_shadow"]["tokens"]
    assert by_key["shadow-edge/base_plain"]["tokens"] == by_key["transformers/plain"]["tokens"]
    assert result["adapter_overhead"] is not None and len(result["targets"]) == 7
    for name in ("compare.png", "sweep.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    summary = (out / "summary.md").read_text()
    assert "| shadow-edge/base_shadow |" in summary and "Ratios" in summary
    text = md.read_text()
    assert text.startswith("# results\n\nhand-written text stays\n")
    assert "<!-- BEGIN compare.py results -->" in text and "(out/compare.png)" in text
