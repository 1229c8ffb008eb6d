"""onnxruntime sessions, one per graph, checked against the manifest's I/O table.

A `GraphSession` runs with `OrtValue`s in and out (`run_with_ort_values`), so KV tensors
and the shadow state pass from one step or graph to the next without numpy round trips.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shadow_edge.errors import ArtifactError
from shadow_edge.io_spec import GraphContract, TensorSpec
from shadow_edge.manifest import GraphEntry, member_path
from shadow_edge.runtime.mapped_pages import release_mapped
from shadow_edge.runtime.inputs import thread_count

ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
             "tensor(int32)": "int32", "tensor(bool)": "bool"}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def ov(array: np.ndarray) -> ort.OrtValue:
    """Wrap a numpy array (made contiguous) as a CPU OrtValue; the OrtValue keeps it alive."""
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def bind_kv(io: ort.IOBinding, pairs: list[tuple[str, str]], buffers: list[ort.OrtValue]) -> None:
    """Bind each KV pair's past input and present output to one buffer: the graph writes the new positions inside
    it (io_spec.KV_BINDING; no concat copy). `pairs`: (past, present) names in KV cache order."""
    for (past, present), buf in zip(pairs, buffers, strict=True):
        io.bind_ortvalue_input(past, buf)
        io.bind_ortvalue_output(present, buf)


_pool_threads: int | None = None  # the process-wide pool's size once set; 0 = none (unavailable or not wanted)
_pool_lock = threading.Lock()  # runtimes loaded by concurrent threads create the pool once


def session_options(threads: int | None, prepack: bool = True, spin: bool = True) -> ort.SessionOptions:
    """Options for a session of this process. By default every shadow-edge session shares one thread pool.

    A mode runs two or three sessions per token; with a pool per session, the idle pools
    spin on the same cores while the next session runs (measured: ~2x slower decode). So
    the first call creates onnxruntime's process-wide pool with `threads` threads (default:
    all cores) and every session uses it; the size cannot change afterwards (a warning says
    so). Where onnxruntime refuses a global pool, sessions get their own non-spinning pools.
    `prepack=False` keeps weights as stored: right for the vocabulary heads, whose MatMul reads the
    stored [d, vocab] matrix as it lies (as fast for one position, and no 0.6 GB packed copy).
    `spin=False` in the process's first call: no process-wide pool; every session gets a pool of its
    own whose threads sleep between work items (the shared pool's threads spin, and onnxruntime's
    Python API cannot stop that). A lone stream decodes ~15% slower, but no spinning thread burns
    the CPU share that other threads of the process (a server's niced decode thread) and other
    processes need (`serve` uses it; benchmarks/results/serving.md). Like the size, the choice is
    the first call's: onnxruntime allows no session of its own beside a process-wide pool.
    """
    global _pool_threads
    n = thread_count(threads) or (os.cpu_count() or 1)
    with _pool_lock:
        if _pool_threads is None:
            _pool_threads = _create_pool(n) if spin else 0
            created = True
        else:
            created = False
    if not created and _pool_threads and n != _pool_threads:
        warnings.warn(f"threads={n} ignored: this process's onnxruntime thread pool already has {_pool_threads} "
                      "threads (it is sized by the first runtime loaded)", stacklevel=3)
    if not created and _pool_threads and not spin:
        warnings.warn("spin_threads=False ignored: this process's first runtime created onnxruntime's "
                      "process-wide pool, which every later session must use", stacklevel=3)
    return _options(n, prepack, shared=bool(_pool_threads))


def _create_pool(n: int) -> int:
    try:
        ort.set_global_thread_pool_sizes(n, 1)
        return n
    except Exception:  # onnxruntime refuses it (e.g. its environment exists already)
        return 0


def _options(n: int, prepack: bool, shared: bool) -> ort.SessionOptions:
    """Options on the process-wide pool (`shared`), else on a pool of the session's own: n threads that sleep
    between work items."""
    so = ort.SessionOptions()
    if shared:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads, so.inter_op_num_threads = n, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return so


def prepack_weights(entry: GraphEntry, quantization: str) -> bool:
    """Whether a graph's session should prepack its weights: float32 heads run faster unpacked
    (and skip a 0.6 GB packed copy); decoder graphs and quantized kernels prepack."""
    return entry.kv_layers > 0 or quantization != "none"


def _describe(args) -> dict[str, tuple[str, int, tuple]]:
    return {a.name: (ORT_TYPES.get(a.type, a.type), len(a.shape), tuple(a.shape)) for a in args}


def io_diff(kind: str, found, expected: list[TensorSpec]) -> list[str]:
    """Differences between a session's inputs/outputs and the manifest's table (names, dtypes, ranks, int dims)."""
    have, want = _describe(found), {t.name: t for t in expected}
    diff = [f"{kind} {n!r} expected by the manifest is missing" for n in want if n not in have]
    diff += [f"{kind} {n!r} is not in the manifest" for n in have if n not in want]
    for name, spec in want.items():
        if name not in have:
            continue
        dtype, rank, shape = have[name]
        if dtype != spec.dtype:
            diff.append(f"{kind} {name!r} has dtype {dtype}, manifest says {spec.dtype}")
        if rank != len(spec.shape):
            diff.append(f"{kind} {name!r} has rank {rank} {list(shape)}, manifest says {len(spec.shape)} "
                        f"{list(spec.shape)}")
            continue
        for axis, (got, exp) in enumerate(zip(shape, spec.shape)):
            if isinstance(got, int) and isinstance(exp, int) and got != exp:
                diff.append(f"{kind} {name!r} axis {axis} is {got}, manifest says {exp}")
    return diff


class GraphSession:
    """One ONNX graph loaded in onnxruntime, with its feed/fetch names from its contract (io_spec)."""

    def __init__(self, name: str, entry: GraphEntry, art_dir: Path, providers=None, threads: int | None = None,
                 prepack: bool = True, contract: GraphContract | None = None,
                 initializers: dict[str, ort.OrtValue] | None = None, spin: bool = True):
        """`contract`: the graph's contract (`Manifest.contract(name)`; `read_manifest` has held the entry to it);
        default: the entry as it is. `initializers`: values that replace the graph's initializers of those names
        (`SessionOptions.add_initializer`: onnxruntime uses the given buffers, no copy, as constants it may
        prepack; an adapter pack's weights, runtime/pack_sessions.py); the session keeps them alive.
        `spin`: see `session_options`."""
        self.name, self.entry = name, entry
        self.contract = contract or entry.as_contract(name)
        self.path = path = member_path(art_dir, entry.file)
        data_files = [member_path(art_dir, data) for data in entry.data_files]
        try:
            options = session_options(threads, prepack, spin)
            self.initializers = dict(initializers or {})
            for key, value in self.initializers.items():
                options.add_initializer(key, value)
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=list(providers or DEFAULT_PROVIDERS))
        except Exception as e:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: onnxruntime cannot load graph {name!r} ({_first_line(e)}); "
                                "re-export the artifact") from None
        release_mapped(data_files)  # pages read while loading (prepacked originals, scales): not resident
        diff = io_diff("input", self.session.get_inputs(), entry.inputs) + \
            io_diff("output", self.session.get_outputs(), entry.outputs)
        if diff:
            raise ArtifactError(f"{path}: graph {name!r} does not match its I/O table in manifest.json: "
                                + "; ".join(diff) + "; re-export the artifact")
        self.input_names = [t.name for t in self.contract.inputs]
        self.output_names = [t.name for t in self.contract.outputs]
        self.kv_pairs = self.contract.kv_pairs  # (past input, present output): one buffer each
        self.main_output = self.contract.main_output  # hidden state or logits, then present.*

    def run(self, feed: dict[str, ort.OrtValue]) -> list[ort.OrtValue]:
        """Run a graph without KV cache (the heads); returns its outputs in table order."""
        try:
            return self.session.run_with_ort_values(self.output_names, feed)
        except Exception as e:  # onnxruntime's own types: a graph that disagrees with its manifest
            raise self._run_error(e) from None

    def run_in_place(self, feed: dict[str, ort.OrtValue], kv: list[ort.OrtValue], bound: dict | None = None,
                     fixed: dict[str, ort.OrtValue] | None = None) -> ort.OrtValue:
        """Run a KV-cached graph with each past_key_values.* and its present.* bound to one buffer.

        The graph writes the new keys/values inside the buffers (io_spec.KV_BINDING; no concat copy).
        `fixed`: inputs that do not change between steps (an adapter pack's weights), bound with the KV pairs.
        `bound`: a dict owned with the buffers (`KVCache.bindings`, emptied when they change) that keeps this
        graph's binding between steps, so only `feed` is bound again (the KV pairs and `fixed` once per cache).
        Returns the main output (hidden states) [b, t, d].
        """
        io, made_for = (None, None) if bound is None else bound.get(self, (None, None))
        if io is None or made_for is not fixed:
            io = self.session.io_binding()
            io.bind_output(self.main_output, "cpu")  # first: get_outputs() follows binding order
            bind_kv(io, self.kv_pairs, kv)
            for name, value in (fixed or {}).items():
                io.bind_ortvalue_input(name, value)
            if bound is not None:
                bound[self] = (io, fixed)
        else:  # a fresh output each run (onnxruntime would write the last one's buffer again, or refuse its shape)
            io.bind_output(self.main_output, "cpu")
        for name, value in feed.items():
            io.bind_ortvalue_input(name, value)
        self.run_bound(io)
        return io.get_outputs()[0]

    def bind(self, inputs: dict[str, ort.OrtValue], outputs: dict[str, ort.OrtValue]) -> ort.IOBinding:
        """An IOBinding of these inputs and preallocated outputs, kept by the caller across runs (a decode loop's
        buffers: `decode_state.DecodeState`), who keeps the OrtValues alive as long as the binding."""
        io = self.session.io_binding()
        for name, value in inputs.items():
            io.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            io.bind_ortvalue_output(name, value)
        return io

    def run_bound(self, io: ort.IOBinding) -> None:
        """Run with an IOBinding: the bound outputs are written in place."""
        try:
            self.session.run_with_iobinding(io)
        except Exception as e:
            raise self._run_error(e) from None

    def _run_error(self, e: Exception) -> ArtifactError:
        return ArtifactError(f"{self.path}: onnxruntime failed running graph {self.name!r} ({_first_line(e)}); the "
                             "graph does not fit the dims in manifest.json; re-export the artifact")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
