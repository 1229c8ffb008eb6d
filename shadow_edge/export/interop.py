"""Interop files: the artifact as onnxruntime-genai and optimum's ORTModelForCausalLM load it.

Written by every export (the cost is two small graph files and two small JSON files; no
weight byte is added), next to the split graphs the shadow-edge runtime uses:

  model.onnx            the detached shadow (shadow -> its head) as ONE decoder graph
  model_combined.onnx   the combined model (shadow -> backbone -> lm_head) as one graph, KV
                        layers renumbered: shadow layers 0..S-1, then backbone layers S..S+L-1.
                        Only where every layer has one KV shape (implicit shadows): both tools
                        allocate a single (kv_heads, head_dim) for all layers.
  step_<mode>.onnx      the shadow-edge runtime's own single-session decode step of each mode (the same
                        joined graph plus `next_token` = ArgMax of the logits, so a greedy step
                        need not fetch the logits); manifest `interop.step.<mode>` (runtime/decode_state.py)
  step_draft.onnx       with a reduced draft vocabulary (export --draft-vocab): speculative's greedy draft step,
                        the shadow and `draft_head` joined, `next_token` = the vocabulary id of the draft
                        logits' ArgMax (a Gather over the draft ids); manifest `interop.step.draft`
  genai_config.json     onnxruntime-genai: `og.Model(ART)` loads model.onnx
  config.json           optimum: `ORTModelForCausalLM.from_pretrained(ART)` loads model.onnx; only for
                        GroupQueryAttention graphs (optimum grows its cache by concatenation; the ONNX
                        Attention fallback for other head_dims writes into a preallocated buffer)

optimum-onnx 0.1.0 sizes its first (empty) cache as hidden_size // num_attention_heads and
ignores `head_dim` (Qwen3: 1024 // 16 = 64, not 128), so config.json states
`hidden_size = num_attention_heads * head_dim`; the graph never reads it, and the true width
is kept under `shadow_edge.hidden_size`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

from shadow_edge import io_spec
from shadow_edge.errors import ExportError
from shadow_edge.export.single_graph import Chain, join, kv_layers, kv_shapes
from shadow_edge.manifest import GraphEntry
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.generate import Pipeline, position_ids
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, ov

DETACHED_FILE = "model.onnx"
COMBINED_FILE = "model_combined.onnx"
STEP_FILE = "step_{mode}.onnx"  # the runtime's merged decode step of a mode
STEP_DRAFT = io_spec.STEP_DRAFT  # interop.step key (and step_draft.onnx) of speculative's merged draft step
NEXT_TOKEN = "next_token"  # = runtime.decode_state.NEXT_TOKEN
GENAI_CONFIG = "genai_config.json"
HF_CONFIG = "config.json"
TOOL_GENAI, TOOL_OPTIMUM = "onnxruntime-genai", "optimum"
TOOLS = {GENAI_CONFIG: "onnxruntime-genai: og.Model(ART)",
         HF_CONFIG: "optimum: ORTModelForCausalLM.from_pretrained(ART)"}
# Attention kinds whose graphs also run with an exactly sized past (present = concat(past, new)), as optimum feeds.
CONCAT_ATTENTION = {io_spec.ATTENTION_GQA}
# generation_config.json keys that onnxruntime-genai's `search` section reads under the same name.
SEARCH_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams",
               "num_return_sequences", "min_length", "max_length", "length_penalty", "no_repeat_ngram_size",
               "diversity_penalty", "early_stopping")
# onnxruntime-genai's `type` picks its decoder-only pipeline (the math is in the graph); types it does not know by
# this name get the nearest one it does.
GENAI_TYPES = {"olmo2": "olmo"}
# Model types optimum-onnx 0.1.0's ORTModelForCausalLM loads from config.json (tested: tests/interop/test_interop.py and
# the family checks of issue 25); gemma2, granite and olmo2 configs it refuses or looks up on the Hub.
OPTIMUM_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"}
GENAI_SLIDING_LIMIT = ("batches of prompts of different lengths: onnxruntime-genai pads on the right, which puts "
                       "padding inside this model's sliding windows (tokens then differ from shadow-edge's left-padded "
                       "batches); single prompts and prompts of one length match")
OPTIMUM_WORKAROUND = ("hidden_size is num_attention_heads * head_dim: optimum-onnx 0.1.0 sizes its first empty KV "
                      "cache as hidden_size // num_attention_heads and ignores head_dim; the graph does not read "
                      "hidden_size. The true width is shadow_edge.hidden_size.")


def write_interop(art_dir: Path, graphs: dict[str, GraphEntry], modes: dict[str, dict[str, str]], model: dict,
                  tokenizer: dict, validate: bool = True, draft_ids: np.ndarray | None = None) -> dict:
    """Write the interop files into `art_dir`; return the manifest's `interop` section. `draft_ids` [N]: the
    reduced draft vocabulary's token ids (graph `draft_head`'s columns), for `step_draft.onnx`."""
    detached = Chain.of_mode(modes[io_spec.MODE_SHADOW_ONLY])
    combined = Chain.of_mode(modes[io_spec.MODE_BASE_SHADOW])
    section = {"detached": _single(art_dir, graphs, detached, DETACHED_FILE, io_spec.MODE_SHADOW_ONLY),
               "combined": _single(art_dir, graphs, combined, COMBINED_FILE, io_spec.MODE_BASE_SHADOW),
               "configs": {GENAI_CONFIG: TOOLS[GENAI_CONFIG]}}
    shadow_type = model["shadow"]["model_type"]
    for key in ("detached", "combined"):  # one config.json serves both files: the shadow's model_type
        if TOOL_OPTIMUM in section[key]["tools"] and shadow_type not in OPTIMUM_TYPES:
            section[key]["tools"].remove(TOOL_OPTIMUM)
            section[key]["limits"][TOOL_OPTIMUM] = f"optimum-onnx 0.1.0 does not load model_type {shadow_type!r}"
    for key, parts in (("detached", ("shadow",)), ("combined", ("shadow", "base"))):
        if section[key]["file"] and any("sliding" in (model[p].get("layer_types") or ()) for p in parts):
            section[key]["limits"][TOOL_GENAI] = GENAI_SLIDING_LIMIT
    section["step"] = {}
    for key, chain in (("detached", detached), ("combined", combined)):
        if section[key]["file"]:
            mode = section[key]["mode"]
            section["step"][mode] = _step(art_dir, graphs, chain, mode)
    drafting = None
    if draft_ids is not None and io_spec.MODE_SHADOW_ONLY in section["step"]:
        drafting = Chain((modes[io_spec.MODE_SHADOW_ONLY][io_spec.ROLE_SHADOW], io_spec.GRAPH_DRAFT_HEAD))
        section["step"][STEP_DRAFT] = _step(art_dir, graphs, drafting, STEP_DRAFT, draft_ids)
    written = [(section[k], chain) for k, chain in (("detached", detached), ("combined", combined))
               if section[k]["file"]]
    written += [(section["step"][m], chain) for m, chain in ((io_spec.MODE_SHADOW_ONLY, detached),
                                                             (io_spec.MODE_BASE_SHADOW, combined),
                                                             (STEP_DRAFT, drafting))
                if m in section["step"]]
    if validate:  # the split graphs' outputs first (their sessions opened once, then freed), then each joined
        split: dict[str, GraphSession] = {}  # graph alone: at most one copy of the weights mapped at a time
        references = [split_reference(art_dir, graphs, chain, split) for _, chain in written]
        split.clear()
        for (entry, chain), reference in zip(written, references):
            graph = GraphEntry.from_dict(entry["graph"]) if "graph" in entry else None
            entry["validation"] = check_joined(art_dir, graphs, chain, entry["file"], reference=reference,
                                               entry=graph)
    decoder = _decoder(model, graphs, detached)
    _write_json(art_dir / GENAI_CONFIG, genai_config(decoder, model, tokenizer, _read_json(
        art_dir / "generation_config.json")))
    if TOOL_OPTIMUM in section["detached"]["tools"]:
        _write_json(art_dir / HF_CONFIG, hf_config(decoder, model, tokenizer))
        section["configs"][HF_CONFIG] = TOOLS[HF_CONFIG]
    return section


def _single(art_dir: Path, graphs: dict[str, GraphEntry], chain: Chain, file: str, mode: str) -> dict:
    """Join one mode's chain into `file` where the tools can run it; its manifest entry (tools, limits)."""
    entry = {"file": None, "mode": mode, "graphs": list(chain.graphs), "kv_layers": kv_layers(chain, graphs),
             "tools": [], "limits": {}}
    if len(kv_shapes(chain, graphs)) != 1:
        shown = ", ".join(f"{g} {graphs[g].kv_heads} kv heads x head_dim {graphs[g].head_dim}"
                          for g in chain.graphs if graphs[g].kv_layers)
        entry["limits"]["all"] = (f"not written: the KV shapes differ ({shown}; an explicit shadow), and "
                                  "onnxruntime-genai and optimum allocate one KV shape for every layer")
        return entry
    onnx.save_model(join(art_dir, graphs, chain, mode), str(art_dir / file))
    entry["file"], entry["tools"] = file, [TOOL_GENAI]
    kinds = sorted({graphs[g].attention for g in chain.graphs if graphs[g].kv_layers})
    if set(kinds) <= CONCAT_ATTENTION:
        entry["tools"].append(TOOL_OPTIMUM)
    else:
        entry["limits"][TOOL_OPTIMUM] = (f"attention {', '.join(kinds)} writes into a preallocated KV buffer; "
                                         "optimum feeds exactly sized pasts and concatenates, which only "
                                         "GroupQueryAttention graphs accept")
    return entry


