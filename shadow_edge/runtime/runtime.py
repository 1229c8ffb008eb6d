"""`ShadowRuntime`: load an artifact, then forward / generate / stream in any mode. No torch.

The runtime is a thin front: it loads sessions and pipelines, checks options and prompts,
and hands generation to the strategy registered under the mode's name
(`runtime/strategies/`: plain shadow_only / base_shadow, cascade, ...).
"""

from __future__ import annotations

import threading
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shadow_edge import artifact_lock
from shadow_edge.errors import ArtifactError, ContextLengthError, InputError
from shadow_edge.io_spec import KV_ROLES, ROLE_HEAD
from shadow_edge.manifest import GraphEntry, Manifest, read_manifest, verify_files
from shadow_edge.runtime.adapters import AdapterSet, LoadedPack
from shadow_edge.runtime.chat import render_chat
from shadow_edge.runtime import inputs
from shadow_edge.runtime.classify import ClassificationResult, check_task, classify
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.generate import Pipeline, position_ids
from shadow_edge.runtime.options import GRAPH_MODES, GenerationOptions
from shadow_edge.runtime.pack_sessions import STALE_BASE, constant_twins
from shadow_edge.runtime.prompts import PromptBatch, build_batch, check_ids
from shadow_edge.runtime.result import GenerationResult, GenerationStream
from shadow_edge.runtime.session import GraphSession, prepack_weights
from shadow_edge.runtime.strategies import mode_names, strategy
from shadow_edge.runtime.strategies.base import Pieces, Rows
from shadow_edge.runtime.strategies.cascade import silent
from shadow_edge.runtime.text import NoTokenizer, TextCodec


DECODE_STEPS = ("auto", "split")


