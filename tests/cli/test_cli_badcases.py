"""CLI bad cases of issue 24 outside the server: each one `error: ...` line and exit 2, checked before the long work."""

from __future__ import annotations

import os

import pytest

from runtime_fixtures import tiny_artifact  # noqa: F401  (fixture)
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime.inputs import max_threads


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", [
    ["run", "{art}", "--mode", "shadow_only", "--prompt", "Hi", "--max-new-tokens", "2"],
    ["eval", "{art}", "--text", "{text}", "--quiet"],
    ["bench", "{art}"],
    ["serve", "{art}"],
])
def test_absurd_thread_counts_are_refused_before_loading(tiny_artifact, tmp_path, capsys, command):
    """100000 onnxruntime threads hung `run`; the bound is 4x the CPUs, refused before any session is made."""
    text = tmp_path / "t.txt"
    text.write_text("The river runs to the sea. " * 20, encoding="utf-8")
    argv = [a.format(art=tiny_artifact, text=text) for a in command]
    assert main(argv + ["--threads", "100000"]) == 2
    err = one_error_line(capsys)
    assert "threads is 100000" in err and f"at most {max_threads()}" in err and str(os.cpu_count()) in err


def test_thread_bound_in_the_python_api(tiny_artifact):
    from shadow_edge.bench.options import BenchOptions
    from shadow_edge.runtime import ShadowRuntime
    from shadow_edge.serve.options import ServeOptions

    for make in (lambda n: ShadowRuntime.load(tiny_artifact, threads=n), lambda n: BenchOptions(threads=n),
                 lambda n: ServeOptions((str(tiny_artifact),), threads=n)):
        with pytest.raises(InputError, match="threads is"):
            make(max_threads() + 1)
        with pytest.raises(InputError, match="threads is 0"):
            make(0)
    assert ShadowRuntime.load(tiny_artifact, threads=1).generate("Hi", max_new_tokens=2).token_ids