def step_entry(graphs: dict[str, GraphEntry], chain: Chain, file: str) -> GraphEntry:
    """The I/O table of a mode's step graph: the joined graph's, plus `next_token` int64 [batch, seq]."""
    entry = joined_entry(graphs, chain, file)
    entry.outputs.insert(1, io_spec.TensorSpec(NEXT_TOKEN, "int64", ("batch", "seq")))
    return entry


def _step(art_dir: Path, graphs: dict[str, GraphEntry], chain: Chain, mode: str,
          draft_ids: np.ndarray | None = None) -> dict:
    """Write a mode's step graph (the joined chain + ArgMax over the vocabulary: `next_token`, the first index on
    ties like numpy's argmax); its manifest entry (file, graphs, I/O table). With `draft_ids` [N] (the draft step:
    a head over N token rows), `next_token` is the id of the ArgMax column: Gather(draft_ids, column)."""
    file = STEP_FILE.format(mode=mode)
    model = join(art_dir, graphs, chain, f"{mode}_step")
    g = model.graph
    column = NEXT_TOKEN if draft_ids is None else "/step/draft_column"
    g.node.append(onnx.helper.make_node("ArgMax", [io_spec.LOGITS], [column], name="/step/ArgMax", axis=-1,
                                        keepdims=0, select_last_index=0))
    if draft_ids is not None:  # [N] int64: column i of the draft logits is token draft_ids[i]
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(draft_ids, np.int64), "/step/draft_ids"))
        g.node.append(onnx.helper.make_node("Gather", ["/step/draft_ids", column], [NEXT_TOKEN],
                                            name="/step/DraftIds", axis=0))
    g.output.insert(1, onnx.helper.make_tensor_value_info(NEXT_TOKEN, onnx.TensorProto.INT64, ["batch", "seq"]))
    onnx.save_model(model, str(art_dir / file))
    return {"file": file, "mode": mode, "graphs": list(chain.graphs),
            "graph": step_entry(graphs, chain, file).to_dict()}


