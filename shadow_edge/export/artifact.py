"""`export_artifact`: checkpoint -> validated ONNX artifact directory, written atomically.

Steps (each reported through `progress`): read and validate the checkpoint, build the
graphs, write weights once (shared external data), copy tokenizer files, validate every
graph against PyTorch, write the manifest with sha256 of every file, then rename the
temporary directory onto `--out` (`out_dir`: checks, lock, atomic swap). Any failure,
SIGINT or SIGTERM removes the temporary directory.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import onnx
import torch

from shadow_edge import __version__, io_spec
from shadow_edge.core.checkpoint import load_spec
from shadow_edge.errors import ExportError
from shadow_edge.core.gguf_reader import is_gguf
from shadow_edge.core.model import ShadowModel
from shadow_edge.core.spec import ShadowModelSpec
from shadow_edge.export.attention import choose_attention
from shadow_edge.export.draft_vocab import DraftVocab, check_draft_head, draft_vocab, head_rows
from shadow_edge.export.gguf_tokenizer import read_gguf_tokenizer_files
from shadow_edge.export.graphs import Tensors, build_backbone, build_head, build_shadow
from shadow_edge.export.interop import DETACHED_FILE, write_interop
from shadow_edge.export.onnx_builder import GraphBuilder, WeightStore
from shadow_edge.export.pack_tensors import adapter_slots, write_constant_twins
from shadow_edge.export.options import ExportOptions
from shadow_edge.export.out_dir import (PARTIAL_MARKER, check_out, clean_stale_partials, signals_clean_up,
                                        write_partial_then_publish, writer_lock)
from shadow_edge.export.ort_format import write_ort_format
from shadow_edge.export.progress import WeightsMeter, estimate_weight_bytes, gb, stderr_progress
from shadow_edge.export.quantize import quantize_spec
from shadow_edge.export.tokenizer_files import TokenizerFiles, read_tokenizer_files
from shadow_edge.export.validate_arithmetic import validate_int8
from shadow_edge.export.validation_plan import VALIDATORS, plan_validation
from shadow_edge.manifest import GraphEntry, Manifest, file_table, write_manifest
from shadow_edge.manifest_schema import METHOD_FULL

GRAPH_ORDER = [io_spec.GRAPH_SHADOW, io_spec.GRAPH_LM_HEAD, io_spec.GRAPH_SHADOW_LM_HEAD,  # owners of shared
               io_spec.GRAPH_CLASSIFIER, io_spec.GRAPH_SHADOW_CLASSIFIER,  # weights: the detached shadow first
               io_spec.GRAPH_DRAFT_HEAD,
               io_spec.GRAPH_BACKBONE, io_spec.GRAPH_BACKBONE_PLAIN]


def _heads(spec: ShadowModelSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, str]]:
    """Head graph -> (weight, bias, default weight key), base_shadow's first: vocabulary heads, or a
    classifier's label heads. The shadow's head is its own graph only when it differs."""
    c = spec.classifier
    if c is None:
        heads = {io_spec.GRAPH_LM_HEAD: (spec.lm_head, None, "lm_head.weight"),
                 io_spec.GRAPH_SHADOW_LM_HEAD: (spec.shadow_lm_head, None, "shadow_lm_head.weight")}
    else:
        heads = {io_spec.GRAPH_CLASSIFIER: (c.weight, c.bias, "classifier.weight"),
                 io_spec.GRAPH_SHADOW_CLASSIFIER: (c.shadow_weight, c.shadow_bias, "shadow_classifier.weight")}
    (base_w, base_b, _), (shadow_w, shadow_b, _) = heads.values()
    if shadow_w is base_w and shadow_b is base_b and _base_head_transform(spec) is None:
        heads.pop(list(heads)[1])
    return heads


def _base_head_transform(spec: ShadowModelSpec):
    """The base config when its vocabulary head transforms the logits (Granite's divisor, Gemma's soft-cap): the
    shadow's head (raw, as both trainers compute it) is then its own graph over the same stored weights."""
    cfg = spec.base.config
    if spec.classifier is None and (cfg.logits_divisor != 1 or cfg.final_softcap):
        return cfg
    return None


