"""Which graphs of a base artifact run one session per adapter pack, with the pack's weights as constants. No torch.

Why: onnxruntime prepacks only *constant* initializers (MatMul's packed B matrix,
MatMulNBits' int4 blocks). A base artifact's slots are overridable initializers (graph inputs
with defaults) so that one session serves every pack, but a weight fed per run, or even an
overridable one left at its default, is used as given: the int4 kernels dequantize the
whole weight on every call (small preset, int4: 19 ms against 0.34 ms per shadow step), float32
shadow steps run ~20% slower (benchmarks/profile/adapter_pack_profile.py). So a base artifact also holds, for each graph listed in
`adapter_slots.constant_graphs` (the shadow graph, export/pack_tensors.py), a twin file whose
slots are plain initializers (same nodes, same external data file):

- the base's own adapter runs the twin as stored (the base's shadow is then the full artifact's);
- each pack gets a session of the twin whose slot weights come from the pack through
  `SessionOptions.add_initializer` (onnxruntime's shared initializers: the session uses the
  pack's buffers without a copy and prepacks them); a pack's session adds its prepacked copy;
- the twin's other weights (an implicit shadow's embedding rows) are memory-mapped from the
  one data file, so every session reads the same pages (measured in benchmarks/suites/adapter_packs.py).

The backbone's slots (injection and update: small float32 matrices) stay fed per run to the
one backbone session: a backbone session per pack would hold its own prepacked copy of
every backbone weight (Python cannot share onnxruntime's prepacked-weights container).

Base artifacts exported before the twin existed have no `constant_graphs`: their packs are fed
to the shared sessions as before (same outputs; slow with quantized bases): a warning says to
export the base artifact and its packs again.
"""

from __future__ import annotations

from dataclasses import replace

from shadow_edge.errors import ArtifactError
from shadow_edge.manifest import MANIFEST_NAME, GraphEntry, Manifest

STALE_BASE = ("{art}: this base artifact predates per-pack sessions (no adapter_slots.constant_graphs): adapter "
              "packs are fed to its shared sessions, whose weights onnxruntime cannot prepack (correct, but slow for "
              "quantized bases); export the base artifact and its packs again for the fast path")


def constant_twins(manifest: Manifest) -> dict[str, GraphEntry]:
    """graph -> its twin's entry (the graph's I/O table, the twin's file), from `adapter_slots.constant_graphs`;
    ArtifactError where the manifest's entry does not name a slotted graph and a listed file."""
    raw = manifest.adapter_slots.get("constant_graphs") or {}
    slots = manifest.adapter_slots.get("params") or {}
    field = f"{MANIFEST_NAME}: field `adapter_slots.constant_graphs`"
    if not isinstance(raw, dict):
        raise ArtifactError(f"{field} is {raw!r}; expected an object graph -> file; re-export the artifact")
    twins = {}
    for graph, file in raw.items():
        if graph not in manifest.graphs or graph not in slots:
            raise ArtifactError(f"{field} names graph {graph!r}, which has no adapter slots (graphs with slots: "
                                f"{', '.join(slots) or 'none'}); re-export the artifact")
        if not isinstance(file, str) or file not in manifest.files:
            raise ArtifactError(f"{field}.{graph} is {file!r}, which is not a file of the artifact (files: "
                                f"manifest.json `files`); re-export the artifact")
        twins[graph] = replace(manifest.graphs[graph], file=file)
    return twins
