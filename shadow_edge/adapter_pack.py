"""Adapter packs: one adapter's own weights, exported against a base artifact (standard library only).

A base artifact is a full artifact exported with `--as-base`: the adapter-specific weights of
its KV-cached graphs (the detached shadow's layers, norm, projection and own embeddings; the
backbone's injection and update weights) are *overridable initializers* (an initializer also
listed as a graph input; onnxruntime keeps its default unless a run feeds it). Its manifest
lists them under `adapter_slots.params` (graph -> weight -> [dtype, shape]) and digests the
head graphs' weights under `adapter_slots.heads`.

A pack (`PACK/manifest.json`, format `shadow-edge-adapter-pack`) holds one adapter's values
of exactly those weights in onnxruntime's adapter file format (`adapter.onnx_adapter`,
`onnxruntime.AdapterFormat`), the base artifact's identity (`base_identity`), and the source
checkpoints' sha256s. The runtime feeds a pack's values to the base's sessions per run;
the backbone, the vocabulary matrix and every head stay in the base, held once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.manifest import MANIFEST_NAME, Manifest, read_manifest_json
from shadow_edge.manifest_schema import check_file_table

PACK_FORMAT = "shadow-edge-adapter-pack"
PACK_VERSION = 1
PARAMS_FILE = "adapter.onnx_adapter"
ADAPTER_PREFIXES = ("shadow.", "adapter.")  # weight keys owned by the adapter (export/graphs.py names them)


def is_adapter_weight(key: str) -> bool:
    """Whether a graph weight belongs to the adapter (shadow network, injection, update), not the base."""
    return key.startswith(ADAPTER_PREFIXES)


def adapter_pairs(value) -> tuple[tuple[str, str], ...]:
    """`adapters` of an options object ((name, PACK) pairs, as `--adapter NAME=PACK` gives them) as strings;
    InputError for another shape or a repeated name."""
    try:
        pairs = tuple((str(n), str(p)) for n, p in (value or ()))
    except (TypeError, ValueError):
        raise InputError(f"adapters is {value!r}; it must be a list of (name, adapter pack directory) pairs") from None
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise InputError(f"adapter names {names} repeat; give each adapter pack its own name")
    return pairs


def base_identity(manifest: Manifest) -> str:
    """sha256 over the names and sha256s of a base artifact's graph and weight files: what a pack needs."""
    names = sorted({f for g in manifest.graphs.values() for f in (g.file, *g.data_files)})
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{manifest.files[name]['sha256']}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class PackManifest:
    """What a pack holds and what it was exported against."""

    tool_version: str
    created_utc: str
    source: dict  # checkpoint format and sha256 of every source file (as an artifact's)
    base_identity: str  # base_identity() of the base artifact it was exported against
    params: dict  # graph -> weight key -> [dtype, shape]: equal to the base's adapter_slots.params
    validation: dict
    files: dict  # relative path -> {"sha256", "bytes"}
    format: str = PACK_FORMAT
    format_version: int = PACK_VERSION

    def __post_init__(self) -> None:
        for name in ("tool_version", "created_utc", "base_identity", "format"):
            if not isinstance(getattr(self, name), str):
                raise ArtifactError(f"{MANIFEST_NAME}: field `{name}` is {getattr(self, name)!r}; expected a string")
        for name in ("source", "params", "validation", "files"):
            if not isinstance(getattr(self, name), dict):
                raise ArtifactError(f"{MANIFEST_NAME}: field `{name}` is {getattr(self, name)!r}; expected an object")
        if set(self.files) != {PARAMS_FILE}:
            raise ArtifactError(f"{MANIFEST_NAME}: field `files` lists {sorted(self.files)}; a pack holds exactly "
                                f"{PARAMS_FILE}; export the pack again")

    @property
    def nbytes(self) -> int:
        return sum(int(e["bytes"]) for e in self.files.values())

    def to_dict(self) -> dict:
        return asdict(self)


def write_pack_manifest(pack_dir: Path, manifest: PackManifest) -> None:
    (pack_dir / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_pack_manifest(pack_dir: Path) -> PackManifest:
    """Parse `PACK/manifest.json`; ArtifactError names what is wrong (a full artifact passed as a pack too)."""
    path = pack_dir / MANIFEST_NAME
    raw = read_manifest_json(
        path, PACK_FORMAT, PACK_VERSION,
        not_found=f"{pack_dir} is not an adapter pack (create one with "
                  "`shadow-edge export --base B --adapter A --out PACK --against BASE_ART`)",
        redo="export the pack again",
        wrong_format="an adapter pack is made by `shadow-edge export ... --against BASE_ART` (a full artifact is not "
                     "a pack)",
        upgrade="upgrade shadow-edge")
    check_file_table(raw, path, "export the pack again")  # every entry {sha256, bytes}, a plain relative path
    try:
        return PackManifest(**raw)
    except TypeError as e:
        raise ArtifactError(f"{path}: malformed pack manifest ({e}); export the pack again") from None


def check_pack_fits(pack: PackManifest, base: Manifest, pack_dir: Path, base_dir: Path) -> None:
    """Refuse a pack that was not exported against this base artifact, or whose weights do not fit its slots."""
    slots = base.adapter_slots.get("params") or {}
    if not slots:
        raise ArtifactError(f"{base_dir}: is not a base artifact (its manifest has no adapter_slots); export it "
                            "with `shadow-edge export ... --as-base` to load adapter packs into it")
    want = base_identity(base)
    if pack.base_identity != want:
        raise ArtifactError(f"{pack_dir}: was exported against a base artifact with identity "
                            f"{pack.base_identity[:12]}..., but {base_dir} has {want[:12]}...; export the pack again "
                            f"with --against {base_dir}")
    if pack.params != slots:
        missing = [(g, k) for g, p in slots.items() for k in p if k not in pack.params.get(g, {})]
        raise ArtifactError(f"{pack_dir}: its weights do not fit the base's adapter slots (first difference: "
                            f"{missing[:1] or 'shapes'}); export the pack again with --against {base_dir}")