def _decoder(model: dict, graphs: dict[str, GraphEntry], chain: Chain) -> dict:
    """The detached decoder's dims: the shadow's config with the chain's KV layout."""
    cfg = model["shadow"]
    (kv_heads, head_dim), = kv_shapes(chain, graphs)
    return {**cfg, "num_layers": kv_layers(chain, graphs), "num_kv_heads": kv_heads, "head_dim": head_dim}


def genai_config(decoder: dict, model: dict, tokenizer: dict, generation: dict) -> dict:
    """onnxruntime-genai's genai_config.json for model.onnx (its default I/O names are ours)."""
    context = int(model["max_positions"])
    search = {k: generation[k] for k in SEARCH_KEYS if k in generation}
    search["max_length"] = min(int(search.get("max_length", context)), context)
    search["past_present_share_buffer"] = True  # = our in-place KV: past and present bound to one buffer
    special = {"bos_token_id": tokenizer.get("bos_token_id"),
               "eos_token_id": list(tokenizer.get("eos_token_ids") or []), "pad_token_id": tokenizer.get("pad_token_id")}
    return {"model": {
        "type": GENAI_TYPES.get(decoder["model_type"], decoder["model_type"]),
        "context_length": context,
        "vocab_size": int(model["vocab_size"]),
        **{k: v for k, v in special.items() if v not in (None, [])},  # genai rejects null
        "decoder": {
            "filename": DETACHED_FILE,
            "head_size": decoder["head_dim"],
            "hidden_size": decoder["hidden_size"],
            "num_attention_heads": decoder["num_heads"],
            "num_key_value_heads": decoder["num_kv_heads"],
            "num_hidden_layers": decoder["num_layers"],
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "inputs": {"input_ids": io_spec.INPUT_IDS, "attention_mask": io_spec.ATTENTION_MASK,
                       "position_ids": io_spec.POSITION_IDS, "past_key_names": io_spec.past_name("%d", "key"),
                       "past_value_names": io_spec.past_name("%d", "value")},
            "outputs": {"logits": io_spec.LOGITS, "present_key_names": io_spec.present_name("%d", "key"),
                        "present_value_names": io_spec.present_name("%d", "value")},
        }},
        "search": search}