def export_artifact(base: str | Path, adapter: str | Path, out: str | Path, shadow_model: str | Path | None = None,
                    options: ExportOptions = ExportOptions(),
                    progress: Callable[[str], None] = stderr_progress, adapter_name: str | None = None) -> Manifest:
    """Export base + adapter (+ explicit shadow model) to `out`; returns the manifest written.

    `adapter_name` picks one adapter of a PEFT directory that holds several. `out` rules (no data
    loss, one writer, atomic replacement, cleanup on signals): `out_dir`.
    """
    out = Path(out)
    inputs = {"base": Path(base), "adapter": Path(adapter)}
    if shadow_model is not None:
        inputs["shadow model"] = Path(shadow_model)
    check_out(out, options.force, inputs)  # before any work
    started = time.perf_counter()
    with signals_clean_up(), writer_lock(out):
        for stale in clean_stale_partials(out):
            progress(f"removed the partial export {stale} of a process that is gone")
        check_out(out, options.force, inputs)  # again: another export may have finished meanwhile
        progress(f"reading checkpoint: base {base}, adapter {adapter}")
        spec = load_spec(base, adapter, shadow_model, adapter_name)
        read_tokenizer = read_gguf_tokenizer_files if is_gguf(base) else read_tokenizer_files
        tokenizer = read_tokenizer(Path(base), spec.vocab_size)
        needs = estimate_weight_bytes(quantized_spec(spec, options) if options.quantize != "none" else spec)
        manifest = write_partial_then_publish(out, options.force, inputs,
                                              lambda tmp: _write(spec, tokenizer, tmp, options, progress, needs),
                                              needs=needs)
    progress(f"done in {time.perf_counter() - started:.1f}s: {out}")
    return manifest


def quantized_spec(spec: ShadowModelSpec, options: ExportOptions) -> ShadowModelSpec:
    """The spec with its weights `Dequantized` as the options say (per group: base layers, shadow layers,
    vocabulary matrices)."""
    return quantize_spec(spec, options.quantize, options.block_size, options.quant_scheme, options.vocab_quantize,
                         options.shadow_quant_scheme)


def build_graphs(spec: ShadowModelSpec, options: ExportOptions, progress: Callable[[str], None],
                 draft: DraftVocab | None = None,
                 ) -> tuple[ShadowModelSpec, bool, WeightStore, dict[str, io_spec.GraphContract], list[GraphBuilder]]:
    """Every graph of the artifact, in memory: (spec as quantized, whether quantized, weights, contracts, builders).
    `draft`: the reduced draft vocabulary, whose `draft_head` reads those rows of the shadow's head."""
    quantized = options.quantize != "none"
    if quantized:  # each weight is quantized as the store writes it
        spec = quantized_spec(spec, options)  # spec: Dequantized weights
    store, names = WeightStore(), Tensors(options.target.accuracy_level)
    contracts = graph_contracts(spec, options, None if draft is None else len(draft.ids))
    builders: list[GraphBuilder] = []
    for name, c in contracts.items():
        progress(f"building graph: {name}" + (f" ({c.attention})" if c.kv_layers else ""))
        if name == io_spec.GRAPH_SHADOW:
            builders.append(build_shadow(spec, store, names, c))
        elif c.role == io_spec.ROLE_BACKBONE:
            builders.append(build_backbone(spec, store, names, c, adapter=name == io_spec.GRAPH_BACKBONE))
        elif name == io_spec.GRAPH_DRAFT_HEAD:
            builders.append(build_head(c, head_rows(spec.shadow_lm_head, draft.ids), "draft_head.weight", spec,
                                       store, names))
        else:
            weight, bias, key = _heads(spec)[name]
            transform = _base_head_transform(spec) if name == io_spec.GRAPH_LM_HEAD else None
            builders.append(build_head(c, weight, key, spec, store, names, bias, transform))
    return spec, quantized, store, contracts, builders


