"""Streaming export: checkpoints read lazily (headers for checks, values on use), weights quantized as they are
written, progress only on a terminal, and a full or unwritable disk is one clear error with nothing left behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from shadow_edge.core import load_spec
from shadow_edge.core.lazy_tensor import LazyTensor
from shadow_edge.errors import CheckpointError, ExportError
from shadow_edge.export import ExportOptions, export_artifact, onnx_builder, out_dir
from shadow_edge.export.progress import WeightsMeter
from shadow_edge.export.quantize import Dequantized, quantize_rows

FAST = ExportOptions(validate=False)


def test_spec_checks_read_headers_only(tiny_default, monkeypatch):
    read, raw = [], LazyTensor.raw
    monkeypatch.setattr(LazyTensor, "raw", lambda self: read.append(self.path.name) or raw(self))
    spec = load_spec(tiny_default.base_dir, tiny_default.adapter_dir)  # validated: every shape checked
    assert isinstance(spec.base.layers[0]["q.weight"], LazyTensor) and isinstance(spec.base.embed, LazyTensor)
    assert "model.safetensors" not in read and "shadow_adapter.safetensors" in read  # the adapter is small: read


def test_non_finite_weight_is_named_when_read_and_nothing_is_left(tiny_default, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for f in tiny_default.base_dir.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(base / "model.safetensors"))
    key = "model.layers.2.mlp.down_proj.weight"
    tensors[key][3, 5] = float("nan")
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(base / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{key}' holds 1 NaN/Inf"):
        export_artifact(base, tiny_default.adapter_dir, tmp_path / "art", options=FAST, progress=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "base"]


@pytest.mark.parametrize("bits", [4, 8])
def test_quantization_in_row_chunks_equals_one_pass(bits, monkeypatch):
    w = torch.randn(37, 64, generator=torch.Generator().manual_seed(1))  # [37, 64]
    whole = quantize_rows(w, bits, 16)
    monkeypatch.setattr("shadow_edge.export.quantize.ROWS_PER_CHUNK", 5)
    chunked = quantize_rows(w, bits, 16)
    np.testing.assert_array_equal(whole.packed, chunked.packed)
    np.testing.assert_array_equal(whole.scales, chunked.scales)
    deq = Dequantized(w, bits, 16)
    assert deq.shape == w.shape
    torch.testing.assert_close(deq.load(), whole.dequantize(), rtol=0, atol=0)
    step = torch.from_numpy(whole.scales).repeat_interleave(16, dim=1)
    assert ((w - deq.load()).abs() <= step / 2 + 1e-7).all()


class _FullDisk:
    """A file whose writes fail with `err` once `room` bytes were written (the disk fills mid-weights)."""

    def __init__(self, path, err: int, room: int):
        self.f, self.path, self.err, self.room = open(path, "wb"), path, err, room

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.f.tell() + n > self.room:
            raise OSError(self.err, os.strerror(self.err), str(self.path))
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


@pytest.mark.parametrize("err, text", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"),
                                       (errno.EROFS, "Read-only file system")])
def test_disk_full_or_unwritable_while_writing_weights(tiny_default, tmp_path, monkeypatch, err, text):
    monkeypatch.setattr(onnx_builder, "open", lambda path, mode: _FullDisk(path, err, 20_000), raising=False)
    out = tmp_path / "art"
    with pytest.raises(ExportError) as e:
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out, options=FAST, progress=lambda m: None)
    msg = str(e.value)
    assert ".onnx.data: cannot write the artifact" in msg and text in msg, msg
    assert "needs about" in msg and "GB free there" in msg and "nothing was left behind" in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock"]


def test_too_little_free_space_fails_before_writing(tiny_default, tmp_path, monkeypatch):
    monkeypatch.setattr(out_dir, "_free_bytes", lambda out: 1000)
    out = tmp_path / "art"
    with pytest.raises(ExportError, match=r"not enough free space for the artifact: it needs about 0\.\d+ GB, "
                                          r"0\.00 GB are free"):
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, out, options=FAST, progress=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock"]


def test_weights_meter_reports_bytes_phases_and_eta():
    now = [0.0]
    lines: list[str] = []
    meter = WeightsMeter(lines.append, total=400_000_000, making="read+quantize (int4)", every=1.0,
                         clock=lambda: now[0])
    for _ in range(4):
        now[0] += 0.6
        meter(50_000_000, 0.4, 0.2)
    meter.finish()
    assert lines[0] == ("weights 0.10 GB / ~0.40 GB (25%), read+quantize (int4) 0.8s, write 0.4s, 83 MB/s, "
                        "ETA 4s")
    assert lines[-1].startswith("weights 0.20 GB / ~0.20 GB (100%)") and "ETA" not in lines[-1]


def test_cli_export_prints_no_progress_when_stderr_is_not_a_terminal(tiny_default, tmp_path):
    out = tmp_path / "art"
    done = subprocess.run([sys.executable, "-m", "shadow_edge.cli", "export", "--base", str(tiny_default.base_dir),
                           "--adapter", str(tiny_default.adapter_dir), "--out", str(out), "--no-validate"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and (out / "manifest.json").is_file()


def test_signal_swallowed_by_native_code_still_ends_the_export_as_that_signal(tiny_default, tmp_path, monkeypatch):
    """SIGINT while torch maps a tensor: torch may turn the KeyboardInterrupt into a TypeError (seen in
    test_export_out's signal test); the export must still end as interrupted, with nothing left."""
    runner_handler = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers replace Python's default handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raw = LazyTensor.raw

    def interrupted(self):
        if self.path.name != "model.safetensors":  # base weights: read while they are written
            return raw(self)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except KeyboardInterrupt:
            raise TypeError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None
        return raw(self)

    monkeypatch.setattr(LazyTensor, "raw", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, tmp_path / "art", options=FAST,
                            progress=lambda m: None)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, runner_handler)
