"""The detached shadow as a transformers.js model folder: config.json, onnx/model*.onnx, tokenizer files.

transformers.js (npm `@huggingface/transformers`, v3+) loads a causal LM from a folder laid out as on
the Hugging Face Hub:

  config.json              the shadow's own decoder (its depth, heads, head_dim, vocab) + which
                           precision to load (`transformers.js_config.dtype`)
  generation_config.json   copied from the artifact
  tokenizer.json, tokenizer_config.json (and the artifact's other tokenizer files)
  onnx/model.onnx          fp32; `model_quantized.onnx` (q8) for int8 and `model_q4.onnx` (q4) for int4

The graph is the artifact's single-graph detached shadow (`model.onnx`, export/interop.py) with its
weights inlined (one file to fetch, no external data) and its batch dimension named `batch_size`:
transformers.js sizes the first, empty KV cache from the graph's symbolic dims and knows only that name
(any other name becomes 0). The same cache convention turns the ONNX-Attention graphs' in-place KV
writes (TensorScatter) into Concat (`_concat_kv`). Every operator is checked against the set onnxruntime-web's WASM build runs
(WASM_OPS, checked in headless Chromium by tests/web/test_web_browser.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadow_edge.errors import ExportError
from shadow_edge.manifest import Manifest, member_path, verify_files

MODEL_DIR = "model"
# artifact quantization -> (transformers.js dtype, graph file suffix): transformers.js's own file names.
DTYPES = {"none": ("fp32", ""), "int8": ("q8", "_quantized"), "int4": ("q4", "_q4")}
MAX_GRAPH_BYTES = 2**31 - 1  # one protobuf; also far past what a page should download
BATCH_DIM = "batch_size"
# The operators our detached-shadow graphs use (every family, precision and attention kind), all run by
# onnxruntime-web 1.31's WASM build: tests/web/test_web_browser.py runs fp32, int8, int4 and the ONNX-Attention
# graph in headless Chromium. A graph with any other operator is refused rather than shipped untried.
WASM_OPS = {
    "": {"Add", "And", "Attention", "Cast", "Concat", "Expand", "Gather", "LessOrEqual", "MatMul", "Mul", "Range",
         "ReduceSum", "Reshape", "Shape", "Sigmoid", "SimplifiedLayerNormalization", "Slice", "Split", "Sub",
         "Transpose", "Unsqueeze", "Where"},
    "com.microsoft": {"GatherBlockQuantized", "GroupQueryAttention", "MatMulNBits", "RotaryEmbedding",
                      "SkipSimplifiedLayerNormalization"},
}


@dataclass(frozen=True)
class WebModel:
    """What `write_model_dir` wrote: the transformers.js dtype, the graph's file and size, the decoder dims."""

    dtype: str
    graph: str  # relative to the model folder
    graph_bytes: int
    config: dict


def web_config(m: Manifest, dtype: str) -> dict:
    """config.json for transformers.js: optimum's config of model.onnx (interop.hf_config) + the dtype to load."""
    from shadow_edge.export.interop import _decoder, hf_config
    from shadow_edge.export.single_graph import Chain

    chain = Chain.of_mode(m.modes["shadow_only"])
    config = hf_config(_decoder(m.model, m.graphs, chain), m.model, m.tokenizer)
    config["architectures"] = [f"{config['model_type'].title().replace('_', '')}ForCausalLM"]
    config["transformers.js_config"] = {"dtype": dtype}
    return config


