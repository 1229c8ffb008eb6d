"""Bytes of weights one decoded token reads, per mode, from the ONNX files (no `onnx` package needed).

A mode reads every initializer of its graphs once per decode step, except tables that
feed only `Gather` / `GatherBlockQuantized` nodes (embeddings): of those one row per token is read. A tensor
stored once and used by several graphs (the tied embedding / lm_head matrix, the
external data shared by `backbone` and `backbone_plain`) counts once: initializers are
keyed by (external file, offset), or by (graph file, name) when stored inline.
KV-cache reads are not included.

The ONNX protobuf is walked with a ~40-line wire-format reader: only ModelProto.graph,
GraphProto.node/initializer, NodeProto.input/op_type and TensorProto.dims/data_type/
name/external_data are decoded; tensor payloads are skipped, not read.
"""

from __future__ import annotations

import math
from pathlib import Path

from shadow_edge.errors import ArtifactError
from shadow_edge.manifest import Manifest

# TensorProto.DataType -> bytes per element (int4/uint4/float4 are packed two per byte)
ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
              17: 1, 18: 1, 19: 1, 20: 1, 21: 0.5, 22: 0.5, 23: 0.5}

ROW_LOOKUPS = {"Gather", "GatherBlockQuantized"}  # ops that read one row of a table per token


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value): int for varint/fixed, memoryview for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 1:
            value, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 5:
            value, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


def _tensor(buf: memoryview) -> dict:
    """name, dims, data_type, and external data location/offset of a TensorProto."""
    t = {"name": "", "dims": [], "data_type": 0, "external": {}}
    for num, wire, value in _fields(buf):
        if num == 1:
            if wire == 2:  # packed repeated int64
                j = 0
                while j < len(value):
                    d, j = _varint(value, j)
                    t["dims"].append(d)
            else:
                t["dims"].append(value)
        elif num == 2:
            t["data_type"] = value
        elif num == 8:
            t["name"] = bytes(value).decode()
        elif num == 13:  # StringStringEntryProto
            kv = {k: bytes(v).decode() for k, _, v in _fields(value)}
            t["external"][kv.get(1, "")] = kv.get(2, "")
    return t


def graph_weights(path: Path) -> tuple[dict[str, tuple[tuple, int, int]], dict[str, set[str]]]:
    """Initializers of one .onnx file: name -> (dedup key, bytes, rows), and name -> op types consuming it."""
    buf = memoryview(path.read_bytes())
    graph = next((v for num, _, v in _fields(buf) if num == 7), None)
    if graph is None:
        raise ValueError("no graph in the model")
    inits: dict[str, tuple[tuple, int, int]] = {}
    consumers: dict[str, set[str]] = {}
    for num, _, value in _fields(graph):
        if num == 5:
            t = _tensor(value)
            size = math.ceil(math.prod(t["dims"]) * ELEM_BYTES.get(t["data_type"], 4))
            ext = t["external"]
            key = (ext["location"], int(ext.get("offset", 0))) if "location" in ext else (path.name, t["name"])
            inits[t["name"]] = (key, size, t["dims"][0] if t["dims"] else 1)
        elif num == 1:
            inputs, op = [], ""
            for f, _, v in _fields(value):
                if f == 1:
                    inputs.append(bytes(v).decode())
                elif f == 4:
                    op = bytes(v).decode()
            for name in inputs:
                consumers.setdefault(name, set()).add(op)
    return inits, consumers


def weight_bytes(paths: list[Path]) -> int:
    """Bytes of weights one forward step over one token reads from these graphs (see the module docstring)."""
    full: dict[tuple, int] = {}
    row: dict[tuple, int] = {}
    for path in paths:
        try:
            inits, consumers = graph_weights(Path(path))
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: cannot read its initializers ({e}); re-export the artifact") from None
        for name, (key, size, rows) in inits.items():
            if name in consumers and consumers[name] <= ROW_LOOKUPS:
                row[key] = max(row.get(key, 0), size // max(rows, 1))
            else:
                full[key] = size
    return sum(full.values()) + sum(v for k, v in row.items() if k not in full)


def weight_bytes_per_token(art_dir: str | Path, manifest: Manifest, mode: str) -> int:
    """Bytes of weights one decode step of `mode` reads, over the mode's graphs."""
    return weight_bytes([Path(art_dir) / manifest.graphs[g].file for g in manifest.modes[mode].values()])
