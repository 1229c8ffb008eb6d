"""A small ONNX graph builder with stable node names and a deduplicating external weight store.

Graphs are written by hand (like onnxruntime-genai's builder) rather than traced, so that
equal tensors (a tied vocabulary matrix seen by several graphs) are stored once,
weights are fused (qkv, gate|up) and node names are stable (`/layers.3/attn/qkv/MatMul`).
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shadow_edge.errors import ExportError
from shadow_edge.io_spec import GraphContract

OPSET = 17  # + ORT's SimplifiedLayerNormalization (ONNX domain) and com.microsoft contrib ops
INLINE_LIMIT = 1024  # bytes: smaller tensors live inside the .onnx file
PAGE = 4096  # large tensors start on a page boundary so onnxruntime can map them
ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}


class WeightStore:
    """Every weight once, by key; records which graphs use it; streams the external data files.

    `add` records how to make a weight (a function), not its values. `write` makes the weights one at
    a time in the order they were added, writes each large one to its owner's data file at once and lets
    it go; so at most one weight (plus what making it takes) is in memory. Small ones stay, inline.
    """

    def __init__(self) -> None:
        self.makers: dict[str, Callable[[], np.ndarray]] = {}  # key -> makes its values (float32 or packed uint8)
        self.arrays: dict[str, np.ndarray] = {}  # inline (small) weights, once written
        self.meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}  # key -> (dtype, shape), once written
        self.users: dict[str, list[str]] = {}
        self.location: dict[str, tuple[str, int, int]] = {}  # key -> (file, offset, length)
        self.written = False

    def add(self, key: str, graph: str, make: Callable[[], np.ndarray]) -> None:
        if self.written:
            raise ValueError(f"weight {key!r} added after the weights were written; exporter bug")
        self.makers.setdefault(key, make)
        users = self.users.setdefault(key, [])
        if graph not in users:
            users.append(graph)

    def array(self, key: str) -> np.ndarray:
        """The values of one weight: the inline copy once written, else made now (and not kept)."""
        return self.arrays[key] if key in self.arrays else np.ascontiguousarray(self.makers[key]())

    def nbytes(self) -> int:
        """Bytes of every weight (known once written)."""
        return sum(dtype.itemsize * int(np.prod(shape)) for dtype, shape in self.meta.values())

    def write(self, out_dir: Path, graph_order: list[str],
              on_weight: Callable[[int, float, float], None] = lambda nbytes, make_s, write_s: None) -> None:
        """Make each weight and write the large ones to `<owner>.onnx.data`, the owner being its first user in
        `graph_order`; `on_weight(bytes, seconds making, seconds writing)` after each.

        Arrays with identical bytes (e.g. the packed vocabulary seen as embedding rows and as head
        blocks) are written once and share one location.
        """
        self.written = True
        handles: dict[str, object] = {}
        written: dict[tuple, tuple[str, int, int]] = {}
        try:
            for key, make in self.makers.items():
                started = time.perf_counter()
                arr = np.ascontiguousarray(make())
                made = time.perf_counter()
                self.meta[key] = (arr.dtype, arr.shape)
                if arr.nbytes < INLINE_LIMIT:
                    self.arrays[key] = arr
                else:
                    self._write_one(out_dir, key, arr, min(self.users[key], key=graph_order.index), handles, written)
                on_weight(arr.nbytes, made - started, time.perf_counter() - made)
                del arr
        finally:
            for f in handles.values():
                f.close()

    def _write_one(self, out_dir: Path, key: str, arr: np.ndarray, owner: str, handles: dict, written: dict) -> None:
        view = memoryview(arr).cast("B")  # [nbytes], no copy
        digest = (arr.dtype.str, hashlib.blake2b(view, digest_size=16).digest())
        if digest in written:
            self.location[key] = written[digest]
            return
        fname = f"{owner}.onnx.data"
        if fname not in handles:
            handles[fname] = open(out_dir / fname, "wb")
        f = handles[fname]
        f.write(b"\0" * ((-f.tell()) % PAGE))
        self.location[key] = written[digest] = (fname, f.tell(), arr.nbytes)
        f.write(view)

    def data_files(self, graph: str) -> list[str]:
        return sorted({self.location[k][0] for k, users in self.users.items() if graph in users and k in self.location})


class GraphBuilder:
    """Builds one graph: I/O declared from its contract (io_spec), nodes under named scopes, initializers
    from the store."""

    def __init__(self, contract: GraphContract, store: WeightStore):
        self.name, self.store, self.contract = contract.name, store, contract
        self.nodes: list[onnx.NodeProto] = []
        self.inputs = [helper.make_tensor_value_info(t.name, ELEM[t.dtype], list(t.shape)) for t in contract.inputs]
        self.outputs = [helper.make_tensor_value_info(t.name, ELEM[t.dtype], list(t.shape)) for t in contract.outputs]
        self.weights: list[str] = []
        self.consts: dict[str, np.ndarray] = {}
        self._scope: list[str] = []
        self._count: dict[str, int] = {}
        self._shared: dict[str, object] = {}
        self.opset = OPSET

    def require_opset(self, version: int) -> None:
        """Raise the graph's default-domain opset to at least `version` (ops newer than OPSET)."""
        self.opset = max(self.opset, version)

    def shared(self, key: str, make: Callable[[], object]):
        """Values built once per graph and reused by every layer (masks, lengths): `make()` on first use."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def output(self, value: str, name: str) -> None:
        """Make `value` the contract's output `name` (renames it in place; no Identity copy)."""
        for node in self.nodes:
            node.output[:] = [name if o == value else o for o in node.output]
            node.input[:] = [name if o == value else o for o in node.input]

    def weight(self, key: str, make: Callable[[], np.ndarray]) -> str:
        self.store.add(key, self.name, make)
        if key not in self.weights:
            self.weights.append(key)
        return key

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = f"const_{arr.dtype}_{'x'.join(map(str, arr.shape))}_{arr.tobytes().hex()}"
        if len(key) > 120:
            key = f"const_{len(self.consts)}"
        self.consts.setdefault(key, arr)
        return key

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", tag: str | None = None, **attrs) -> str | list[str]:
        base = "/".join(self._scope + [tag or op_type])
        idx = self._count.get(base, 0)
        self._count[base] = idx + 1
        node_name = f"/{base}" + (f"_{idx}" if idx else "")
        outs = [f"{node_name}/output_{i}" if o is None else o  # "": an optional output left out
                for i, o in enumerate(outputs or [None] * n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 and len(outs) == 1 else outs

    def to_model(self, overridable: dict[str, list] | None = None) -> onnx.ModelProto:
        """The graph; weights in `overridable` (key -> [dtype, shape]) are also graph inputs (overridable
        initializers: onnxruntime uses the stored value unless a run feeds one)."""
        produced = {o for n in self.nodes for o in n.output}
        consumed = {i for n in self.nodes for i in n.input}
        missing = [t.name for t in self.contract.outputs if t.name not in produced] + \
            [t.name for t in self.contract.inputs if t.name not in consumed]
        if missing:
            raise ExportError(f"graph {self.name}: contract I/O {missing} not wired by the builder; exporter bug")
        inits = [numpy_helper.from_array(v, k) for k, v in self.consts.items()]
        for key in self.weights:
            if key not in self.store.location:
                inits.append(numpy_helper.from_array(self.store.arrays[key], key))
                continue
            fname, offset, length = self.store.location[key]
            dtype, shape = self.store.meta[key]
            t = TensorProto(name=key, data_type=helper.np_dtype_to_tensor_dtype(dtype), dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", fname), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            inits.append(t)
        slots = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                 for k, (dt, shape) in (overridable or {}).items()]
        graph = helper.make_graph(self.nodes, self.name, self.inputs + slots, self.outputs, initializer=inits)
        model = helper.make_model(graph, producer_name="shadow-edge",
                                  opset_imports=[helper.make_opsetid("", self.opset),
                                                 helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = next(row[1] for row in helper.VERSION_TABLE if row[2] >= self.opset)  # opset 17: IR 8
        return model
