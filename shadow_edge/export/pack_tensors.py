"""The adapter slots of a base artifact: which weights of its graphs an adapter pack replaces.

`adapter_slots(builders, store)` -> {"params": graph -> weight key -> [dtype, shape] (the
adapter's weights of each KV-cached graph, see adapter_pack.is_adapter_weight, and the whole
of each label head: a classifier's heads are trained with the adapter and are small), "heads":
vocabulary head graph -> sha256 of its weights}. A base artifact records it; a pack's weights
must fill exactly these slots and its vocabulary heads must digest the same (packs with trained
vocabulary heads are refused: those are vocabulary-sized, and every pack shares the base's).
"""

from __future__ import annotations

import hashlib

import numpy as np

from shadow_edge.adapter_pack import is_adapter_weight
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.io_spec import GRAPH_CLASSIFIER, GRAPH_SHADOW_CLASSIFIER, ROLE_HEAD

LABEL_HEADS = (GRAPH_CLASSIFIER, GRAPH_SHADOW_CLASSIFIER)  # [labels, d] (+ bias): slots, not shared


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
