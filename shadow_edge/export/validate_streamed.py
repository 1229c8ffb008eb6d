"""Streamed validation: the graphs checked block by block against the reference math, one layer at a time.

For models that do not fit in memory twice (the PyTorch reference beside the onnxruntime
sessions). The reference reads each decoder layer's weights only when it computes that layer
(`spec.<stack>.layers[i]`: a lazily loaded spec reads them from the checkpoint then) and keeps
no layer after it. Two checks, on one scenario (batch 2, left padding, prefill then decode steps):

1. End to end, as the runtime runs (its sessions, `DecodeState`, in-place KV): each mode's
   logits on the real positions and each stack's cache, against one full-sequence forward of the
   reference (which visits every layer once). The sessions are freed before the next check.
2. Block by block on real activations: each decoder graph runs the whole sequence once with its
   per-layer activations tapped (export/graph_taps.py); every block of the reference (injection,
   decoder layer, update) runs on the graph's own input to that block, and its output, the shadow
   state it passes on and its keys/values are compared. A wrong block is named
   (`backbone layers.7`), not only detected, and errors do not accumulate across layers. The
   embedding rows, the final norm (+ projection) and the head graphs are blocks too.

The allowed error is `atol * max(1, max|reference|)` per reported name, as in full validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from shadow_edge import io_spec
from shadow_edge.core.model import LayerInputs, ShadowModel, StepInputs, _AdapterHook, decoder_layer, embed, norm
from shadow_edge.core.spec import DecoderWeights
from shadow_edge.export.graph_taps import TapSession
from shadow_edge.export.validate import (SCENARIOS, Reference, Scenario, Worst, checked_report,
                                         compare, compare_cache, make_report, raise_misses, run_step)
from shadow_edge.manifest import GraphEntry
from shadow_edge.manifest_schema import METHOD_STREAMED
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.generate import Pipeline
from shadow_edge.runtime.session import GraphSession, ov, prepack_weights

STREAM_SCENARIO = SCENARIOS[-1]  # batch 2 (left padding), prefill, decode steps into a cache that must grow


def validate_streamed(art_dir: Path, model: ShadowModel, graphs: dict[str, GraphEntry],
                      modes: dict[str, dict[str, str]], quantization: str = "none", atol: float = 1e-4,
                      threads: int = 2, progress: Callable[[str], None] = lambda s: None,
                      scenario: Scenario = STREAM_SCENARIO) -> dict:
    """Validate every mode of `modes` end to end and every graph block by block; raise ExportError on a miss."""
    ids, mask = scenario.inputs(model.spec.vocab_size, torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = _end_to_end(art_dir, model, graphs, modes, quantization, threads, scenario, ids, mask, progress)
        blocks = _blocks(art_dir, model, graphs, modes, threads, ids, mask, progress)
    # the blocks first: a wrong block is named there (the end-to-end error only says that something is wrong)
    block_report = {graph: make_report(worst, atol) for graph, (worst, _) in blocks.items()}
    raise_misses({b: r for rep in block_report.values() for b, r in rep.items()},
                 [n for _, nonfinite in blocks.values() for n in nonfinite], " (blocks)")
    return {"method": METHOD_STREAMED, "atol": atol, "path": "runtime", "scenarios": [scenario.to_dict()],
            "outputs": checked_report(outputs[0], outputs[1], atol), "blocks": block_report, "passed": True}


def _end_to_end(art_dir: Path, model: ShadowModel, graphs: dict[str, GraphEntry], modes: dict[str, dict[str, str]],
                quantization: str, threads: int, sc: Scenario, ids: torch.Tensor, mask: torch.Tensor,
                progress: Callable[[str], None]) -> tuple[dict[str, Worst], list[str]]:
    """Check 1: each mode through the runtime's path, step by step, against one full-sequence reference pass."""
    sessions = {name: GraphSession(name, entry, art_dir, threads=threads,
                                   prepack=prepack_weights(entry, quantization)) for name, entry in graphs.items()
                if any(name in roles.values() for roles in modes.values())}
    full = StepInputs.full(ids, mask)
    longest, total = max(sc.prompt_lengths), ids.shape[1]
    worst: dict[str, Worst] = {}
    nonfinite: list[str] = []
    for mode, roles in modes.items():
        progress(f"validating {mode} end to end: batch {ids.shape[0]}, prompt {longest}, {sc.decode_steps} decode "
                 "steps (streamed reference, one layer at a time)")
        pipe = Pipeline(sessions[roles[io_spec.ROLE_HEAD]], *(sessions[roles[r]] if r in roles else None
                                                             for r in io_spec.KV_ROLES))
        state = DecodeState(pipe, ids.shape[0], longest + sc.spare)  # the decode state users run
        logits, start = [], 0
        for end in [longest] + list(range(longest + 1, total + 1)):
            step = StepInputs(full.input_ids[:, start:end], full.attention_mask[:, :end],
                              full.position_ids[:, start:end])
            logits.append(run_step(state, step, start, end))  # [b, t, V]
            start = end
        caches = state.caches
        ref = Reference(model, mode, roles)
        ref_logits = ref.step(full).numpy()  # [b, total, V]: every layer visited once
        compare(f"{mode}.logits", np.concatenate(logits, axis=1), ref_logits, mask.bool().numpy(), worst, nonfinite)
        for role, cache in zip([r for r in io_spec.KV_ROLES if r in roles], caches):
            compare_cache(f"{mode}.{roles[role]}.present", cache, ref.kv[role], mask.bool().numpy(), worst, nonfinite)
        del ref, ref_logits, logits, caches
    sessions.clear()  # the runtime's sessions go before the tapped ones open
    return dict(sorted(worst.items())), nonfinite