def hf_config(decoder: dict, model: dict, tokenizer: dict) -> dict:
    """The config.json optimum's ORTModelForCausalLM reads for model.onnx (see OPTIMUM_WORKAROUND)."""
    eos = list(tokenizer.get("eos_token_ids") or [])
    return {
        "model_type": decoder["model_type"],
        "hidden_size": decoder["num_heads"] * decoder["head_dim"],
        "num_hidden_layers": decoder["num_layers"],
        "num_attention_heads": decoder["num_heads"],
        "num_key_value_heads": decoder["num_kv_heads"],
        "head_dim": decoder["head_dim"],
        "intermediate_size": decoder["intermediate_size"],
        "vocab_size": int(model["vocab_size"]),
        "max_position_embeddings": int(model["max_positions"]),
        "rms_norm_eps": decoder["rms_norm_eps"],
        "rope_theta": decoder["rope_theta"],
        "tie_word_embeddings": bool(decoder.get("tie_word_embeddings", False)),
        "bos_token_id": tokenizer.get("bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": tokenizer.get("pad_token_id"),
        "use_cache": True,
        "shadow_edge": {"graph": DETACHED_FILE, "hidden_size": decoder["hidden_size"], "note": OPTIMUM_WORKAROUND},
    }


def joined_entry(graphs: dict[str, GraphEntry], chain: Chain, file: str) -> GraphEntry:
    """The I/O table of a joined graph: step inputs + renumbered KV -> logits + present (io_spec's names)."""
    (kv_heads, head_dim), = kv_shapes(chain, graphs)
    layers = kv_layers(chain, graphs)
    past, present = io_spec.kv_specs(layers, kv_heads, head_dim)
    logits = graphs[chain.graphs[-1]].outputs[0]  # the head's logits [batch, n_pos, vocab]
    attention = next(graphs[g].attention for g in chain.graphs if graphs[g].kv_layers)
    return GraphEntry(file=file, inputs=io_spec.step_inputs() + past,
                      outputs=[io_spec.TensorSpec(logits.name, logits.dtype, ("batch", "seq", logits.shape[-1]))]
                      + present, data_files=sorted({f for g in chain.graphs for f in graphs[g].data_files}),
                      kv_layers=layers, kv_heads=kv_heads, head_dim=head_dim, attention=attention)


# The check's inputs: a left-padded batch of 2, a 5-token prefill, then one decode step.
_CHECK_IDS_SEED, _CHECK_STEPS = 0, ((0, 5), (5, 6))
_CHECK_MASK = np.array([[1] * 6, [0, 0] + [1] * 4], np.int64)  # [2, 6]: row 1 left-padded


def _check_steps(vocab: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask, position_ids) of each step of the check."""
    ids = np.random.default_rng(_CHECK_IDS_SEED).integers(0, vocab, (2, 6))  # [2, 6]
    pos = position_ids(_CHECK_MASK)
    return [(ids[:, lo:hi], _CHECK_MASK[:, :hi], pos[:, lo:hi]) for lo, hi in _CHECK_STEPS]


def split_reference(art_dir: Path, graphs: dict[str, GraphEntry], chain: Chain,
                    split: dict[str, GraphSession] | None = None) -> list[np.ndarray]:
    """The runtime's own pipeline over the split graphs (in-place KV) on the check's steps: logits per step
    [2, t, vocab]. `split`: the split graphs' sessions by name, reused and filled in."""
    split = {} if split is None else split
    for g in chain.graphs:
        if g not in split:  # prepack=False: weights stay in the (page-aligned, mapped) data files
            split[g] = GraphSession(g, graphs[g], art_dir, prepack=False)
    pipe = Pipeline(split[chain.graphs[-1]], *(split[g] for g in chain.graphs[:-1]))  # head, shadow[, backbone]
    state = DecodeState(pipe, 2, 6)  # the runtime's decode state: the check's steps through `advance`
    vocab = int(graphs[chain.graphs[-1]].outputs[0].shape[-1])
    return [state.advance(ids, _CHECK_MASK[:, lo:hi], last_only=False, positions=pos)
            for (lo, hi), (ids, _, pos) in zip(_CHECK_STEPS, _check_steps(vocab))]


def check_joined(art_dir: Path, graphs: dict[str, GraphEntry], chain: Chain, file: str, atol: float = 1e-4,
                 reference: list[np.ndarray] | None = None, entry: GraphEntry | None = None) -> dict:
    """The joined graph against the runtime's own pipeline over the split graphs (in-place KV, as both
    run; `split_reference`, computed here unless given, its sessions freed before the joined one opens):
    a left-padded batch of 2, a 5-token prefill, then one decode step. Raises ExportError on a miss."""
    if reference is None:
        reference = split_reference(art_dir, graphs, chain)
    entry = entry or joined_entry(graphs, chain, file)
    joined = GraphSession(file, entry, art_dir, prepack=False)
    cache = KVCache.empty(2, entry.kv_layers, entry.kv_heads, entry.head_dim, 6)
    worst = 0.0
    for (lo, hi), step, ref in zip(_CHECK_STEPS, _check_steps(int(entry.outputs[0].shape[-1])), reference):
        ours = joined.run_in_place({io_spec.INPUT_IDS: ov(step[0]), io_spec.ATTENTION_MASK: ov(step[1]),
                                    io_spec.POSITION_IDS: ov(step[2])}, cache.tensors).numpy()  # [2, t, vocab]
        cache.length += hi - lo
        real = _CHECK_MASK[:, lo:hi].astype(bool)
        err = float(np.abs(ours[real] - ref[real]).max(initial=0.0))
        if not err <= atol * max(1.0, float(np.abs(ref[real]).max(initial=0.0))):
            raise ExportError(f"{art_dir / file}: logits differ from the split graphs {list(chain.graphs)} by "
                              f"{err:.3e} (step {lo}..{hi}); exporter bug")
        worst = max(worst, err)
    return {"graphs": list(chain.graphs), "max_abs_err": worst, "passed": True}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
