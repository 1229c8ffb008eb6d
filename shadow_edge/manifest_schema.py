"""JSON checks of a parsed manifest.json before it is trusted: types, required keys, safe paths, token ids.

Standard library only. `check_manifest(raw, path)` raises one `ArtifactError` naming the
field (`graphs.backbone.kv_heads`), what was found and what was expected: every field has its
JSON type, every file entry is a plain relative path inside the artifact, the special token
ids lie inside the vocabulary. The structure — each graph's I/O table, KV layout and role, each
mode's roles — is then held to the graph contract regenerated from these dims, in one place
(manifest_contract.py); the runtime checks each onnxruntime session against its I/O table,
which closes the chain. Unknown keys are left to `Manifest.from_dict`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

from shadow_edge.errors import ArtifactError
_HEX64 = re.compile(r"[0-9a-f]{64}")
METHOD_FULL, METHOD_STREAMED = "full", "streamed"  # validation.method (absent in artifacts written before it)


class _Checker:
    def __init__(self, path, redo: str = "re-export the artifact"):
        self.path, self.redo = path, redo

    def fail(self, field: str, found, expected: str):
        shown = repr(found) if len(repr(found)) <= 80 else repr(found)[:77] + "..."
        raise ArtifactError(f"{self.path}: field `{field}` is {shown}; expected {expected}; {self.redo} "
                            "(or restore its original manifest.json)")

    def get(self, d: dict, key: str, where: str, kind, expected: str, optional: bool = False):
        field = f"{where}.{key}" if where else key
        if key not in d:
            if optional:
                return None
            raise ArtifactError(f"{self.path}: field `{field}` is missing; expected {expected}; {self.redo}")
        value = d[key]
        if optional and value is None:
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(field, value, expected)
        return value

    def count(self, d: dict, key: str, where: str, minimum: int = 0, optional: bool = False):
        value = self.get(d, key, where, int, f"an integer >= {minimum}", optional)
        if value is not None and value < minimum:
            self.fail(f"{where}.{key}", value, f"an integer >= {minimum}")
        return value

    def relpath(self, value, field: str) -> str:
        """A plain relative path inside the artifact: no absolute path, drive, `..`, backslash or NUL."""
        if not isinstance(value, str) or not value:
            self.fail(field, value, "a file name relative to the artifact directory")
        posix = PurePosixPath(value)
        if posix.is_absolute() or PureWindowsPath(value).anchor or ".." in posix.parts or "\\" in value \
                or "\0" in value:
            self.fail(field, value, "a plain relative path inside the artifact directory (no absolute path, "
                                    "no `..`)")
        return value


def check_manifest(raw: dict, path) -> None:
    """Raise ArtifactError unless every field of `raw` (parsed manifest.json) has its JSON type."""
    c = _Checker(path)
    for key in ("tool_version", "created_utc", "dtype", "quantization"):
        c.get(raw, key, "", str, "a string")
    c.get(raw, "target", "", dict, "an object: the execution target (device, dtypes, attention kinds)",
          optional=True)
    for key in ("source", "validation"):
        c.get(raw, key, "", dict, "an object")
    _check_validation(c, raw["validation"])
    files = _check_files(c, raw)
    model = c.get(raw, "model", "", dict, "an object with vocab_size, max_positions, hidden_size, ...")
    vocab = c.count(model, "vocab_size", "model", 1)
    max_pos = c.count(model, "max_positions", "model", 1)
    for part in ("base", "shadow"):
        sub = c.get(model, part, "model", dict, "an object", optional=True)
        limit = c.count(sub, "max_positions", f"model.{part}", 1, optional=True) if sub is not None else None
        if limit is not None and max_pos > limit:
            c.fail("model.max_positions", max_pos, f"at most model.{part}.max_positions ({limit}), the length the "
                                                    "graphs' rotary tables cover")
    _check_tokenizer(c, raw, vocab)
    graphs = c.get(raw, "graphs", "", dict, "an object mapping graph names to graph entries")
    if not graphs:
        c.fail("graphs", graphs, "at least one graph")
    for name, g in graphs.items():
        _check_graph(c, name, g, files)
    modes = c.get(raw, "modes", "", dict, "an object mapping modes to {role: graph}")
    if not modes:
        c.fail("modes", modes, "at least one mode")
    if model.get("task") == "seq_cls":  # the heads' logits are the labels
        width = c.count(model, "num_labels", "model", 1)
        names = c.get(model, "id2label", "model", list, "a list of label names")
        if len(names) != width:
            c.fail("model.id2label", f"{len(names)} names", f"model.num_labels ({width}) names")
    for mode, roles in modes.items():
        if not isinstance(roles, dict):
            c.fail(f"modes.{mode}", roles, "an object mapping roles (shadow, backbone, head) to graph names")
        for role in roles:
            c.get(roles, role, f"modes.{mode}", str, "a graph name")
    _check_draft_vocab(c, raw, graphs, files)


def check_file_table(raw: dict, path, redo: str) -> dict:
    """The `files` table of a manifest (an artifact's or an adapter pack's): {relative path: {sha256, bytes}}."""
    return _check_files(_Checker(path, redo), raw)


def _check_files(c: _Checker, raw: dict) -> dict:
    files = c.get(raw, "files", "", dict, "an object mapping file names to {sha256, bytes}")
    for name, entry in files.items():
        c.relpath(name, f"files.{name}")
        if not isinstance(entry, dict):
            c.fail(f"files.{name}", entry, "an object {sha256, bytes}")
        digest = c.get(entry, "sha256", f"files.{name}", str, "a sha256 hex digest")
        if not _HEX64.fullmatch(digest):
            c.fail(f"files.{name}.sha256", digest, "64 lowercase hex digits")
        c.count(entry, "bytes", f"files.{name}")
    return files


def _check_validation(c: _Checker, v: dict) -> None:
    """`method` (optional: older artifacts were all validated in full) and a streamed one's block reports."""
    method = c.get(v, "method", "validation", str, f"{METHOD_FULL!r} or {METHOD_STREAMED!r}", optional=True)
    if method not in (None, METHOD_FULL, METHOD_STREAMED):
        c.fail("validation.method", method, f"{METHOD_FULL!r} or {METHOD_STREAMED!r}")
    if method == METHOD_STREAMED and v.get("passed"):
        blocks = c.get(v, "blocks", "validation", dict, "an object: graph -> block -> {max_abs_err, allowed}")
        for graph, report in blocks.items():
            if not isinstance(report, dict) or not report:
                c.fail(f"validation.blocks.{graph}", report, "an object: block -> {max_abs_err, allowed}")


