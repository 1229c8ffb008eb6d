"""`shadow-edge` CLI: run / inspect / export / demo work, and every user error is one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtime_fixtures import copy_artifact, tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.cli import main


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_prints_text_and_timings(capsys, tiny_artifact):
    rc, out, err = cli(capsys, "run", tiny_artifact, "--mode", "shadow_only", "--prompt", "The river",
                       "--max-new-tokens", "6", "--threads", "1")
    assert rc == 0 and out.endswith("\n")
    assert "shadow_only: 6 tokens, prefill" in err and "tok/s" in err


def test_run_json_stream_and_ids(capsys, tiny_artifact):
    rc, out, _ = cli(capsys, "run", tiny_artifact, "--mode", "cascade", "--input-ids", "5,6,7", "--json",
                     "--max-new-tokens", "4", "--threads", "1", "--cascade-threshold", "0")
    data = json.loads(out)
    assert rc == 0 and data["answered_by"] == "shadow_only" and data["prompt_tokens"] == 3
    assert set(data["timings"]) >= {"prefill_ms", "decode_ms_per_token", "tokens_per_s"}
    rc, text, _ = cli(capsys, "run", tiny_artifact, "--mode", "base_shadow", "--prompt", "Hi", "--chat",
                      "--max-new-tokens", "5", "--threads", "1")
    rc2, streamed, _ = cli(capsys, "run", tiny_artifact, "--mode", "base_shadow", "--prompt", "Hi", "--chat",
                           "--stream", "--max-new-tokens", "5", "--threads", "1")
    assert rc == rc2 == 0 and text == streamed
    rc, out, _ = cli(capsys, "run", tiny_artifact, "--mode", "base_shadow", "--prompt", "Hi", "--chat", "--json",
                     "--max-new-tokens", "2", "--threads", "1")
    data = json.loads(out)  # --chat --json shows what the model saw
    assert data["prompt_text"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert len(data["prompt_ids"]) == data["prompt_tokens"]
    rc, a, _ = cli(capsys, "run", tiny_artifact, "--mode", "shadow_only", "--prompt", "Hi", "--seed", "3",
                   "--top-k", "20", "--json", "--threads", "1")
    rc, b, _ = cli(capsys, "run", tiny_artifact, "--mode", "shadow_only", "--prompt", "Hi", "--seed", "3",
                   "--top-k", "20", "--json", "--threads", "1")
    assert json.loads(a)["token_ids"] == json.loads(b)["token_ids"]


def test_inspect(capsys, tiny_artifact):
    rc, out, _ = cli(capsys, "inspect", tiny_artifact, "--verify")
    assert rc == 0
    for words in ("sha256 verified", "vocab 512", "shadow_only", "base_shadow", "cascade", "lm_head",
                  "shadow_hidden_states", "validation"):
        assert words in out
    rc, out, _ = cli(capsys, "inspect", tiny_artifact, "--json")
    assert rc == 0 and json.loads(out)["format"] == "shadow-edge-artifact"


BAD_RUNS = [
    ("--prompt", ""),
    ("--input-ids", "1,2,99999"),
    ("--input-ids", "1,x"),
    ("--input-ids", "1,,2"),  # an empty item is an error, not skipped
    ("--input-ids", "1,2,"),
    ("--input-ids", " , "),
    ("--prompt", "caf\udce9"),  # undecodable argv byte (surrogateescape): not UTF-8
    ("--prompt", "hi", "--stop", "\udcff"),
    ("--prompt", "hi", "--max-new-tokens", "0"),
    ("--prompt", "hi", "--max-new-tokens", "100000"),
    ("--prompt", "hi", "--mode", "turbo"),
    ("--prompt", "hi", "--temperature", "-1"),
    ("--prompt", "hi", "--top-p", "0"),
    ("--prompt", "hi", "--top-k", "-1"),
    ("--prompt", "hi", "--threads", "0"),
    ("--prompt", "hi", "--max-new-tokens", "abc"),  # argparse-level error
    ("--input-ids", "1,2", "--chat"),
    (),  # neither --prompt nor --input-ids
]


@pytest.mark.parametrize("extra", BAD_RUNS)
def test_bad_run_prints_one_line_and_exits_2(capsys, tiny_artifact, extra):
    try:
        rc, out, err = cli(capsys, "run", tiny_artifact, "--threads", "1", *extra) if "--threads" not in extra \
            else cli(capsys, "run", tiny_artifact, *extra)
    except SystemExit as e:  # argparse errors exit from inside parse_args
        rc, (out, err) = e.code, capsys.readouterr()
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_ascii_only_terminal_does_not_crash(tiny_rt, tiny_artifact):
    import os

    first = next(i for i in range(3, 512)  # a prompt whose greedy answer is not ASCII
                 if not tiny_rt.generate([i], mode="shadow_only", max_new_tokens=8).text.isascii())
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for extra in ((), ("--stream",), ("--json",)):
        proc = subprocess.run([sys.executable, "-m", "shadow_edge.cli", "run", str(tiny_artifact), "--mode",
                               "shadow_only", "--input-ids", str(first), "--max-new-tokens", "8", "--threads", "1",
                               *extra], capture_output=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode("ascii", "replace")
        assert proc.stdout.strip() and proc.stdout.isascii() and b"Traceback" not in proc.stderr


def test_non_utf8_argv_bytes_are_one_line(tiny_artifact):
    """A prompt of bytes that are not UTF-8 (argv decodes them to lone surrogates): exit 2, one line."""
    proc = subprocess.run([sys.executable, "-m", "shadow_edge.cli", "run", str(tiny_artifact), "--prompt",
                           b"caf\xe9 \xff", "--threads", "1"], capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and err.startswith("error: prompt 0 is not valid Unicode") and err.count("\n") == 1


def test_broken_artifacts_print_one_line(capsys, tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "art")
    (art / "lm_head.onnx").write_bytes(b"garbage")
    for argv in (("run", art, "--prompt", "hi"), ("inspect", art, "--verify"), ("run", tmp_path / "nope",
                                                                                 "--prompt", "hi")):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_help_teaches_with_examples():
    proc = subprocess.run([sys.executable, "-m", "shadow_edge.cli", "run", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--cascade-threshold" in proc.stdout


def test_subprocess_error_has_no_traceback(tiny_artifact):
    proc = subprocess.run([sys.executable, "-m", "shadow_edge.cli", "run", str(tiny_artifact), "--prompt", "hi",
                           "--top-p", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "top_p" in proc.stderr


def test_bench_is_dispatched_lazily(capsys, monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("shadow_edge.bench.cli")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "shadow_edge.bench", types.ModuleType("shadow_edge.bench"))
    monkeypatch.setitem(sys.modules, "shadow_edge.bench.cli", fake)
    assert main(["bench", "ART", "--help"]) == 0 and seen["argv"] == ["ART", "--help"]


def test_export_then_run(capsys, tiny_default, tmp_path):
    out = tmp_path / "art"
    rc, stdout, err = cli(capsys, "export", "--base", tiny_default.base_dir, "--adapter", tiny_default.adapter_dir,
                          "--out", out, "--no-validate")
    assert rc == 0 and (out / "manifest.json").is_file()
    assert stdout.count("\n") == 1 and f"exported {out} (" in stdout and "validation skipped" in stdout
    rc, stdout, err = cli(capsys, "export", "--base", tiny_default.base_dir, "--adapter", tiny_default.adapter_dir,
                          "--out", tmp_path / "art8", "--quantize", "int8")
    assert rc == 0 and stdout.count("\n") == 1 and "validated against PyTorch, worst error" in stdout
    assert "% of the " in stdout and "int8" in stdout
    rc, _, err = cli(capsys, "export", "--base", tiny_default.base_dir, "--adapter", tiny_default.adapter_dir,
                     "--out", out)
    assert rc == 2 and "--force" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "run", out, "--mode", "base_shadow", "--prompt", "Hi", "--max-new-tokens", "3",
                     "--threads", "1")
    assert rc == 0


def test_export_warns_when_validation_passes_with_little_margin():
    from types import SimpleNamespace

    from shadow_edge.cli import export_summary

    manifest = SimpleNamespace(files={"a": {"bytes": 2_000_000}}, quantization="int4", validation={
        "passed": True, "outputs": {"shadow_only.logits": {"max_abs_err": 0.01, "allowed": 0.1},
                                    "base_shadow.logits": {"max_abs_err": 0.09, "allowed": 0.1}}})
    line, warning = export_summary("ART", manifest)
    assert "worst error 9.00e-02 on base_shadow.logits (90% of the 1.00e-01 allowed)" in line
    assert warning is not None and "little margin" in warning and "--compare ART" in warning
    manifest.validation["outputs"]["base_shadow.logits"]["max_abs_err"] = 0.05
    assert export_summary("ART", manifest)[1] is None
    manifest.validation["int8_arithmetic"] = {  # int8 activations: their distance from float32 arithmetic too
        "base_shadow.logits": {"rel_rms": 0.03, "allowed_rel_rms": 0.25},
        "base_shadow.backbone.present": {"rel_rms": 0.225, "allowed_rel_rms": 0.25}}
    line, warning = export_summary("ART", manifest)
    assert "int8 arithmetic within 22.5% (relative RMS) of float32 on base_shadow.backbone.present (90% of" in line
    assert warning is not None and "int8 arithmetic moves base_shadow.backbone.present by 22.5%" in warning
    manifest.validation["int8_arithmetic"]["base_shadow.backbone.present"]["rel_rms"] = 0.1
    assert export_summary("ART", manifest)[1] is None


@pytest.mark.parametrize("command", [("bench", "--reps", "1"), ("run", "--prompt", "hi")])
def test_a_missing_adapter_pack_is_refused_before_any_work(capsys, tiny_artifact, tmp_path, command):
    rc, out, err = cli(capsys, command[0], tiny_artifact, "--adapter", f"x={tmp_path / 'gone'}", *command[1:])
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "no such adapter pack directory" in err  # no bandwidth probe or load first
