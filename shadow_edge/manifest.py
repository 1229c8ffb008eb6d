"""The artifact manifest (`ART/manifest.json`): what was exported, from what, and how it validated.

Standard library only: the exporter writes it, the runtime and `inspect` read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from shadow_edge.errors import ArtifactError
from shadow_edge.io_spec import ATTENTION_GQA, GRAPH_ROLES, GraphContract, TensorSpec, graph_contract
from shadow_edge.manifest_contract import check_contracts
from shadow_edge.manifest_schema import check_manifest
from shadow_edge.target import ExecutionTarget

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "shadow-edge-artifact"
FORMAT_VERSION = 2  # 2: graphs record their attention kind (1: every KV graph used GroupQueryAttention)
# `draft_vocab` (optional; export --draft-vocab N): the speculative draft head's reduced vocabulary:
#   size    N, the logits width of graph `draft_head`
#   file    a JSON file of the artifact, {"token_ids": [N distinct ids in [0, vocab_size)]}, ascending;
#           column i of draft_head's logits is token token_ids[i]
#   source  where the ranking came from: a text file's name and sha256 (token counts), or the tokenizer's id order
#   coverage  share of the counted text's tokens inside the N (null without a text file)
DRAFT_VOCAB_FILE = "draft_vocab.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph: its file, external data files, I/O table and KV layout."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    data_files: list[str] = field(default_factory=list)
    kv_layers: int = 0  # 0 = no KV cache (head graphs)
    kv_heads: int = 0
    head_dim: int = 0
    attention: str = ""  # KV-cached graphs: io_spec.ATTENTION_KINDS; "" for head graphs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    @classmethod
    def from_contract(cls, c: GraphContract, file: str, data_files: list[str]) -> "GraphEntry":
        return cls(file=file, inputs=list(c.inputs), outputs=list(c.outputs), data_files=data_files,
                   kv_layers=c.kv_layers, kv_heads=c.kv_heads, head_dim=c.head_dim, attention=c.attention)

    def as_contract(self, name: str) -> GraphContract:
        """This entry read as the graph `name`'s contract (unchecked; `Manifest.contract` checks it)."""
        return GraphContract(name, GRAPH_ROLES.get(name, ""), tuple(self.inputs), tuple(self.outputs),
                             self.kv_layers, self.kv_heads, self.head_dim, self.attention)

    @classmethod
    def from_dict(cls, d: dict) -> "GraphEntry":
        return cls(**{**d, "inputs": [TensorSpec.from_dict(t) for t in d["inputs"]],
                      "outputs": [TensorSpec.from_dict(t) for t in d["outputs"]]})


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about an artifact, and its provenance."""

    tool_version: str
    created_utc: str
    source: dict  # checkpoint format and sha256 of every source file
    model: dict  # vocab_size, hidden_size, max_positions, base/shadow decoder configs, adapter dims
    tokenizer: dict  # eos_token_ids, pad_token_id, bos_token_id, has_chat_template
    dtype: str
    quantization: str
    graphs: dict[str, GraphEntry]
    modes: dict[str, dict[str, str]]  # mode -> role ("shadow", "backbone", "head") -> graph name
    validation: dict
    files: dict[str, dict]  # relative path -> {"sha256", "bytes"}
    interop: dict = field(default_factory=dict)  # single-graph decoders and tool configs (export/interop.py)
    adapter_slots: dict = field(default_factory=dict)  # base artifacts (--as-base): see adapter_pack.py
    target: dict | None = None  # the execution target (target.py); None: written before it, the CPU target
    draft_vocab: dict = field(default_factory=dict)  # export --draft-vocab: {size, file, source, ...}; see DRAFT_VOCAB
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["graphs"] = {k: g.to_dict() for k, g in self.graphs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        graphs = {k: GraphEntry.from_dict(g) for k, g in d["graphs"].items()}
        if d.get("format_version") == 1:  # written before graphs recorded it: all used GroupQueryAttention
            graphs = {k: replace(g, attention=ATTENTION_GQA) if g.kv_layers else g for k, g in graphs.items()}
        return cls(**{**d, "graphs": graphs})

    @property
    def execution_target(self) -> ExecutionTarget:
        """The execution target the graphs were built for (checked when the manifest is read)."""
        return ExecutionTarget.from_dict(self.target, MANIFEST_NAME)

    def contract(self, name: str) -> GraphContract:
        """Graph `name`'s contract, regenerated from the model dims and the entry's KV layout and attention
        (manifest_contract.check_contracts holds the entry's I/O table to it when the manifest is read)."""
        entry = self.graphs[name]
        try:
            return graph_contract(name, self.model["hidden_size"], self.model["vocab_size"], entry.kv_layers,
                                  entry.kv_heads, entry.head_dim, entry.attention, self.model.get("num_labels", 0),
                                  kv_dtype=self.execution_target.kv_dtype, draft_vocab=self.draft_vocab.get("size", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{MANIFEST_NAME}: graph {name!r}: {e}; re-export the artifact") from None

    def mode_bytes(self, *modes: str) -> int:
        """Bytes on disk of the files these modes need (graphs + their external data, each file once)."""
        names = set()
        for graph in {g for mode in modes for g in self.modes[mode].values()}:
            names.add(self.graphs[graph].file)
            names.update(self.graphs[graph].data_files)
        return sum(self.files[n]["bytes"] for n in names)


def file_table(art_dir: Path) -> dict[str, dict]:
    """sha256 and size of every file under `art_dir` except the manifest itself."""
    out = {}
    for p in sorted(art_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            out[p.relative_to(art_dir).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_manifest(art_dir: Path, manifest: Manifest) -> None:
    (art_dir / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_manifest_json(path: Path, fmt: str, max_version: int, *, not_found: str, redo: str, wrong_format: str,
                       upgrade: str) -> dict:
    """Parse a manifest file and check its `format` and `format_version` (artifacts and adapter packs);
    each ArtifactError names `path` and ends with the given fix."""
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; {not_found}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable ({e}); {redo}") from None
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != fmt:
        raise ArtifactError(f"{path}: field `format` is {found!r}, expected {fmt!r}; {wrong_format}")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise ArtifactError(f"{path}: format_version {version!r} is newer than this shadow-edge reads "
                            f"({max_version}); {upgrade}")
    return raw


def read_manifest(art_dir: str | Path) -> Manifest:
    """Parse and check `manifest.json` (format and version); does not hash the files."""
    art_dir = Path(art_dir)
    path = art_dir / MANIFEST_NAME
    raw = read_manifest_json(path, FORMAT_NAME, FORMAT_VERSION,
                             not_found=f"{art_dir} is not a shadow-edge artifact "
                                       "(create one with `shadow-edge export`)",
                             redo="re-export the artifact", wrong_format="re-export the artifact",
                             upgrade="upgrade shadow-edge (pip install -U shadow-edge)")
    check_manifest(raw, path)  # JSON types
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: malformed manifest ({e}); re-export the artifact") from None
    check_contracts(manifest, path)  # structure: the graph contract regenerated from the manifest's dims
    return manifest


def member_path(art_dir: str | Path, name: str) -> Path:
    """The path of the artifact file `name`, refused unless it resolves (symlinks followed) inside `art_dir`."""
    art_dir = Path(art_dir)
    path = art_dir / name
    root, real = art_dir.resolve(), path.resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or not real.is_relative_to(root):
        raise ArtifactError(f"{path}: resolves to {real}, outside the artifact directory {root}; an artifact's "
                            "files must live inside it (no `..`, absolute paths or symlinks out); re-export it")
    return path


def verify_files(art_dir: str | Path, manifest: Manifest, names: list[str] | None = None) -> None:
    """Check that each listed file (default: all) exists inside the artifact with the recorded size and sha256."""
    art_dir = Path(art_dir)
    for name in names if names is not None else list(manifest.files):
        entry = manifest.files.get(name)
        path = member_path(art_dir, name)
        if entry is None:
            raise ArtifactError(f"{art_dir / MANIFEST_NAME}: no entry for {name}; re-export the artifact")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing from the artifact; copy the whole artifact directory or "
                                "re-export it")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: sha256 does not match the manifest (file changed or corrupt); "
                                "re-copy or re-export the artifact")
