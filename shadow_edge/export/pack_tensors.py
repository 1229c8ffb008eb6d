"""The adapter slots of a base artifact: which weights of its graphs an adapter pack replaces.

`adapter_slots(builders, store)` -> {"params": graph -> weight key -> [dtype, shape] (the
adapter's weights of each KV-cached graph, see adapter_pack.is_adapter_weight, and the whole
of each label head: a classifier's heads are trained with the adapter and are small), "heads":
vocabulary head graph -> sha256 of its weights}. A base artifact records it; a pack's weights
must fill exactly these slots and its vocabulary heads must digest the same (packs with trained
vocabulary heads are refused: those are vocabulary-sized, and every pack shares the base's).

`write_constant_twins` writes, for each graph of CONSTANT_GRAPHS, a twin graph file whose slots are
plain (constant) initializers: same nodes, same external data file; the runtime opens it once per
pack with the pack's weights (runtime/pack_sessions.py), so onnxruntime prepacks them. The base
artifact's manifest lists them under `adapter_slots.constant_graphs` (graph -> twin file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from shadow_edge.adapter_pack import is_adapter_weight
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.io_spec import GRAPH_CLASSIFIER, GRAPH_SHADOW, GRAPH_SHADOW_CLASSIFIER, ROLE_HEAD

LABEL_HEADS = (GRAPH_CLASSIFIER, GRAPH_SHADOW_CLASSIFIER)  # [labels, d] (+ bias): slots, not shared
# Graphs whose slots a pack gives as constant initializers of a session of its own: the shadow, whose slots are
# its big weights (the backbone's slots are small float32 matrices, fed to its one shared session).
CONSTANT_GRAPHS = (GRAPH_SHADOW,)


def adapter_slots(builders: list[GraphBuilder], store: WeightStore) -> dict:
    """The slots of `builders`' graphs; makes the weights it reads from the store (one at a time)."""
    params: dict[str, dict[str, list]] = {}
    heads: dict[str, str] = {}
    for b in builders:
        if b.name in LABEL_HEADS:
            params[b.name] = {k: [str(a.dtype), list(a.shape)] for k in b.weights for a in [store.array(k)]}
            continue
        if b.contract.role == ROLE_HEAD:
            h = hashlib.sha256()
            for key in b.weights:
                h.update(memoryview(store.array(key)).cast("B"))
            heads[b.name] = h.hexdigest()
            continue
        own = {k: [str(a.dtype), list(a.shape)] for k in b.weights if is_adapter_weight(k) for a in [store.array(k)]}
        if own:
            params[b.name] = own
    return {"params": params, "heads": heads}


def write_constant_twins(builders: list[GraphBuilder], params: dict, out_dir: Path) -> dict[str, str]:
    """Write `<graph>_constant.onnx` (slots as plain initializers) for each CONSTANT_GRAPHS graph with slots in
    `params`; returns graph -> twin file (the base manifest's `adapter_slots.constant_graphs`)."""
    twins = {}
    for b in builders:
        if b.name in CONSTANT_GRAPHS and params.get(b.name):
            twins[b.name] = f"{b.name}_constant.onnx"
            onnx.save_model(b.to_model(), str(out_dir / twins[b.name]))
    return twins
