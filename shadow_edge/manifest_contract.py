"""The manifest's structure, held to the graph contract: the one place that says what an artifact's graphs are.

Standard library only. `manifest_schema.check_manifest` checks the JSON types; this module then
reads the execution target (target.py: device, dtypes, attention kinds) and regenerates each graph's contract (io_spec.graph_contract) from the manifest's dims — model
hidden size, vocabulary or labels, the entry's KV layout and attention kind — and compares the
entry's I/O table with it, and checks each mode's role -> graph map against the graphs' roles.
A difference is one `ArtifactError` naming the field that disagrees (`graphs.backbone.kv_heads`,
`model.vocab_size`, `modes.base_shadow.shadow`) with what was expected.
"""

from __future__ import annotations

from shadow_edge.errors import ArtifactError
from shadow_edge.io_spec import (GRAPH_DRAFT_HEAD, GRAPH_ROLES, KV_ROLES, LOGITS, PAST, PRESENT, ROLE_BACKBONE,
                                 ROLE_HEAD, ROLE_SHADOW, ROLES, SHADOW_HIDDEN, GraphContract, is_kv)
from shadow_edge.target import ExecutionTarget

REDO = "re-export the artifact (or restore its original manifest.json)"


def check_contracts(manifest, path) -> None:
    """Raise ArtifactError unless every graph entry equals its regenerated contract and every mode's roles fit."""
    target = ExecutionTarget.from_dict(manifest.target, path)  # the device and dtypes the contracts use
    for name, entry in manifest.graphs.items():
        _check_graph(path, manifest, name, entry, manifest.contract(name))  # an unknown attention kind: here
        if entry.attention and entry.attention not in target.attention:
            _fail(path, f"graphs.{name}.attention", entry.attention,
                  f"one of the target's attention kinds ({', '.join(target.attention)})")
    for mode, roles in manifest.modes.items():
        _check_mode(path, manifest, mode, roles)


def _fail(path, field: str, found, expected: str):
    raise ArtifactError(f"{path}: field `{field}` is {found!r}; expected {expected}; {REDO}")


def _check_graph(path, manifest, name: str, entry, want: GraphContract) -> None:
    where = f"graphs.{name}"
    past = [t for t in entry.inputs if t.name.startswith(f"{PAST}.")]
    present = [t for t in entry.outputs if t.name.startswith(f"{PRESENT}.")]
    if len(past) != 2 * want.kv_layers or len(present) != 2 * want.kv_layers:
        _fail(path, f"{where}.kv_layers", entry.kv_layers, f"half the number of its {PAST} inputs ({len(past)}) "
                                                           f"and {PRESENT} outputs ({len(present)})")
    for kind, have, exp in (("input", entry.inputs, want.inputs), ("output", entry.outputs, want.outputs)):
        for got, spec in zip(have, exp):
            if got != spec:
                _explain(path, manifest, name, kind, got, spec)
        if len(have) != len(exp):
            raise ArtifactError(f"{path}: graph {name!r} has {len(have)} {kind}s in its I/O table where the graph "
                                f"contract has {len(exp)} ({', '.join(t.name for t in exp)}); {REDO}")


def _explain(path, manifest, name: str, kind: str, got, spec) -> None:
    """Name the manifest field behind the first difference of one tensor from its contract."""
    where = f"graphs.{name}"
    if got.name == spec.name and got.dtype == spec.dtype and len(got.shape) == len(spec.shape):
        axis = next(i for i, (a, b) in enumerate(zip(got.shape, spec.shape)) if a != b)
        table = got.shape[axis]
        if isinstance(table, int):
            if is_kv(got.name) and axis in (1, 3):
                label = "kv_heads" if axis == 1 else "head_dim"
                _fail(path, f"{where}.{label}", getattr(manifest.graphs[name], label),
                      f"{table}, axis {axis} of {got.name} in its I/O table")
            if got.name == LOGITS and axis == len(got.shape) - 1:
                field = "model.num_labels" if manifest.model.get("task") == "seq_cls" else "model.vocab_size"
                field = "draft_vocab.size" if name == GRAPH_DRAFT_HEAD else field
                _fail(path, field, spec.shape[axis], f"{table}, the logits width of graph {name!r}")
            if axis == len(got.shape) - 1:
                raise ArtifactError(f"{path}: graph {name!r} {kind} {got.name} has width {table} in its I/O table "
                                    f"where the graph contract has model.hidden_size ({spec.shape[axis]}); {REDO}")
    raise ArtifactError(f"{path}: graph {name!r}: {kind} {got.name} {got.dtype} {list(got.shape)} where the graph "
                        f"contract has {spec.name} {spec.dtype} {list(spec.shape)}; {REDO}")


def _check_mode(path, manifest, mode: str, roles: dict) -> None:
    where = f"modes.{mode}"
    for role, graph in roles.items():
        if role not in ROLES:
            _fail(path, f"{where}.{role}", graph, f"roles {', '.join(ROLES)} only")
        if graph not in manifest.graphs:
            raise ArtifactError(f"{path}: mode {mode!r} role {role!r} names graph {graph!r}, which is not in "
                                f"`graphs`; {REDO}")
        if GRAPH_ROLES[graph] != role:
            fits = [g for g in manifest.graphs if GRAPH_ROLES.get(g) == role]
            _fail(path, f"{where}.{role}", graph, f"a {role} graph ({', '.join(fits) or 'none in this artifact'}); "
                                                  f"{graph!r} is a {GRAPH_ROLES[graph]} graph")
    if ROLE_HEAD not in roles or not set(KV_ROLES) & set(roles):
        _fail(path, where, roles, "a `head` graph and a `shadow` and/or `backbone` graph")
    if ROLE_BACKBONE in roles:
        takes = any(t.name == SHADOW_HIDDEN for t in manifest.graphs[roles[ROLE_BACKBONE]].inputs)
        if takes != (ROLE_SHADOW in roles):
            _fail(path, f"{where}.{ROLE_BACKBONE}", roles[ROLE_BACKBONE],
                  f"a backbone graph {'with' if ROLE_SHADOW in roles else 'without'} the input {SHADOW_HIDDEN} "
                  f"(the mode {'has' if ROLE_SHADOW in roles else 'has no'} shadow graph)")
