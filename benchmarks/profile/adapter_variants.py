"""The adapter's nodes as onnxruntime runs them in an artifact's backbone, and rewrites of them timed in place.

    python -m benchmarks.profile.adapter_nodes --artifact ART [--variants control,nosplit,inject1,skipln] [--rounds 60]

ART: a float32 artifact exported with --plain-backbone (`backbone`, `backbone_plain`, `shadow`, `lm_head`).
1. *Nodes*: `backbone` and `backbone_plain` as a session of the runtime optimizes them (ORT_ENABLE_ALL, the
   optimized graph saved with `optimized_model_filepath`): op types per graph and the difference per adapted layer.
2. *Variants*: the exported backbone rewritten (onnx, weights folded in numpy) per candidate, each checked against
   the exported one (max |diff| of `hidden_states` of one decode step, same feeds), then one decode step of
   `backbone_plain`, `shadow`, `lm_head`, the exported backbone and every variant, back to back, the order rotated
   each round (`run_rounds`: each graph streams its weights, so the adapter's run cold, as in a real step).
   Per variant: median ms, the change against the exported backbone (median of the per-round differences) and the
   adapter's cost per combined step, (backbone - backbone_plain + shadow) / (backbone_plain + lm_head).
Variants (`VARIANTS`, written beside the backbone as backbone.variant-NAME.onnx; sessions open in the order given):
  control  the exported backbone unchanged, in a session of its own: the A/A control for the others
  nosplit  the update's G/T output weights zero-padded to [2g, d], both reading the whole activation: no Split
  inject1  the injection's two matmuls as one d x d MatMul (W_down @ W_up): a node less, d^2 - 2dk more floats
  skipln   the layer's output Add and the update's LayerNormalization as one SkipLayerNormalization
"""

from __future__ import annotations

import bisect
import json
import statistics
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from benchmarks.lib.timing import run_rounds
from shadow_edge import io_spec
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, ov, prepack_weights, session_options


def optimized_ops(art: Path, graph: str, threads: int = 2) -> Counter:
    """Op types of `graph` after onnxruntime's optimizations, as the runtime's session options run them."""
    entry = read_manifest(art).graphs[graph]
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(threads, prepack_weights(entry, "none"))
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(art / entry.file), sess_options=so, providers=["CPUExecutionProvider"])
        model = onnx.load(str(Path(tmp) / "opt.onnx"), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node)


def node_table(art: Path, threads: int = 2) -> str:
    """Markdown: op types of backbone and backbone_plain after optimization, and their difference per adapted layer."""
    m = read_manifest(art)
    lo, hi = m.model["adapted_layers"]
    layers = hi - lo  # adapted layers (injections); updates: one fewer
    adapted, plain = (optimized_ops(art, g, threads) for g in (io_spec.GRAPH_BACKBONE, io_spec.GRAPH_BACKBONE_PLAIN))
    rows = ["| op type (as onnxruntime runs it) | backbone | backbone_plain | difference | per adapted layer |",
            "|---|---:|---:|---:|---:|"]
    for op in sorted(set(adapted) | set(plain), key=lambda o: -(adapted[o] - plain[o])):
        diff = adapted[op] - plain[op]
        if diff:
            rows.append(f"| {op} | {adapted[op]} | {plain[op]} | {diff:+d} | {diff / layers:+.2f} |")
    total = sum(adapted.values()) - sum(plain.values())
    rows.append(f"| **all** | {sum(adapted.values())} | {sum(plain.values())} | {total:+d} | {total / layers:+.2f} |")
    return "\n".join(rows)


class _Graph:
    """The exported backbone as an editable onnx graph; new weights are inline initializers."""

    def __init__(self, art: Path, entry) -> None:
        self.art, self.model = art, onnx.load(str(art / entry.file), load_external_data=False)
        self.inits = {t.name: t for t in self.model.graph.initializer}

    def weight(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name], base_dir=str(self.art))

    def add(self, name: str, value: np.ndarray) -> str:
        self.model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def node(self, name: str):
        return next(n for n in self.model.graph.node if n.name == name)

    def nodes(self, prefix: str):
        return [n for n in self.model.graph.node if n.name.startswith(prefix)]

    def drop(self, *nodes) -> None:
        for n in nodes:
            self.model.graph.node.remove(n)


def _blocks(g: _Graph) -> list[int]:
    return sorted({int(n.name.split("/")[1].split(".")[1]) for n in g.nodes("/adapter.")})


