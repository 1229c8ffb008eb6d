"""Export output safety: --force never loses data, one writer per --out, atomic replacement for readers,
cleanup on SIGTERM/SIGINT and of stale partials, clear errors for unusable --out paths and full disks."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from manifest_checks import assert_validated
from shadow_edge.cli import main
from shadow_edge.errors import ArtifactError, ExportError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export.out_dir import PARTIAL_MARKER, partial_path, writer_lock
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime import runtime as runtime_module

REPO = Path(__file__).resolve().parents[2]
FAST = ExportOptions(validate=False)


def quiet(_: str) -> None:
    pass


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tiny_default, tmp_path):
    """Private copies of the tiny model: tmp/models/{base,adapter}, free to export over."""
    root = tmp_path / "models"
    shutil.copytree(tiny_default.base_dir, root / "base")
    shutil.copytree(tiny_default.adapter_dir, root / "adapter")
    return root / "base", root / "adapter"


def cli_error(capsys, *argv: str) -> str:
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err  # progress lines (if any), then the error
    assert err.count("error: ") == 1 and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    return err.splitlines()[-1]


@pytest.mark.parametrize("target, needle", [
    ("base", "is the base input"),
    ("models", "contains the base input"),
    ("user_dir", "no readable manifest.json"),
    ("artifact_with_user_file", "does not list (notes.txt)"),
])
def test_force_never_replaces_inputs_or_user_files(inputs, tmp_path, capsys, target, needle):
    base, adapter = inputs
    user_dir = tmp_path / "user_dir"
    (user_dir / "sub").mkdir(parents=True)
    (user_dir / "sub" / "thesis.tex").write_text("years of work")
    art = tmp_path / "artifact_with_user_file"
    export_artifact(base, adapter, art, options=FAST, progress=quiet)
    (art / "notes.txt").write_text("mine")
    out = {"base": base, "models": base.parent, "user_dir": user_dir, "artifact_with_user_file": art}[target]
    before = tree_digest(tmp_path)
    with pytest.raises(ExportError) as info:
        export_artifact(base, adapter, out, options=ExportOptions(force=True, validate=False), progress=quiet)
    assert needle in str(info.value)
    err = cli_error(capsys, "--base", str(base), "--adapter", str(adapter), "--out", str(out), "--force",
                    "--no-validate")
    assert needle in err
    assert tree_digest(tmp_path) == before  # inputs and user files intact


def test_force_refuses_artifact_inside_an_input(inputs, tmp_path):
    base, adapter = inputs
    out = base / "onnx"
    export_artifact(base, adapter, out, options=FAST, progress=quiet)  # creating it there is fine
    with pytest.raises(ExportError, match="is inside the base input"):
        export_artifact(base, adapter, out, options=ExportOptions(force=True, validate=False), progress=quiet)


def test_force_replaces_an_artifact_and_empty_dirs_are_used(inputs, tmp_path):
    base, adapter = inputs
    out = tmp_path / "art"
    out.mkdir()  # empty: nothing to lose, no --force needed
    export_artifact(base, adapter, out, options=FAST, progress=quiet)
    first = read_manifest(out).created_utc
    with pytest.raises(ExportError, match="already exists.*--force"):
        export_artifact(base, adapter, out, options=FAST, progress=quiet)
    time.sleep(1.1)  # created_utc has second resolution
    export_artifact(base, adapter, out, options=ExportOptions(force=True, validate=False), progress=quiet)
    assert read_manifest(out).created_utc != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art", "models"]


def test_unusable_out_paths(inputs, tmp_path, capsys):
    base, adapter = inputs
    file = tmp_path / "file.txt"
    file.write_text("x")
    cases = [(file, "is a file, not a directory"), (file / "art", "is a file, not a directory"),
             (file / "deeper" / "art", "is a file, not a directory")]
    if os.geteuid() == 0:
        cases.append((Path("/sys/shadow-edge-test/art"), "cannot write in"))  # root may write anywhere else
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((ro / "art", "cannot write in"))
    link = tmp_path / "link"
    link.symlink_to(base)
    cases.append((link, "symbolic link"))
    for out, needle in cases:
        with pytest.raises(ExportError, match=needle):
            export_artifact(base, adapter, out, options=ExportOptions(force=True, validate=False), progress=quiet)
        assert needle in cli_error(capsys, "--base", str(base), "--adapter", str(adapter), "--out", str(out),
                                   "--force", "--no-validate")
    assert file.read_text() == "x" and (base / "config.json").is_file()


def test_second_concurrent_export_fails_fast(inputs, tmp_path):
    base, adapter = inputs
    out = tmp_path / "art"
    with writer_lock(out):  # what a running export holds
        with pytest.raises(ExportError, match=f"another export to it is running \\(pid {os.getpid()}"):
            export_artifact(base, adapter, out, options=FAST, progress=quiet)
    assert not out.exists()


def test_two_exports_at_once_do_not_both_succeed(inputs, tmp_path):
    base, adapter = inputs
    out, results = tmp_path / "art", []

    def run():
        try:
            export_artifact(base, adapter, out, options=ExportOptions(force=True), progress=quiet)
            results.append("ok")
        except ExportError as e:
            results.append(str(e))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r == "ok" for r in results) == [False, True], results
    assert "another export to it is running" in next(r for r in results if r != "ok")
    assert_validated(read_manifest(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art", "models"]


def test_reader_never_sees_the_artifact_missing_while_it_is_replaced(inputs, tmp_path, monkeypatch):
    """A reader loops load + generate while the artifact is replaced by versions with different files;
    its loads are slowed down so that each spans a replacement if the exporter does not wait for it."""
    base, adapter = inputs
    out = tmp_path / "art"
    export_artifact(base, adapter, out, options=FAST, progress=quiet)
    real_verify = runtime_module.verify_files

    def slow_verify(*args, **kwargs):
        time.sleep(0.05)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "verify_files", slow_verify)
    stop, failures, loads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                rt = ShadowRuntime.load(out, threads=1, modes=("shadow_only",))
                assert len(rt.generate([1, 2, 3], mode="shadow_only", max_new_tokens=2).token_ids) == 2
                loads[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(6):  # alternate versions with and without backbone_plain.onnx
            export_artifact(base, adapter, out, options=ExportOptions(force=True, validate=False,
                                                                      plain_backbone=i % 2 == 0), progress=quiet)
    finally:
        stop.set()
        t.join()
    assert not failures, failures[:3]
    assert loads[0] > 0
    ShadowRuntime.load(out)


def test_lazy_graph_of_a_replaced_artifact_is_refused(inputs, tmp_path):
    base, adapter = inputs
    out = tmp_path / "art"
    plain = ExportOptions(validate=False, plain_backbone=True)
    export_artifact(base, adapter, out, options=plain, progress=quiet)
    rt = ShadowRuntime.load(out, threads=1, modes=("shadow_only",))  # backbone_plain opens on first use
    export_artifact(base, adapter, out, options=ExportOptions(force=True, validate=False, plain_backbone=True),
                    progress=quiet)
    with pytest.raises(ArtifactError, match="was replaced .* load it again"):
        rt.forward([[1, 2, 3]], mode="base_plain")
    assert rt.generate([1, 2, 3], mode="shadow_only", max_new_tokens=2).token_ids  # loaded sessions keep working
    assert ShadowRuntime.load(out, threads=1, modes=("base_plain",)).forward([[1, 2, 3]], mode="base_plain").shape


def _export_cmd(base: Path, adapter: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "shadow_edge.cli", "export", "--base", str(base), "--adapter", str(adapter),
            "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _default_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path / PARTIAL_MARKER).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.02)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_signal_mid_export_cleans_up(inputs, tmp_path, sig, code):
    base, adapter = inputs
    out = tmp_path / "art"
    # A runner started in the background (CI, `cmd &`) may ignore SIGINT, and the child would inherit that:
    # give it the default dispositions an interactive user's export has.
    proc = subprocess.Popen(_export_cmd(base, adapter, out), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    _wait_for(partial_path(out, proc.pid), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "models"]


def _background_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script gives a job
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_sigterm_cleans_up_a_background_export_that_ignores_sigint(inputs, tmp_path):
    base, adapter = inputs
    out = tmp_path / "art"
    proc = subprocess.Popen(_export_cmd(base, adapter, out), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_background_signals)
    _wait_for(partial_path(out, proc.pid), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "models"]


def test_rerun_cleans_partials_of_dead_processes_only(inputs, tmp_path):
    base, adapter = inputs
    out = tmp_path / "art"
    proc = subprocess.Popen(_export_cmd(base, adapter, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    killed = partial_path(out, proc.pid)
    _wait_for(killed, proc)
    proc.kill()  # SIGKILL: no cleanup possible
    proc.wait()
    assert killed.is_dir()
    alive = partial_path(out, os.getppid())  # a live process's export: not ours to remove
    alive.mkdir()
    (alive / PARTIAL_MARKER).write_text(f"{os.getppid()}\n")
    unmarked = partial_path(out, 999_999_999)  # matches the name but has no marker: the user's
    unmarked.mkdir()
    messages = []
    export_artifact(base, adapter, out, options=FAST, progress=messages.append)
    assert not killed.exists() and alive.is_dir() and unmarked.is_dir()
    assert any(str(killed) in m for m in messages)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_disk_full_is_a_clear_error_and_leaves_nothing(inputs, tmp_path):
    base, adapter = inputs
    out = tmp_path / "art"
    proc = subprocess.run(_export_cmd(base, adapter, out) + ["--no-validate"], env=_env(), capture_output=True,
                          text=True, preexec_fn=_limit_file_size, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cannot write the artifact" in last and "File too large" in last, last
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "models"]