def _write(spec: ShadowModelSpec, tokenizer: TokenizerFiles, tmp: Path, options: ExportOptions,
           progress: Callable[[str], None], weight_bytes: int) -> Manifest:
    tokenizer.copy_to(tmp)
    draft = None
    if options.draft_vocab is not None:
        if spec.classifier is not None:
            raise ExportError("--draft-vocab is for causal language models (speculative decoding); this is a "
                              "sequence classifier: leave the flag out")
        progress(f"ranking the draft vocabulary ({options.draft_vocab_from or 'by token id'})")
        draft = draft_vocab(options.draft_vocab, spec.vocab_size, tmp / "tokenizer.json", options.draft_vocab_from,
                            tuple(tokenizer.section.get("eos_token_ids") or ()))
        draft.write(tmp)
    spec, quantized, store, contracts, builders = build_graphs(spec, options, progress, draft)
    making = f"read+quantize ({options.quantize})" if quantized else "read+convert"
    progress(f"writing weights (~{gb(weight_bytes)}; each tensor {making} as it is written)")
    slots = adapter_slots(builders, store) if options.as_base else {}
    meter = WeightsMeter(progress, weight_bytes, making)
    store.write(tmp, GRAPH_ORDER, meter)
    meter.finish()
    graphs: dict[str, GraphEntry] = {}
    for b in builders:
        onnx.save_model(b.to_model(slots.get("params", {}).get(b.name)), str(tmp / f"{b.name}.onnx"))
        graphs[b.name] = GraphEntry.from_contract(contracts[b.name], f"{b.name}.onnx", store.data_files(b.name))
    if slots:  # packs run these graphs with their weights constant (prepacked): runtime/pack_sessions.py
        slots["constant_graphs"] = write_constant_twins(builders, slots["params"], tmp)
    head_graphs = list(_heads(spec))
    modes = io_spec.mode_map(head_graphs[-1], options.plain_backbone, head_graphs[0])
    validation: dict = {"passed": None, "skipped": True}
    if options.validate:
        plan = plan_validation(options.validation, spec, store.nbytes())
        progress(f"validation method: {plan.method} ({plan.reason()})")
        reference = ShadowModel(spec.loaded() if plan.method == METHOD_FULL else spec)  # streamed: a layer at a time
        # the files the runtime opens: a base artifact's own adapter runs the shadow graph's constant twin
        runs = {**graphs, **{g: replace(graphs[g], file=f) for g, f in slots.get("constant_graphs", {}).items()}}
        if options.quantize != "none" and options.quant_compute == "int8":  # exact graphs, then int8's distance
            validation = validate_int8(tmp, reference, runs, modes, options.quantize, plan.method, options.atol,
                                       spec.vocab_size, progress)
        else:
            validation = VALIDATORS[plan.method](tmp, reference, runs, modes, options.quantize, atol=options.atol,
                                                 progress=progress)
        if draft is not None:
            validation["outputs"]["draft_head.logits"] = check_draft_head(tmp, runs, modes, draft.ids,
                                                                          options.validation_atol)
        validation["memory"] = plan.to_dict()
        worst = max(r["max_abs_err"] for r in validation["outputs"].values())
        progress(f"validation passed (worst max |error| {worst:.2e})")
    progress("writing interop files (single-graph decoders, genai_config.json, config.json)")
    interop = write_interop(tmp, graphs, modes, _model_info(spec), tokenizer.section, validate=options.validate,
                            draft_ids=None if draft is None else draft.ids)
    if options.ort_format:
        progress("converting the detached shadow to ORT format (onnxruntime's converter)")
        interop["ort"] = write_ort_format(tmp, DETACHED_FILE)
    manifest = Manifest(
        tool_version=__version__,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=spec.source,
        model={**_model_info(spec), "quantization": options.quantization_record()},
        tokenizer=tokenizer.section,
        dtype=options.target.dtype,
        quantization=options.quantize,
        graphs=graphs,
        modes=modes,
        validation=validation,
        files={n: e for n, e in file_table(tmp).items() if n != PARTIAL_MARKER},
        interop=interop,
        adapter_slots=slots,
        target=options.target.to_dict(),
        draft_vocab={} if draft is None else draft.section,
    )
    write_manifest(tmp, manifest)
    return manifest


def graph_contracts(spec: ShadowModelSpec, options: ExportOptions, draft_size: int | None = None,
                    ) -> dict[str, io_spec.GraphContract]:
    """The contract of every graph to build, in build order; each decoder's attention chosen for its head_dim
    (`draft_size`: the draft head's vocabulary, when there is one)."""
    d, vocab = spec.hidden_size, spec.vocab_size

    def decoder(name: str, cfg) -> io_spec.GraphContract:
        return io_spec.graph_contract(name, d, vocab, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim,
                                      choose_attention(cfg, options.attention, options.target.attention),
                                      kv_dtype=options.target.kv_dtype)

    out = {io_spec.GRAPH_SHADOW: decoder(io_spec.GRAPH_SHADOW, spec.shadow.config),
           io_spec.GRAPH_BACKBONE: decoder(io_spec.GRAPH_BACKBONE, spec.base.config)}
    if options.plain_backbone:
        out[io_spec.GRAPH_BACKBONE_PLAIN] = decoder(io_spec.GRAPH_BACKBONE_PLAIN, spec.base.config)
    labels = 0 if spec.classifier is None else spec.classifier.num_labels
    for head in _heads(spec):  # a trained shadow head gets its own graph; else shadow_only reads the base's
        out[head] = io_spec.graph_contract(head, d, vocab, num_labels=labels)
    if draft_size is not None:
        out[io_spec.GRAPH_DRAFT_HEAD] = io_spec.graph_contract(io_spec.GRAPH_DRAFT_HEAD, d, vocab,
                                                               draft_vocab=draft_size)
    return out


def _model_info(spec: ShadowModelSpec) -> dict:
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "max_positions": min(spec.base.config.max_positions, spec.shadow.config.max_positions),
        "shadow_kind": "implicit" if spec.shadow.embed is None else "explicit",
        "adapter_variant": spec.variant.name,
        "adapted_layers": [spec.adapted_range.start, spec.adapted_range.stop],
        "alpha": spec.alpha,
        "injection_rank": int(spec.injection_down.shape[-1]),
        "gate_size": int(spec.gate_in.shape[1]),
        "base": spec.base.config.to_dict(),
        "shadow": spec.shadow.config.to_dict(),
        **({"task": "causal_lm"} if spec.classifier is None else
           {"task": "seq_cls", "num_labels": spec.classifier.num_labels, "id2label": list(spec.classifier.id2label)}),
    }