class ShadowRuntime:
    """An exported artifact loaded in onnxruntime (one session per graph).

    Thread safety: one runtime may serve many threads at once. forward / generate / stream
    calls are independent (each has its own KV caches, sampler and result); sessions are
    created once, under a lock, and onnxruntime runs them concurrently. A stream's result is
    `stream.result` of the object that call returned (never another call's).
    """

    def __init__(self, art_dir: Path, manifest: Manifest, codec: TextCodec | None, providers, threads,
                 spin_threads: bool = True):
        self.art_dir, self.manifest = art_dir, manifest
        self.dir_identity = artifact_lock.directory_identity(art_dir)  # which directory was loaded (see graph())
        self.has_tokenizer = codec is not None
        self.codec = codec if codec is not None else NoTokenizer()
        self.providers, self.threads, self.spin_threads = providers, threads, spin_threads
        self._graphs: dict[str, GraphSession] = {}
        self.decode_step = "auto"  # see load()
        self._pipes: dict[tuple[str, str | None], Pipeline] = {}  # (mode, adapter) -> its graph chain
        self.adapters = AdapterSet(manifest, art_dir)  # packs sharing this base's sessions (runtime/adapters.py)
        self.twins = constant_twins(manifest)  # graph -> entry of its file with constant slots (pack_sessions.py)
        self._lock = threading.RLock()  # guards the lazy creation of sessions and pipelines
        self._local = threading.local()  # last_result, per thread
        tok = manifest.tokenizer
        self.vocab_size = int(manifest.model["vocab_size"])
        self.max_positions = int(manifest.model["max_positions"])
        self.eos_ids: tuple[int, ...] = tuple(tok.get("eos_token_ids") or ())
        pad = tok.get("pad_token_id")
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, art_dir, providers=None, threads: int | None = None, verify: bool = True,
             modes: tuple[str, ...] | None = None, adapters: dict | None = None,
             decode_step: str = "auto", spin_threads: bool = True) -> "ShadowRuntime":
        """Read manifest.json, check every file's sha256 (verify=False skips it), open the mode graphs.

        Graphs used by `modes` (generation modes; default: shadow_only and base_shadow) are loaded
        now; others (e.g. `backbone_plain`) on first use. threads: onnxruntime intra-op threads
        (default: all cores). Loading holds a shared lock on the directory, so `export --force`
        never replaces it mid-load.
        adapters: {name: PACK directory} of adapter packs exported against this base artifact (`load_adapter`).
        decode_step: "auto" (a mode's merged single-session step graph where the artifact has one, else its
        split graphs) or "split" (always the split graphs: one session per graph per step).
        spin_threads: True (default) runs every session on the process-wide onnxruntime pool, whose threads spin
        between work items (fastest for one stream on an otherwise idle machine); False gives each session its own
        pool of sleeping threads (slower alone, but no spinning thread takes the CPU from the process's other
        threads or other processes; `serve` uses it).
        """
        art_dir = inputs.artifact_dir(art_dir)
        if decode_step not in DECODE_STEPS:
            raise InputError(f"decode_step is {decode_step!r}; it must be one of {', '.join(DECODE_STEPS)}")
        if adapters is not None and not isinstance(adapters, dict):
            raise InputError(f"adapters is {adapters!r}; it must be a dict {{name: adapter pack directory}}")
        with artifact_lock.shared(art_dir):
            rt = cls._load_unlocked(art_dir, providers, threads, verify, modes,
                                    inputs.as_bool(spin_threads, "spin_threads"))
        rt.decode_step = decode_step
        for name, pack_dir in (adapters or {}).items():
            rt.load_adapter(name, pack_dir, verify)
        return rt

    def load_adapter(self, name: str, pack_dir, verify: bool = True) -> LoadedPack:
        """Load an adapter pack as `name`; requests pick it with `adapter=name`. The pack gets its own session of
        the shadow graph (its weights constant, prepacked); the backbone session and the heads are the base's
        (runtime/pack_sessions.py)."""
        pack = self.adapters.load(name, pack_dir, verify, lambda feeds: {
            g: self._open(g, entry, prepack_weights(entry, self.manifest.quantization), initializers=feeds[g])
            for g, entry in self.twins.items()})
        if not self.twins:
            warnings.warn(STALE_BASE.format(art=self.art_dir), stacklevel=2)
        return pack

    def unload_adapter(self, name: str) -> None:
        """Forget pack `name`; refused (InputError) while a generation uses it."""
        with self._lock:
            self.adapters.unload(name)
            for key in [k for k in self._pipes if k[1] == name]:
                del self._pipes[key]

    @classmethod
    def _load_unlocked(cls, art_dir: Path, providers, threads, verify, modes, spin_threads) -> "ShadowRuntime":
        if not art_dir.is_dir():
            raise ArtifactError(f"{art_dir}: no such artifact directory; create one with `shadow-edge export`")
        threads = inputs.thread_count(threads)
        providers = inputs.providers(providers, ort.get_available_providers())
        verify = inputs.as_bool(verify, "verify")
        if modes is not None and (isinstance(modes, str) or not isinstance(modes, (list, tuple))):
            raise InputError(f"modes is {modes!r}; it must be a list of mode names such as ['shadow_only']")
        manifest = read_manifest(art_dir)  # types and paths (manifest_schema); target, roles and dims
        # held to the graph contract (manifest_contract)
        if verify:
            verify_files(art_dir, manifest)
        providers = manifest.execution_target.check_providers(providers, art_dir)  # the target's device
        rt = cls(art_dir, manifest, TextCodec.load(art_dir, manifest.files), providers, threads, spin_threads)
        for mode in GRAPH_MODES if modes is None else modes:
            if modes is None and mode not in manifest.modes:
                continue
            rt._check_mode(mode)  # an unknown or unavailable mode in `modes` raises InputError
            for graph_mode in strategy(mode).uses:
                rt.pipeline(graph_mode)
        return rt

    def graph(self, name: str, prepack: bool | None = None) -> GraphSession:
        """The session of one graph (created on first use). `prepack`: weight prepacking other than the
        graph's default (`prepack_weights`) opens a second session of it (speculative's multi-position head)."""
        with self._lock:
            if name not in self.manifest.graphs:
                raise InputError(f"graph {name!r} is not in this artifact; it has "
                                 f"{', '.join(self.manifest.graphs)}")
            entry = self.twins.get(name, self.manifest.graphs[name])  # the base's own adapter: constant slots
            default = prepack_weights(entry, self.manifest.quantization)
            prepack = default if prepack is None else prepack
            key = name if prepack == default else f"{name}:{'prepacked' if prepack else 'unpacked'}"
            if key not in self._graphs:
                self._graphs[key] = self._open(name, entry, prepack)
            return self._graphs[key]

    def _open(self, name: str, entry, prepack: bool, initializers: dict | None = None) -> GraphSession:
        """A new session of graph `name` from `entry`'s file (`initializers`: see GraphSession)."""
        with artifact_lock.shared(self.art_dir):  # files of the directory this runtime loaded, or none
            if artifact_lock.directory_identity(self.art_dir) != self.dir_identity:
                raise ArtifactError(f"{self.art_dir}: was replaced (export --force) after this runtime loaded it; "
                                    f"load it again to use graph {name!r}")
            return GraphSession(name, entry, self.art_dir, self.providers, self.threads, prepack,
                                contract=self.manifest.contract(name), initializers=initializers,
                                spin=self.spin_threads)

    def pipeline(self, mode: str, adapter: str | None = None) -> Pipeline:
        """The graph chain of a manifest mode (shadow_only, base_shadow, ...), built on first use; with
        `adapter`, that pack's own shadow session and the base's other sessions, fed the pack's other weights."""
        self._check_graph_mode(mode)
        with self._lock:
            if (mode, adapter) not in self._pipes:
                pack = None if adapter is None else self.adapters.get(adapter)
                own = {} if pack is None else pack.sessions  # the pack's shadow session; the rest is shared
                roles = self.manifest.modes[mode]  # role -> graph, checked at load (manifest_contract)
                stacks = (own.get(roles[r]) or self.graph(roles[r]) if r in roles else None
                          for r in KV_ROLES)  # shadow, backbone
                self._pipes[(mode, adapter)] = Pipeline(own.get(roles[ROLE_HEAD]) or self.graph(roles[ROLE_HEAD]),
                                                        *stacks, params={} if pack is None else pack.fed)
            return self._pipes[(mode, adapter)]

    def step_graph(self, mode: str, stacks_of: str | None = None, width: int | None = None) -> GraphSession | None:
        """The merged single-session step graph of a mode (shadow + backbone + head + ArgMax: `step_combined.onnx`),
        or None where the artifact has none (older exports, explicit shadows whose KV shapes differ) or this
        runtime steps the split graphs (`decode_step="split"`). `mode` may also be `interop.step`'s other key
        (`draft`: speculative's draft step), whose KV layout is that of mode `stacks_of`'s graphs and whose logits
        must have `width` columns where given."""
        if self.decode_step == "split":
            return None
        try:
            entry = (self.manifest.interop.get("step") or {}).get(mode)
            graph = None if entry is None else GraphEntry.from_dict(entry["graph"])
            if graph is not None and not (isinstance(graph.file, str) and isinstance(graph.kv_layers, int)):
                raise TypeError("file or kv_layers has the wrong type")
        except Exception as e:  # a hand-edited manifest: one clear error, not a traceback
            raise ArtifactError(f"{self.art_dir / 'manifest.json'}: interop.step.{mode} (the merged decode step "
                                f"graph) is malformed ({type(e).__name__}: {e}); re-export the artifact, or load it "
                                "with decode_step='split'") from None
        if graph is None:
            return None
        stacks = self.pipeline(stacks_of or mode).stacks
        layers = sum(g.entry.kv_layers for g in stacks)
        shapes = {(g.entry.kv_heads, g.entry.head_dim) for g in stacks}
        if graph.kv_layers != layers or shapes != {(graph.kv_heads, graph.head_dim)}:
            raise ArtifactError(f"{self.art_dir / 'manifest.json'}: interop.step.{mode} has {graph.kv_layers} KV "
                                f"layers of {graph.kv_heads} heads x {graph.head_dim}; the mode's graphs have "
                                f"{layers} of {sorted(shapes)}; re-export the artifact, or load it with "
                                "decode_step='split'")
        logits = graph.outputs[0].shape[-1] if graph.outputs else None
        if width is not None and logits != width:
            raise ArtifactError(f"{self.art_dir / 'manifest.json'}: interop.step.{mode} has logits of width "
                                f"{logits}; expected {width} (its head's columns); re-export the artifact, or load "
                                "it with decode_step='split'")
        key = f"step:{mode}"
        with self._lock:
            if key not in self._graphs:
                with artifact_lock.shared(self.art_dir):
                    self._graphs[key] = GraphSession(key, graph, self.art_dir, self.providers, self.threads,
                                                     prepack=prepack_weights(graph, self.manifest.quantization),
                                                     spin=self.spin_threads)
            return self._graphs[key]

    def decode_state(self, mode: str, batch: int, capacity: int, adapter: str | None = None) -> DecodeState:
        """A fresh decode state of one generation in a graph mode (runtime/decode_state.py): the mode's split
        graphs, and its merged step graph where there is one (the artifact's own adapter only)."""
        merged = self.step_graph(mode) if adapter is None else None
        return DecodeState(self.pipeline(mode, adapter), batch, capacity, merged)

    def using(self, adapter: str | None):
        """Marks pack `adapter` busy for one call (no-op without one): `unload_adapter` waits for no one, it
        refuses while a call holds it."""
        return nullcontext() if adapter is None else self.adapters.use(adapter)

    @property
    def last_result(self) -> GenerationResult | None:
        """The result of the last stream that finished in the calling thread (prefer `stream.result`)."""
        return getattr(self._local, "last_result", None)

    @property
    def modes(self) -> tuple[str, ...]:
        """Modes this artifact runs: its graph modes (manifest order), then the strategies its graphs allow
        (none for a sequence classifier: it does not generate)."""
        graph_modes = tuple(self.manifest.modes)
        if self.manifest.model.get("task") == "seq_cls":
            return graph_modes
        return graph_modes + tuple(m for m in mode_names() if m not in graph_modes
                                   and strategy(m).available(graph_modes))

    def _check_mode(self, mode: str, opts: GenerationOptions | None = None) -> None:
        if isinstance(mode, str) and mode not in self.modes and mode in mode_names() and opts is not None \
                and self.manifest.model.get("task") != "seq_cls" \
                and strategy(mode).available(self.manifest.modes, opts):
            return  # available with these options (a cascade escalating over the network needs only the shadow)
        if not isinstance(mode, str) or mode not in self.modes:
            needs = f" ({mode} needs {strategy(mode).needs(opts)})" if mode in mode_names() else ""
            raise InputError(f"mode {mode!r} is not available{needs}; valid modes for this artifact: "
                             f"{', '.join(self.modes)}")

    def _check_graph_mode(self, mode: str) -> None:
        if not isinstance(mode, str) or mode not in self.manifest.modes:
            raise InputError(f"mode {mode!r} is not a graph mode of this artifact; it has "
                             f"{', '.join(self.manifest.modes)}")

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, mode: str = "base_shadow", adapter: str | None = None,
                ) -> np.ndarray:
        """Logits [b, t, vocab] float32 of a full pass (empty past) over `input_ids` [t] or [b, t] (with the
        adapter pack loaded as `adapter`, if given)."""
        self._check_graph_mode(mode)
        ids = inputs.token_array(input_ids)  # [b, t]
        check_ids(ids.tolist(), self.vocab_size)
        mask = np.ones_like(ids, dtype=np.int64) if attention_mask is None else \
            inputs.attention_mask(attention_mask, ids.shape)  # [b, t]
        if ids.shape[1] > self.max_positions:
            raise InputError(f"input_ids has {ids.shape[1]} tokens; the model allows {self.max_positions} "
                             "(model.max_positions)")
        ids = ids.astype(np.int64)
        with self.using(adapter):
            state = DecodeState(self.pipeline(mode, adapter), ids.shape[0], ids.shape[1])  # empty past
            logits = state.advance(ids, mask, last_only=False, positions=position_ids(mask))
        return logits

    def classify(self, texts_or_ids, mode: str = "base_shadow", batch_size: int = 16,
                 adapter: str | None = None) -> ClassificationResult:
        """Label ids, probabilities and label names of one input or a batch (classifier artifacts only), with
        the classifier adapter pack loaded as `adapter` if given; see runtime/classify.py."""
        return classify(self, texts_or_ids, mode, batch_size, adapter)

    # ---- generate / stream ---------------------------------------------------------------------
    def options(self, mode: str = "base_shadow", max_new_tokens: int = 32, do_sample: bool = False,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                stop=None, eos=None, chat: bool = False, adapter: str | None = None, control=None,
                **strategy_options) -> GenerationOptions:
        """Checked options; `strategy_options`: the mode's own options by public name (cascade_threshold,
        draft_tokens, ...: each strategy's registered Options)."""
        check_task(self.manifest, "causal_lm")
        opts = GenerationOptions(mode, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, eos, chat,
                                 adapter, strategy_options, control)
        self._check_mode(opts.mode, opts)
        if opts.adapter is not None:
            self.adapters.check(opts.adapter)
        if opts.stop and not self.has_tokenizer:
            raise InputError(NoTokenizer.MESSAGE.format(what="stop strings"))
        return opts

    def encode(self, prompt, chat: bool = False, max_new_tokens: int = 0) -> PromptBatch:
        """Tokenize (chat template if asked), check and left-pad one prompt or a batch."""
        batch = build_batch(prompt, chat, self.vocab_size, self.pad_id, self._chat_text if chat else str,
                            lambda text: self.codec.encode(text, add_special_tokens=not chat))
        longest = max(batch.lengths)
        if longest + max_new_tokens > self.max_positions:
            raise ContextLengthError(f"prompt has {longest} tokens + max_new_tokens {max_new_tokens} = "
                                     f"{longest + max_new_tokens} > model.max_positions {self.max_positions}; "
                                     "shorten the prompt or lower max_new_tokens", longest, self.max_positions)
        return batch

    def chat_text(self, messages, add_generation_prompt: bool = True, **extra) -> str:
        """The chat template applied to `messages` (a string is one user message)."""
        return self._chat_text(messages, add_generation_prompt, **extra)

    def _chat_text(self, row, add_generation_prompt: bool = True, **extra) -> str:
        messages = [{"role": "user", "content": row}] if isinstance(row, str) else row
        c = self.codec
        if not self.has_tokenizer:
            raise InputError(NoTokenizer.MESSAGE.format(what="chat"))
        specials = {"bos_token": c.bos_token, "eos_token": c.eos_token, "pad_token": c.pad_token}
        for k, v in c.config.items():
            if k.endswith("_token") and k not in specials:
                specials[k] = v if isinstance(v, str) else (v.get("content") if isinstance(v, dict) else None)
        return render_chat(c.chat_template, messages, add_generation_prompt, specials, **extra)

    def generate(self, prompt_or_ids, mode: str = "base_shadow", max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop=None, eos=None, chat: bool = False, adapter: str | None = None,
                 **strategy_options) -> GenerationResult:
        """Generate new tokens for one prompt (flat result) or a list of prompts (one left-padded batch);
        `adapter`: the name of a loaded adapter pack (default: the artifact's own adapter);
        `strategy_options`: the mode's own options (e.g. cascade_threshold=0.4, draft_tokens=4)."""
        opts = self.options(mode, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, eos, chat,
                            adapter, **strategy_options)
        return self.generate_with(prompt_or_ids, opts)

    def generate_with(self, prompt_or_ids, opts: GenerationOptions) -> GenerationResult:
        """`generate` with options made by `options()` (or `GenerationOptions.of`; checked here again)."""
        self._check_mode(opts.mode, opts)
        batch = self.encode(prompt_or_ids, opts.chat, opts.max_new_tokens)
        strategy(opts.mode).check(self, opts, max(batch.lengths))
        return _result(silent(self._run(batch, opts, False)), batch, opts)

    def stream(self, prompt_or_ids, mode: str = "base_shadow", max_new_tokens: int = 32, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop=None, eos=None, chat: bool = False, adapter: str | None = None,
               **strategy_options) -> GenerationStream:
        """Iterate the returned stream for text pieces as they are produced (one prompt); they join to
        `generate(...).text`. After the loop, `stream.result` holds this call's `GenerationResult`.

        cascade: the shadow's answer is held until its confidence is known; an escalated
        answer streams from the second stage.
        """
        opts = self.options(mode, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, eos, chat,
                            adapter, **strategy_options)
        batch = self.encode(prompt_or_ids, opts.chat, opts.max_new_tokens)
        if not batch.single:
            raise InputError("stream() takes one prompt; use generate() for a batch")
        if not self.has_tokenizer:
            raise InputError(NoTokenizer.MESSAGE.format(what="streaming text"))
        strategy(opts.mode).check(self, opts, max(batch.lengths))
        return GenerationStream(self._run(batch, opts, True),
                                lambda rows: self._finished(_result(rows, batch, opts)))  # checks ran eagerly

    def pieces(self, prompt_ids: list[int], opts: GenerationOptions) -> Pieces:
        """The piece generator of one prompt's generation (a server steps it): yields (row, piece) and a TICK
        after each step, returns its `Rows` (see strategies/base.py). Checks run before the first step."""
        self._check_mode(opts.mode, opts)
        batch = self.encode(list(prompt_ids), False, opts.max_new_tokens)
        strategy(opts.mode).check(self, opts, max(batch.lengths))
        return self._run(batch, opts, True)

    def _finished(self, result: GenerationResult) -> GenerationResult:
        self._local.last_result = result
        return result

    def _run(self, batch: PromptBatch, opts: GenerationOptions, incremental: bool) -> Pieces:
        with self.using(opts.adapter):  # the pack stays loaded until the generation ends
            return (yield from strategy(opts.mode).run(self, batch.input_ids, batch.attention_mask, opts, incremental))


def _result(rows: Rows, batch: PromptBatch, opts: GenerationOptions) -> GenerationResult:
    one = (lambda x: x[0]) if batch.single else (lambda x: list(x))
    return GenerationResult(mode=opts.mode, token_ids=one(rows.ids), text=one(rows.text),
                            finish_reason=one(rows.finish), prompt_tokens=one(batch.lengths), timings=rows.timings,
                            stats=rows.stats)
