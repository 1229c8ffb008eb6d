"""Join a chain of an artifact's split graphs (shadow [-> backbone] -> head) into one decoder graph.

The result has the optimum / onnxruntime-genai decoder contract: `input_ids`, `attention_mask`,
`position_ids`, `past_key_values.{i}.key|value` -> `logits`, `present.{i}.key|value`. KV layers
are renumbered along the chain (shadow layers first, then backbone layers). The state that
crossed graphs (`shadow_hidden_states`, `hidden_states`) becomes internal. Initializers keep
their external-data references, so the joined graph reads the artifact's existing weight files
(no weight byte is written twice). The graphs are joined by hand (onnx.compose.merge_models
runs onnx's checker, which rejects the com.microsoft contrib ops these graphs use).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from shadow_edge import io_spec
from shadow_edge.errors import ExportError
from shadow_edge.manifest import GraphEntry


@dataclass(frozen=True)
class Chain:
    """Graphs to join, in execution order: KV-cached stacks first, the vocabulary head last."""

    graphs: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.graphs) < 2:
            raise ExportError(f"a single-graph decoder joins at least two graphs (a stack and a head); got "
                              f"{list(self.graphs)}")

    @staticmethod
    def of_mode(roles: dict[str, str]) -> "Chain":
        """The chain of one manifest mode (role -> graph name)."""
        return Chain(tuple(roles[r] for r in io_spec.ROLES if r in roles))


def kv_layers(chain: Chain, graphs: dict[str, GraphEntry]) -> int:
    return sum(graphs[g].kv_layers for g in chain.graphs)


def kv_shapes(chain: Chain, graphs: dict[str, GraphEntry]) -> set[tuple[int, int]]:
    """The distinct (kv_heads, head_dim) of the chain's stacks; one entry = one uniform KV cache."""
    return {(graphs[g].kv_heads, graphs[g].head_dim) for g in chain.graphs if graphs[g].kv_layers}


def join(art_dir: Path, graphs: dict[str, GraphEntry], chain: Chain, name: str) -> onnx.ModelProto:
    """One model from `chain`'s graph files under `art_dir` (weights stay external, in place)."""
    step = [t.name for t in io_spec.step_inputs()]
    inits: dict[str, onnx.TensorProto] = {}
    nodes: list[onnx.NodeProto] = []
    inputs: dict[str, onnx.ValueInfoProto] = {}
    outputs: dict[str, onnx.ValueInfoProto] = {}
    opsets: dict[str, int] = {}
    carried: str | None = None  # the previous graph's hidden output, as named in the joined graph
    offset = 0
    for pos, gname in enumerate(chain.graphs):
        entry, last = graphs[gname], pos == len(chain.graphs) - 1
        model = onnx.load(str(art_dir / entry.file), load_external_data=False)
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        g = model.graph
        ren: dict[str, str] = {n: n for n in step}
        for layer in range(entry.kv_layers):
            for kind in io_spec.KV_KINDS:
                ren[io_spec.past_name(layer, kind)] = io_spec.past_name(layer + offset, kind)
                ren[io_spec.present_name(layer, kind)] = io_spec.present_name(layer + offset, kind)
        offset += entry.kv_layers
        state_in = [t.name for t in entry.inputs if t.name not in ren]
        state_out = [t.name for t in entry.outputs if t.name not in ren]
        if len(state_out) != 1 or len(state_in) > 1 or (state_in and carried is None):
            raise ExportError(f"graph {gname!r} ({entry.file}): inputs {state_in} / outputs {state_out} besides the "
                              "step inputs and KV do not chain (expected at most one state input, fed by the "
                              "previous graph, and one output); exporter bug")
        for n in state_in:
            ren[n] = carried
        out = state_out[0]
        ren[out] = out if last else _scoped(gname, out)
        carried = ren[out]
        for t in g.initializer:
            if t.name in inits and not _same_tensor(inits[t.name], t):
                ren[t.name] = _scoped(gname, t.name)
            else:
                ren.setdefault(t.name, t.name)
            if ren[t.name] not in inits:
                copy = onnx.TensorProto()
                copy.CopyFrom(t)
                copy.name = ren[t.name]
                inits[copy.name] = copy

        def rename(value: str) -> str:
            return "" if value == "" else ren.setdefault(value, _scoped(gname, value))

        for node in g.node:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.name = _scoped(gname, node.name)
            n.input[:] = [rename(v) for v in node.input]
            n.output[:] = [rename(v) for v in node.output]
            nodes.append(n)
        for vi in g.input:
            if ren[vi.name] in step and vi.name in inputs:
                continue
            if vi.name in state_in:
                continue
            inputs[ren[vi.name]] = _renamed(vi, ren[vi.name])
        for vi in g.output:
            if vi.name == out and not last:
                continue
            outputs[ren[vi.name]] = _renamed(vi, ren[vi.name])
    graph = onnx.helper.make_graph(nodes, name, _ordered(inputs, io_spec.PAST), _ordered(outputs, io_spec.PRESENT),
                                   initializer=list(inits.values()))
    joined = onnx.helper.make_model(graph, producer_name="shadow-edge",
                                    opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    joined.ir_version = model.ir_version
    return joined


def _scoped(graph: str, value: str) -> str:
    return f"/{graph}{value}" if value.startswith("/") else f"/{graph}/{value}"


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    """Same name, and the same bytes (inline) or the same external location: one tensor."""
    a2, b2 = onnx.TensorProto(), onnx.TensorProto()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    a2.name = b2.name = ""
    return a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)


def _renamed(vi: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    out.name = name
    return out


def _ordered(values: dict[str, onnx.ValueInfoProto], kv_prefix: str) -> list[onnx.ValueInfoProto]:
    """Non-KV values first (in first-seen order), then KV by layer, key before value."""
    def key(name: str):
        if not name.startswith(f"{kv_prefix}."):
            return (0, 0, 0)
        _, layer, kind = name.split(".")
        return (1, int(layer), io_spec.KV_KINDS.index(kind))

    return [values[n] for n in sorted(values, key=key)]