def write_model_dir(art_dir: Path, m: Manifest, dest: Path, verify: bool = True) -> WebModel:
    """Write the transformers.js folder of `art_dir`'s detached shadow into `dest` (created)."""
    import onnx

    detached = (m.interop or {}).get("detached") or {}
    graph_file = detached.get("file")
    if not graph_file:
        why = "; ".join(detached.get("limits", {}).values()) or "the artifact predates single-graph interop files"
        raise ExportError(f"{art_dir}: has no single-graph detached shadow (manifest interop.detached: {why}); "
                          "re-export it with this shadow-edge")
    if not m.tokenizer.get("has_tokenizer"):
        raise ExportError(f"{art_dir}: has no tokenizer.json, and the page needs one to turn text into tokens; "
                          "re-export from a base directory that has the tokenizer files")
    if m.quantization not in DTYPES:
        raise ExportError(f"{art_dir}: quantization {m.quantization!r} has no transformers.js precision; "
                          f"re-export with --quantize one of {', '.join(DTYPES)}")
    dtype, suffix = DTYPES[m.quantization]
    graphs = [m.graphs[g] for g in m.modes["shadow_only"].values()]
    needed = [graph_file, *sorted({f for g in graphs for f in g.data_files}), *m.tokenizer.get("files", [])]
    if verify:
        verify_files(art_dir, m, needed)
    model = onnx.load(str(member_path(art_dir, graph_file)), load_external_data=False)
    _share_aliases(model)
    onnx.external_data_helper.load_external_data_for_model(model, str(art_dir))
    _concat_kv(model)
    _check_ops(art_dir / graph_file, model)
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "batch":
                dim.dim_param = BATCH_DIM
    blob = model.SerializeToString() if model.ByteSize() <= MAX_GRAPH_BYTES else None
    if blob is None:
        raise ExportError(f"{art_dir / graph_file}: the detached shadow with its weights is over 2 GB, more than "
                          "one ONNX file holds and far more than a web page should download; re-export with "
                          "--quantize int4")
    (dest / "onnx").mkdir(parents=True)
    graph = f"onnx/model{suffix}.onnx"
    (dest / graph).write_bytes(blob)
    config = web_config(m, dtype)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in m.tokenizer.get("files", []):
        shutil.copyfile(member_path(art_dir, name), dest / Path(name).name)
    return WebModel(dtype, graph, len(blob), config)


def _share_aliases(model) -> None:
    """Quantized graphs read the packed vocabulary matrix twice (the embedding's GatherBlockQuantized and the
    head's MatMulNBits want different shapes of the same bytes): two initializers over one range of the data
    file. Inlined naively, the page would download it twice; keep one and Reshape it for the other reader."""
    import onnx
    from onnx import numpy_helper

    first: dict[tuple, onnx.TensorProto] = {}
    aliases: list[tuple[onnx.TensorProto, onnx.TensorProto]] = []
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in t.external_data}
        key = (ext.get("location"), ext.get("offset", "0"), ext.get("length"), t.data_type)
        if key in first:
            aliases.append((t, first[key]))
        else:
            first[key] = t
    if not aliases:
        return
    nodes = []
    for alias, kept in aliases:
        shape = numpy_helper.from_array(np.array(alias.dims, np.int64), f"{alias.name}.shape")
        model.graph.initializer.append(shape)
        nodes.append(onnx.helper.make_node("Reshape", [kept.name, shape.name], [alias.name],
                                           name=f"/web/alias/{alias.name}"))
        model.graph.initializer.remove(alias)
    nodes.extend(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _concat_kv(model) -> None:
    """The ONNX-Attention graphs (head_dim % 8 != 0) write new keys/values into a preallocated buffer with
    TensorScatter; transformers.js feeds exactly sized pasts and expects present = concat(past, new), which a
    Concat on the same axis is (the Slice after it to the first total_seq positions then keeps everything)."""
    import onnx

    for node in model.graph.node:
        if node.op_type == "TensorScatter" and node.domain in ("", "ai.onnx"):
            axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -2)
            past, update = node.input[0], node.input[1]
            node.op_type = "Concat"
            del node.input[:]
            node.input.extend([past, update])
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("axis", axis))


def _check_ops(path: Path, model) -> None:
    missing = sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node
                      if n.op_type not in WASM_OPS.get(n.domain, set())})
    if missing:
        raise ExportError(f"{path}: uses operators onnxruntime-web's WASM build does not run ({', '.join(missing)}); "
                          "this shadow cannot run in a browser yet (report it with the artifact's manifest.json)")