def _check_tokenizer(c: _Checker, raw: dict, vocab: int) -> None:
    tok = c.get(raw, "tokenizer", "", dict, "an object with eos_token_ids, pad_token_id, ...")
    ids = f"token ids in [0, {vocab - 1}] (model.vocab_size {vocab})"
    eos = c.get(tok, "eos_token_ids", "tokenizer", list, f"a list of {ids}", optional=True)
    for i, t in enumerate(eos or []):
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            c.fail(f"tokenizer.eos_token_ids[{i}]", t, f"one of the {ids}")
    for key in ("pad_token_id", "bos_token_id"):
        t = c.get(tok, key, "tokenizer", int, f"null or one of the {ids}", optional=True)
        if t is not None and not 0 <= t < vocab:
            c.fail(f"tokenizer.{key}", t, f"null or one of the {ids}")


def _check_tensors(c: _Checker, where: str, value) -> list[dict]:
    if not isinstance(value, list):
        c.fail(where, value, "a list of {name, dtype, shape}")
    for i, t in enumerate(value):
        field = f"{where}[{i}]"
        if not isinstance(t, dict):
            c.fail(field, t, "an object {name, dtype, shape}")
        c.get(t, "name", field, str, "a tensor name")
        c.get(t, "dtype", field, str, "a dtype name such as float32")
        shape = c.get(t, "shape", field, list, "a list of dims (integers or names)")
        for d in shape:
            if not isinstance(d, (int, str)) or isinstance(d, bool) or (isinstance(d, int) and d < 0):
                c.fail(f"{field}.shape", shape, "a list of dims: integers >= 0 or dim names")
    return value


def _check_graph(c: _Checker, name: str, g, files: dict) -> None:
    where = f"graphs.{name}"
    if not isinstance(g, dict):
        c.fail(where, g, "an object {file, data_files, inputs, outputs, kv_layers, kv_heads, head_dim}")
    listed = [c.relpath(c.get(g, "file", where, str, "the graph's .onnx file name"), f"{where}.file")]
    data = c.get(g, "data_files", where, list, "a list of external data file names", optional=True) or []
    listed += [c.relpath(f, f"{where}.data_files") for f in data]
    for f in listed:
        if f not in files:
            raise ArtifactError(f"{c.path}: graph {name!r} file {f} has no entry in `files`; re-export the artifact")
    _check_tensors(c, f"{where}.inputs", c.get(g, "inputs", where, list, "a list of tensors"))
    outputs = _check_tensors(c, f"{where}.outputs", c.get(g, "outputs", where, list, "a list of tensors"))
    if not outputs:
        c.fail(f"{where}.outputs", outputs, "at least one output")
    for key in ("kv_layers", "kv_heads", "head_dim"):
        c.count(g, key, where, 0, optional=True)
    c.get(g, "attention", where, str, "an attention kind (empty for head graphs)", optional=True)


def _check_draft_vocab(c: _Checker, raw: dict, graphs: dict, files: dict) -> None:
    """`draft_vocab` (export --draft-vocab): {size, file, ...} with the id file listed in `files`, and graph
    `draft_head` with it. (Its logits width is held to `size` by the contract; the ids by the runtime's reader.)"""
    dv = c.get(raw, "draft_vocab", "", dict, "an object {size, file, source, coverage}", optional=True) or {}
    if not dv:
        if "draft_head" in graphs:
            c.fail("draft_vocab", dv, "an object {size, file, source, coverage} for graph 'draft_head'")
        return
    c.count(dv, "size", "draft_vocab", 1)
    name = c.relpath(c.get(dv, "file", "draft_vocab", str, "the token id file's name"), "draft_vocab.file")
    if name not in files:
        raise ArtifactError(f"{c.path}: draft_vocab.file {name} has no entry in `files`; re-export the artifact")
    if "draft_head" not in graphs:
        c.fail("graphs", sorted(graphs), "a graph 'draft_head' (the manifest has `draft_vocab`)")
