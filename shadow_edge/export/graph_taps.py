"""Taps on an exported decoder graph: its per-layer activations as extra outputs, for block-wise validation.

The graph file is read without its weights, the tapped tensors become extra outputs, and onnxruntime
loads the changed graph from memory with its external data read from the artifact directory (nothing
is written into the artifact; weights stay where they are). Taps are found by the builder's stable node
names (export/onnx_builder.py, export/graphs.py):

  `/embed/*` (its last node)  the embedding rows                               [b, t, d]
  `/layers.{i}/mlp_residual`  the residual stream after decoder layer i        [b, t, d]
  `/adapter.{j}/inject/Sub`   its second input: the shadow state entering adapted block j  [b, t, d]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from shadow_edge import io_spec
from shadow_edge.errors import ExportError
from shadow_edge.manifest import GraphEntry
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import DEFAULT_PROVIDERS, bind_kv, ov, session_options

EXTERNAL_DIR = "session.model_external_initializers_file_folder_path"  # onnxruntime: where a model from bytes
# finds its external data files


@dataclass(frozen=True)
class Taps:
    """Tensor names of one decoder graph's activations (the graph's own names)."""

    embed: str  # [b, t, d] embedding rows
    layers: tuple[str, ...]  # [b, t, d] residual stream after layer i, one per layer
    states: dict[int, str]  # adapted block j -> the shadow state entering its injection [b, t, d]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a decoder graph has at least one layer to tap")

    def names(self) -> list[str]:
        return [self.embed, *self.layers, *self.states.values()]


def find_taps(model: onnx.ModelProto, graph: str, num_layers: int, adapted: int) -> Taps:
    """The taps of a decoder graph with `num_layers` layers and `adapted` adapted blocks (0: no adapter)."""
    nodes = {n.name: n for n in model.graph.node}
    embed = next((n.output[0] for n in reversed(model.graph.node) if n.name.startswith("/embed/")), None)
    layers = [nodes.get(f"/layers.{i}/mlp_residual") for i in range(num_layers)]
    injects = [nodes.get(f"/adapter.{j}/inject/Sub") for j in range(adapted)]
    missing = ([] if embed else ["/embed/*"]) + [f"/layers.{i}/mlp_residual" for i, n in enumerate(layers) if n is None]
    missing += [f"/adapter.{j}/inject/Sub" for j, n in enumerate(injects) if n is None]
    if missing:
        raise ExportError(f"graph {graph!r} has no node {missing[0]} (of {len(missing)} missing); block-wise "
                          "validation reads the builder's node names; exporter bug")
    # the stream is the node's sum: output 0 of an Add, output 3 of a fused Skip*Normalization
    stream = [n.output[3] if n.op_type.startswith("Skip") else n.output[0] for n in layers]
    return Taps(embed, tuple(stream), {j: n.input[1] for j, n in enumerate(injects)})


class TapSession:
    """One decoder graph with its taps as extra outputs, loaded from memory over the artifact's data files."""

    def __init__(self, art_dir: Path, name: str, entry: GraphEntry, adapted: int, threads: int | None = None):
        self.name, self.entry = name, entry
        model = onnx.load(str(Path(art_dir) / entry.file), load_external_data=False)
        self.taps = find_taps(model, name, entry.kv_layers, adapted)
        graph_inputs = {i.name for i in model.graph.input}
        self.outputs = [t for t in dict.fromkeys(self.taps.names()) if t not in graph_inputs]
        model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in self.outputs)
        options = session_options(threads, prepack=False)  # one prefill: no packed weight copies
        options.add_session_config_entry(EXTERNAL_DIR, str(Path(art_dir).resolve()))
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                                providers=list(DEFAULT_PROVIDERS))
        except Exception as e:  # onnxruntime's own exception types
            raise ExportError(f"graph {name!r} with taps does not load in onnxruntime ({str(e).splitlines()[0]}); "
                              "exporter bug") from None
        contract = entry.as_contract(name)
        self.main_output = contract.main_output
        self.kv_pairs = contract.kv_pairs

    def prefill(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray], list[np.ndarray]]:
        """Run the whole sequence as one prefill into an empty cache: (main output [b, t, d],
        tap name -> activation [b, t, d] (fed inputs included), present key/value per layer [b, kv, t, hd])."""
        b, t = feed[io_spec.INPUT_IDS].shape
        cache = KVCache.empty(b, self.entry.kv_layers, self.entry.kv_heads, self.entry.head_dim, t)
        io = self.session.io_binding()
        io.bind_output(self.main_output, "cpu")
        for name in self.outputs:
            io.bind_output(name, "cpu")
        for name, value in feed.items():
            io.bind_ortvalue_input(name, ov(value))
        bind_kv(io, self.kv_pairs, cache.tensors)
        try:
            self.session.run_with_iobinding(io)
        except Exception as e:
            raise ExportError(f"graph {self.name!r} with taps failed in onnxruntime ({str(e).splitlines()[0]}); "
                              "exporter bug") from None
        main, *tapped = [o.numpy() for o in io.get_outputs()]
        acts = dict(zip(self.outputs, tapped))
        acts.update({k: v for k, v in feed.items() if k in self.taps.names()})  # a tap that is a graph input
        return main, acts, [a[:, :, :t] for a in cache.arrays]
