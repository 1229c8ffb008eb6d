"""Adapter packs loaded into one runtime, by name: loaded once, used per request, unloaded when idle. No torch.

Mechanism: a base artifact's adapter weights are overridable initializers of its shadow and
backbone graphs (adapter_pack.py). A pack's file is onnxruntime's adapter format, read with
`onnxruntime.AdapterFormat.read_adapter`, and each weight copied once into an array of its own
(the adapter file's buffers are not aligned for the MatMul kernels: 5-8% slower shadow steps,
benchmarks/profile/adapter_pack_profile.py). The shadow graph's weights become constant initializers
of a session of its own per pack (onnxruntime's shared initializers, `SessionOptions.add_initializer`,
so they are prepacked: runtime/pack_sessions.py); the backbone's small injection/update weights are
bound as inputs of the base's one backbone session per request (IOBinding, no copy per request).
Every pack shares the base's backbone session, vocabulary matrix and heads.
(`RunOptions.add_active_adapter` is not used: onnxruntime ignores active adapters in
`run_with_iobinding`, which the in-place KV cache needs, and active adapters are fed inputs too,
which onnxruntime does not prepack.)

Unloading a pack that a running generation uses is refused (InputError) rather than deferred:
the caller sees why and retries when the generation is done.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnxruntime as ort

from shadow_edge.adapter_pack import PARAMS_FILE, PackManifest, check_pack_fits, read_pack_manifest
from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.manifest import Manifest, member_path, verify_files
from shadow_edge.runtime.inputs import artifact_dir
from shadow_edge.runtime.session import GraphSession, ov

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ORT_DTYPES = {"float32": 1, "uint8": 2, "int64": 7}  # ONNX element types of the weights a pack may hold


@dataclass(frozen=True)
class LoadedPack:
    """One pack in memory: graph -> weight key -> OrtValue, and the pack's own sessions (graph -> session whose
    constant initializers are this pack's weights of that graph); the other graphs' weights are fed per run."""

    name: str
    path: Path
    manifest: PackManifest
    feeds: dict[str, dict[str, ort.OrtValue]]
    sessions: dict[str, GraphSession] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise InputError(f"adapter name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with "
                             "a letter or digit)")

    @property
    def fed(self) -> dict[str, dict[str, ort.OrtValue]]:
        """graph -> weights bound as inputs of the base's shared session of that graph (no session of its own)."""
        return {g: f for g, f in self.feeds.items() if g not in self.sessions}

    @property
    def nbytes(self) -> int:
        """Bytes of the pack's weights held in memory."""
        return sum(v.numpy().nbytes for f in self.feeds.values() for v in f.values())


def open_pack(pack_dir) -> tuple[Path, PackManifest]:
    """The pack directory and its manifest; ArtifactError when it is missing or not a pack (cheap: no weights)."""
    pack_dir = artifact_dir(pack_dir)
    if not pack_dir.is_dir():
        raise ArtifactError(f"{pack_dir}: no such adapter pack directory; create one with `shadow-edge export "
                            "--base B --adapter A --out PACK --against BASE_ART`")
    return pack_dir, read_pack_manifest(pack_dir)


def read_pack(name, pack_dir, base: Manifest, base_dir: Path, verify: bool = True) -> LoadedPack:
    """Check a pack against the base artifact (identity, slots, sha256) and read its weights."""
    if not isinstance(name, str):
        raise InputError(f"adapter name is {name!r}; it must be a string such as 'support'")
    pack_dir, manifest = open_pack(pack_dir)
    check_pack_fits(manifest, base, pack_dir, base_dir)
    if verify:
        verify_files(pack_dir, manifest)  # duck-typed: reads .files
    path = member_path(pack_dir, PARAMS_FILE)
    try:
        values = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    except Exception as e:  # onnxruntime's own exception types
        raise ArtifactError(f"{path}: onnxruntime cannot read the adapter file ({str(e).strip().splitlines()[0]}); "
                            "export the pack again") from None
    feeds: dict[str, dict[str, ort.OrtValue]] = {}
    for graph, params in manifest.params.items():
        feeds[graph] = {}
        for key, (dtype, shape) in params.items():
            value = values.get(key)
            if value is None or list(value.shape()) != list(shape) or value.element_type() != ORT_DTYPES.get(dtype):
                found = None if value is None else list(value.shape())
                raise ArtifactError(f"{path}: weight {key!r} is {found}, the manifest says {dtype} {shape}; export "
                                    "the pack again")
            feeds[graph][key] = ov(aligned_copy(value.numpy()))  # the file's buffer is dropped after the loop
    return LoadedPack(name, pack_dir, manifest, feeds)


def aligned_copy(array: np.ndarray, align: int = 64) -> np.ndarray:
    """A copy of `array` whose data starts on an `align`-byte boundary (it keeps its buffer alive)."""
    buf = np.empty(array.nbytes + align, dtype=np.uint8)
    start = -buf.ctypes.data % align
    out = buf[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


class AdapterSet:
    """The packs of one runtime by name; thread-safe. `use(name)` marks a pack busy for one generation."""

    def __init__(self, base: Manifest, base_dir: Path):
        self.base, self.base_dir = base, base_dir
        self._packs: dict[str, LoadedPack] = {}
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._packs)

    def load(self, name, pack_dir, verify: bool = True,
             open_sessions: Callable[[dict], dict[str, GraphSession]] = lambda feeds: {}) -> LoadedPack:
        """Read pack `name`; `open_sessions(feeds)` opens its own sessions (graph -> session, pack_sessions.py)."""
        with self._lock:
            self._refuse_taken(name)
        pack = read_pack(name, pack_dir, self.base, self.base_dir, verify)  # outside the lock: hashing takes time
        pack = replace(pack, sessions=open_sessions(pack.feeds))
        with self._lock:
            self._refuse_taken(name)
            self._packs[name] = pack
        return pack

    def _refuse_taken(self, name) -> None:
        if isinstance(name, str) and name in self._packs:
            raise InputError(f"adapter {name!r} is already loaded (from {self._packs[name].path}); unload_adapter("
                             f"{name!r}) first or choose another name")

    def unload(self, name) -> None:
        with self._lock:
            self.get(name)
            if self._busy.get(name):
                raise InputError(f"adapter {name!r} is in use by {self._busy[name]} running generation(s); unload it "
                                 "after they finish")
            del self._packs[name]

    def get(self, name) -> LoadedPack:
        """The pack loaded as `name` (call with the lock held or for a check only)."""
        pack = self._packs.get(name) if isinstance(name, str) else None
        if pack is None:
            loaded = ", ".join(self._packs) or "none"
            raise InputError(f"adapter {name!r} is not loaded (loaded: {loaded}); load it with load_adapter(name, "
                             "PACK) or --adapter name=PACK")
        return pack

    def check(self, name) -> None:
        with self._lock:
            self.get(name)

    @contextmanager
    def use(self, name) -> Iterator[LoadedPack]:
        with self._lock:
            pack = self.get(name)
            self._busy[name] = self._busy.get(name, 0) + 1
        try:
            yield pack
        finally:
            with self._lock:
                self._busy[name] -= 1