def nosplit(g: _Graph) -> None:
    for j in _blocks(g):
        split = [n for n in g.nodes(f"/adapter.{j}/update/") if n.op_type == "Split"]
        if not split:
            continue  # the last block has no update
        split = split[0]
        act = split.input[0]
        gate, target = (next(n for n in g.nodes(f"/adapter.{j}/update/") if n.op_type == "MatMul" and n.input[0] == o)
                        for o in split.output)
        wg, wt = g.weight(gate.input[1]), g.weight(target.input[1])  # [g, d] each
        gate.input[0], target.input[0] = act, act
        gate.input[1] = g.add(f"adapter.{j}.gate_out_padded", np.concatenate([wg, np.zeros_like(wt)]))
        target.input[1] = g.add(f"adapter.{j}.transform_out_padded", np.concatenate([np.zeros_like(wg), wt]))
        g.drop(split)


def inject1(g: _Graph) -> None:
    for j in _blocks(g):
        down, up = g.node(f"/adapter.{j}/inject/MatMul"), g.node(f"/adapter.{j}/inject/MatMul_1")
        up.input[0] = down.input[0]
        up.input[1] = g.add(f"adapter.{j}.inject_merged", g.weight(down.input[1]) @ g.weight(up.input[1]))
        g.drop(down)


def skipln(g: _Graph) -> None:
    for ln in [n for n in g.model.graph.node if n.op_type == "LayerNormalization"]:
        add = next(n for n in g.model.graph.node if ln.input[0] in n.output)
        eps = next(a.f for a in ln.attribute if a.name == "epsilon")
        fused = helper.make_node("SkipLayerNormalization", [*add.input, *ln.input[1:]],
                                 [ln.output[0], "", "", add.output[0]], name=ln.name + "_skip",
                                 domain="com.microsoft", epsilon=eps)
        at = list(g.model.graph.node).index(add)
        g.drop(add, ln)
        g.model.graph.node.insert(at, fused)


def control(g: _Graph) -> None:
    """No change: a second session of the same graph, the A/A control (sessions of one graph differ by their
    weights' placement in memory)."""


VARIANTS = {"control": control, "nosplit": nosplit, "inject1": inject1, "skipln": skipln}


