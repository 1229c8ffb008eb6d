"""Cached inputs of the comparison: preset checkpoints, the shadow-edge artifact, onnxruntime-genai models.

Everything lives under one cache directory (default: <repo>/.cache, gitignored):
  presets/<preset>/{base,adapter}        built by presets.build_preset (once)
  artifacts/<preset>/                    `export_artifact(..., plain_backbone=True)`; re-exported
                                         whenever the exporter's source changes (fingerprint below)
  ort-genai/<preset>/<fp32|int8|int4>[-b<block>]/  onnxruntime-genai's model builder output (once per version)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from shadow_edge.export_fingerprint import exporter_fingerprint

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache"


def say(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


@contextmanager
def locked(path: Path | None, waiting=None):
    """Hold an exclusive flock on `path` (the shared big-memory lock: one heavy job at a time on a shared machine)
    for the block; no-op without one. `waiting(message)`, if given, is told before blocking."""
    if path is None:
        yield
        return
    with open(path, "a+") as f:
        if waiting is not None:
            waiting(f"waiting for {path}")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_artifact(preset: str, base: Path, adapter: Path, cache: Path, quantize: str = "none",
                    block_size: int | None = None, extra: dict | None = None) -> Path:
    """The preset's artifact (with backbone_plain), exported and validated unless a current one is cached.
    `block_size`: quantization block (None: the exporter's default); `extra`: more ExportOptions fields (e.g.
    {"quant_scheme": "symmetric"}), their values appended to the cached artifact's name."""
    from shadow_edge.export import ExportOptions, export_artifact

    extra = extra or {}
    name = preset if quantize == "none" else f"{preset}-{quantize}" + (f"-b{block_size}" if block_size else "")
    name += "".join(f"-{v}" for v in extra.values())
    art = cache / "artifacts" / name
    stamp = cache / "artifacts" / f"{name}.fingerprint"
    fingerprint = exporter_fingerprint()
    if art.is_dir() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return art
    say(f"exporting {preset} -> {art} (exporter fingerprint {fingerprint}; validated against PyTorch)")
    block = {"block_size": block_size} if block_size else {}
    export_artifact(base, adapter, art,
                    options=ExportOptions(force=True, plain_backbone=True, quantize=quantize, **block, **extra),
                    progress=lambda msg: say(f"  export: {msg}"))
    stamp.write_text(fingerprint + "\n")
    return art


def demo_pair_artifact(cache: Path, quantize: str = "none", block_size: int | None = None,
                       extra: dict | None = None, adapter: Path | None = None) -> Path:
    """The demo pair (SmolLM2 + the shipped adapter, or another adapter for it) exported under `cache`, keyed by
    the adapter's sha256."""
    from shadow_edge.core.smollm2 import smollm2_checkpoint
    from shadow_edge.demo_model import ADAPTER

    adapter = ADAPTER if adapter is None else adapter
    key = hashlib.sha256((adapter / "shadow_adapter.safetensors").read_bytes()).hexdigest()[:12]
    return ensure_artifact("smollm2-demo", smollm2_checkpoint(log=say), adapter, cache / key, quantize=quantize,
                           block_size=block_size, extra=extra)


def ort_genai_version() -> str | None:
    try:
        import onnxruntime_genai
    except ImportError:
        return None
    return onnxruntime_genai.__version__


def ensure_ort_genai_model(preset: str, base: Path, precision: str, cache: Path, block_size: int | None = None) -> Path:
    """onnxruntime-genai's build of the plain base model (`-p fp32|int8|int4 -e cpu`, its defaults unless
    `block_size` is given: `--extra_options block_size=N`), built offline once."""
    out = cache / "ort-genai" / preset / (precision + (f"-b{block_size}" if block_size else ""))
    done = out / "COMPLETE"
    version = ort_genai_version()
    if done.is_file() and done.read_text().strip() == version:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / f".hf-cache-{out.name}")]
    if block_size:
        cmd += ["--extra_options", f"block_size={block_size}"]
    say(f"building onnxruntime-genai {precision} model: {' '.join(cmd)}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"onnxruntime-genai builder failed ({precision}): " + " | ".join(tail))
    shutil.rmtree(out.parent / f".hf-cache-{out.name}", ignore_errors=True)
    done.write_text(f"{version}\n")
    return out


def dir_bytes(path: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file() and p.name.endswith(suffixes))