def _blocks(art_dir: Path, model: ShadowModel, graphs: dict[str, GraphEntry], modes: dict[str, dict[str, str]],
            threads: int, ids: torch.Tensor, mask: torch.Tensor,
            progress: Callable[[str], None]) -> dict[str, tuple[dict[str, Worst], list[str]]]:
    """Check 2: every block of every graph on the graphs' own activations; graph -> (block -> worst, non-finite)."""
    spec, step = model.spec, StepInputs.full(ids, mask)
    real = mask.bool().numpy()  # [b, T]
    feed = {io_spec.INPUT_IDS: ids.numpy(), io_spec.ATTENTION_MASK: mask.numpy(),
            io_spec.POSITION_IDS: step.position_ids.numpy()}
    hidden: dict[str, np.ndarray] = {}  # decoder graph -> its main output [b, T, d], input of the next graph
    report: dict[str, tuple[dict[str, Worst], list[str]]] = {}
    for mode, roles in modes.items():
        upstream = None
        for role in (r for r in io_spec.KV_ROLES if r in roles):
            name = roles[role]
            if name not in hidden:
                adapter = role == io_spec.ROLE_BACKBONE and upstream is not None
                progress(f"validating {name} block by block ({graphs[name].kv_layers} layers, one at a time)")
                extra = {io_spec.SHADOW_HIDDEN: hidden[upstream]} if adapter else {}
                hidden[name], report[name] = _decoder_blocks(art_dir, spec, name, graphs[name], role, adapter,
                                                             {**feed, **extra}, step, real, threads)
            upstream = name
        head = roles[io_spec.ROLE_HEAD]
        if head not in report:
            report[head] = _head_block(art_dir, model, mode, head, graphs[head], hidden[upstream], real, threads)
    return report


def _decoder_blocks(art_dir: Path, spec, name: str, entry: GraphEntry, role: str, adapter: bool,
                    feed: dict[str, np.ndarray], step: StepInputs, real: np.ndarray,
                    threads: int | None) -> tuple[np.ndarray, tuple[dict[str, Worst], list[str]]]:
    """One decoder graph: tapped prefill, then embed, layers.{i} (with injection/update) and norm vs reference."""
    shadow = role == io_spec.ROLE_SHADOW
    w: DecoderWeights = spec.shadow if shadow else spec.base
    adapted = spec.adapted_range if adapter else range(0)
    tap = TapSession(art_dir, name, entry, len(adapted), threads)
    main, acts, presents = tap.prefill(feed)  # [b, T, d], tap -> [b, T, d], [b, kv, T, hd] per key/value
    taps = tap.taps
    del tap  # the session (and its weights) goes before the reference layers load
    worst: dict[str, Worst] = {}
    nonfinite: list[str] = []
    t = torch.from_numpy
    rows = embed(w.config, step.input_ids, spec.shadow_embed if shadow else w.embed)  # [b, T, d]: the rows used
    compare(f"{name} embed", acts[taps.embed], rows.numpy(), real, worst, nonfinite)
    inputs = LayerInputs(w.config, step, step.input_ids.shape[1])
    hook = _AdapterHook(spec, None) if adapter else None
    kv_real = step.attention_mask.bool().numpy()
    for i in range(w.config.num_layers):
        block = f"{name} layers.{i}"
        h = t(acts[taps.embed] if i == 0 else acts[taps.layers[i - 1]])  # the graph's input to block i
        if i in adapted:
            hook.state = t(acts[taps.states[i - adapted.start]])
            h = hook.before(i, h)
        h, (k, v) = decoder_layer(w.config, w.layers[i], h, inputs, i, None)  # reads layer i only
        compare(block, acts[taps.layers[i]], h.numpy(), real, worst, nonfinite)
        for ours, ref in zip(presents[2 * i: 2 * i + 2], (k, v)):  # [b, kv, T, hd] -> [b, T, kv, hd]
            compare(block, ours.transpose(0, 2, 1, 3), ref.numpy().transpose(0, 2, 1, 3), kv_real, worst, nonfinite)
        j = i - adapted.start
        if i in adapted and j + 1 in taps.states:  # the update after the last adapted block feeds nothing
            hook.after(i, h)
            compare(block, acts[taps.states[j + 1]], hook.state.numpy(), real, worst, nonfinite)
    h = norm(w.config, t(acts[taps.layers[-1]]), w.norm)
    if shadow and spec.projection is not None:
        h = F.linear(h, spec.projection)
    compare(f"{name} norm", main, h.numpy(), real, worst, nonfinite)
    return main, (worst, nonfinite)


def _head_block(art_dir: Path, model: ShadowModel, mode: str, name: str, entry: GraphEntry, hidden: np.ndarray,
                real: np.ndarray, threads: int | None) -> tuple[dict[str, Worst], list[str]]:
    """A head graph on the graphs' hidden states [b, T, d] against the mode's head."""
    session = GraphSession(name, entry, art_dir, threads=threads, prepack=False)
    (logits,) = [o.numpy() for o in session.run({session.input_names[0]: ov(hidden)})[:1]]  # [b, T, V]
    del session
    ref = model.logits(torch.from_numpy(hidden), mode).numpy()  # the vocabulary read in row blocks
    worst: dict[str, Worst] = {}
    nonfinite: list[str] = []
    compare(f"{name} head", logits, ref, real, worst, nonfinite)
    return worst, nonfinite