def write_variant(art: Path, name: str) -> str:
    """Write the backbone rewritten by VARIANTS[name] beside it (backbone.variant-NAME.onnx); returns the file."""
    entry = read_manifest(art).graphs[io_spec.GRAPH_BACKBONE]
    g = _Graph(art, entry)
    VARIANTS[name](g)
    if not any(o.domain == "com.microsoft" for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out = f"{io_spec.GRAPH_BACKBONE}.variant-{name}.onnx"
    onnx.save(g.model, str(art / out))
    return out


def _step(sess: GraphSession, entry, d: int, past: int, s: np.ndarray):
    feed = {io_spec.INPUT_IDS: np.array([[5]]), io_spec.ATTENTION_MASK: np.ones((1, past + 1), np.int64),
            io_spec.POSITION_IDS: np.array([[past]])}
    if io_spec.SHADOW_HIDDEN in sess.input_names:
        feed[io_spec.SHADOW_HIDDEN] = s
    cache = KVCache.empty(1, entry.kv_layers, entry.kv_heads, entry.head_dim, past + 1)  # the step writes `past`
    rng = np.random.default_rng(1)
    for a in cache.arrays:
        a[:] = rng.standard_normal(a.shape)
    feed = {k: ov(v) for k, v in feed.items()}
    return lambda: sess.run_in_place(feed, cache.tensors)


def time_variants(art: Path, names: list[str], reps: int, past: int = 64, threads: int = 2) -> dict:
    """Fidelity and interleaved decode-step times of the exported backbone, its variants and the other graphs."""
    m = read_manifest(art)
    d = m.model["hidden_size"]
    s = np.random.default_rng(0).standard_normal((1, 1, d)).astype(np.float32)
    runs, diffs = {}, {}
    graphs = {g: m.graphs[g] for g in (io_spec.GRAPH_BACKBONE_PLAIN, io_spec.GRAPH_SHADOW, io_spec.GRAPH_LM_HEAD,
                                       io_spec.GRAPH_BACKBONE)}
    graphs.update({f"backbone:{n}": replace(m.graphs[io_spec.GRAPH_BACKBONE], file=write_variant(art, n))
                   for n in names})
    for key, entry in graphs.items():
        sess = GraphSession(key, entry, art, threads=threads, prepack=prepack_weights(entry, m.quantization),
                            contract=m.contract(key.split(":")[0]))
        if entry.kv_layers:
            runs[key] = _step(sess, entry, d, past, s)
        else:
            x = {io_spec.HIDDEN: ov(s)}
            runs[key] = (lambda sess, x: lambda: sess.run(x))(sess, x)
    ref = runs[io_spec.GRAPH_BACKBONE]().numpy()
    for n in names:
        diffs[n] = float(np.abs(runs[f"backbone:{n}"]().numpy() - ref).max())
    result = run_rounds(runs, reps=reps, warmup=3)
    ms = {k: [smp.ms for smp in v] for k, v in result.samples.items()}
    med = {k: statistics.median(v) for k, v in ms.items()}
    step = med[io_spec.GRAPH_BACKBONE_PLAIN] + med[io_spec.GRAPH_LM_HEAD]
    out = {}
    for key in [io_spec.GRAPH_BACKBONE] + [f"backbone:{n}" for n in names]:
        delta = statistics.median(a - b for a, b in zip(ms[key], ms[io_spec.GRAPH_BACKBONE]))
        adapter = med[key] - med[io_spec.GRAPH_BACKBONE_PLAIN] + med[io_spec.GRAPH_SHADOW]
        out[key] = {"ms": med[key], "vs_exported_ms": delta, "adapter_ms": adapter, "overhead": adapter / step,
                    "max_abs_diff": diffs.get(key.partition(":")[2], 0.0)}
    return {"graph_ms": med, "variants": out, "reps": reps, "past": past}


def _is_adapter(node: str) -> bool:
    """A kernel of the adapter's nodes or of the layer outputs they read (unfused Add, fused norm)."""
    return "/adapter." in node or "mlp_residual" in node


def kernel_times(art: Path, names: list[str], reps: int, past: int = 64, threads: int = 2) -> dict:
    """onnxruntime's own kernel times (profiling) of the exported backbone and its variants, one decode step each,
    back to back, the order rotated each round: per graph, the median per step of the adapter's kernels
    (`_is_adapter`) and of all kernels, in us. Kernel times leave out the time between kernels and do not see the
    other graphs' weights, so they resolve the few us a rewrite changes where wall times under load do not."""
    m = read_manifest(art)
    entry, d = m.graphs[io_spec.GRAPH_BACKBONE], m.model["hidden_size"]
    s = np.random.default_rng(0).standard_normal((1, 1, d)).astype(np.float32)
    files = {io_spec.GRAPH_BACKBONE: entry.file, **{f"backbone:{n}": write_variant(art, n) for n in names}}
    runs, sessions = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, file in files.items():
            options = session_options(threads, prepack_weights(entry, m.quantization))
            options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / key.replace(":", "_"))
            sess = GraphSession.__new__(GraphSession)  # the runtime's session, opened with profiling on
            sess.session = ort.InferenceSession(str(art / file), options, providers=["CPUExecutionProvider"])
            contract = m.contract(io_spec.GRAPH_BACKBONE)
            sess.input_names = [t.name for t in contract.inputs]
            sess.main_output, sess.kv_pairs = contract.main_output, contract.kv_pairs
            sessions[key], runs[key] = sess, _step(sess, entry, d, past, s)
        run_rounds(runs, reps=reps, warmup=3)
        out = {}
        for key, sess in sessions.items():
            events = json.loads(Path(sess.session.end_profiling()).read_text())
            steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
            adapter, total = [0.0] * len(steps), [0.0] * len(steps)
            starts = [a for a, _ in steps]
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    i = bisect.bisect_right(starts, e["ts"]) - 1
                    total[i] += e["dur"]
                    adapter[i] += e["dur"] if _is_adapter(e["name"]) else 0.0
            keep = slice(3, None)  # the warm-up steps
            out[key] = {"adapter_us": statistics.median(adapter[keep]), "kernels_us": statistics.median(total[keep]),
                        "steps": len(steps) - 3}
    return out


def kernel_table(r: dict) -> str:
    base = r[io_spec.GRAPH_BACKBONE]
    rows = ["| backbone | adapter kernels us/step | vs exported | all kernels us/step | vs exported |",
            "|---|---:|---:|---:|---:|"]
    for key, v in r.items():
        rows.append(f"| {key} | {v['adapter_us']:.0f} | {v['adapter_us'] - base['adapter_us']:+.0f} | "
                    f"{v['kernels_us']:.0f} | {v['kernels_us'] - base['kernels_us']:+.0f} |")
    return "\n".join(rows)


def variant_table(r: dict) -> str:
    g = r["graph_ms"]
    rows = [f"backbone_plain {g[io_spec.GRAPH_BACKBONE_PLAIN]:.3f} ms, shadow {g[io_spec.GRAPH_SHADOW]:.3f} ms, "
            f"lm_head {g[io_spec.GRAPH_LM_HEAD]:.3f} ms ({r['reps']} rounds, past {r['past']})", "",
            "| backbone | ms | vs exported (median per-round difference) | adapter cost per step | max abs diff |",
            "|---|---:|---:|---:|---:|"]
    for key, v in r["variants"].items():
        rows.append(f"| {key} | {v['ms']:.3f} | {v['vs_exported_ms']:+.3f} ms | {v['adapter_ms']:.3f} ms = "
                    f"{100 * v['overhead']:+.1f}% | {v['max_abs_diff']:.1e} |")
    return "\n".join(rows)
