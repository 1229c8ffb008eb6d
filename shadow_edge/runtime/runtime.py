"""`ShadowRuntime`: load an artifact, then forward / generate / stream in any mode. No torch.

Modes: `shadow_only` (the detached shadow and its head), `base_shadow` (shadow and backbone
advanced together, then `lm_head`), and `cascade`: generate with shadow_only, score the
answer by its confidence (geometric mean of the shadow's probabilities of the tokens it
chose, under the plain softmax of its logits: exp(mean log p)), and re-answer rows whose
confidence is below `cascade_threshold` with base_shadow.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.manifest import Manifest, read_manifest, verify_files
from shadow_edge.runtime.chat import render_chat
from shadow_edge.runtime import inputs
from shadow_edge.runtime.generate import LoopState, Pipeline, decode_n, position_ids
from shadow_edge.runtime.options import CASCADE, GRAPH_MODES, GenerationOptions
from shadow_edge.runtime.prompts import PromptBatch, build_batch, check_ids
from shadow_edge.runtime.result import GenerationResult, GenerationStream, Timings
from shadow_edge.runtime.sampling import Sampler
from shadow_edge.runtime.session import GraphSession, prepack_weights
from shadow_edge.runtime.text import NoTokenizer, TextCodec, TextStream


class _Rows:
    """Per-row outcome of one generation pass."""

    def __init__(self, b: int):
        self.ids: list[list[int]] = [[] for _ in range(b)]
        self.logprobs: list[list[float]] = [[] for _ in range(b)]
        self.finish = ["length"] * b
        self.text = [""] * b
        self.timings: Timings | None = None
        self.answered_by: list[str] = []  # cascade only
        self.conf: list[float] = []  # cascade only
        self.stages: dict[str, Timings] = {}  # cascade only

    def confidence(self, r: int) -> float:
        lp = self.logprobs[r]
        return float(np.exp(np.mean(lp))) if lp else 0.0


class ShadowRuntime:
    """An exported artifact loaded in onnxruntime (one session per graph).

    Thread safety: one runtime may serve many threads at once. forward / generate / stream
    calls are independent (each has its own KV caches, sampler and result); sessions are
    created once, under a lock, and onnxruntime runs them concurrently. A stream's result is
    `stream.result` of the object that call returned (never another call's).
    """

    def __init__(self, art_dir: Path, manifest: Manifest, codec: TextCodec | None, providers, threads):
        self.art_dir, self.manifest = art_dir, manifest
        self.has_tokenizer = codec is not None
        self.codec = codec if codec is not None else NoTokenizer()
        self.providers, self.threads = providers, threads
        self._graphs: dict[str, GraphSession] = {}
        self._pipes: dict[str, Pipeline] = {}
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
             modes: tuple[str, ...] | None = None) -> "ShadowRuntime":
        """Read manifest.json, check every file's sha256 (verify=False skips it), open the mode graphs.

        Graphs used by `modes` (default: shadow_only and base_shadow) are loaded now; others (e.g.
        `backbone_plain`) on first use. threads: onnxruntime intra-op threads (default: all cores).
        """
        art_dir = inputs.artifact_dir(art_dir)
        if not art_dir.is_dir():
            raise ArtifactError(f"{art_dir}: no such artifact directory; create one with `shadow-edge export`")
        if threads is not None:
            threads = inputs.as_int(threads, "threads", 1, " (or None for all cores)")
        providers = inputs.providers(providers, ort.get_available_providers())
        verify = inputs.as_bool(verify, "verify")
        if modes is not None and (isinstance(modes, str) or not isinstance(modes, (list, tuple))):
            raise InputError(f"modes is {modes!r}; it must be a list of mode names such as ['shadow_only']")
        manifest = read_manifest(art_dir)  # types, paths, roles and dims checked (manifest_schema)
        if verify:
            verify_files(art_dir, manifest)
        rt = cls(art_dir, manifest, TextCodec.load(art_dir, manifest.files), providers, threads)
        for mode in GRAPH_MODES if modes is None else modes:
            if modes is not None or mode in manifest.modes:
                rt.pipeline(mode)  # an unknown mode in `modes` raises InputError
        return rt

    def graph(self, name: str) -> GraphSession:
        """The session of one graph (created on first use)."""
        with self._lock:
            if name not in self._graphs:
                if name not in self.manifest.graphs:
                    raise InputError(f"graph {name!r} is not in this artifact; it has "
                                     f"{', '.join(self.manifest.graphs)}")
                entry = self.manifest.graphs[name]
                self._graphs[name] = GraphSession(name, entry, self.art_dir, self.providers, self.threads,
                                                  prepack_weights(entry, self.manifest.quantization))
            return self._graphs[name]

    def pipeline(self, mode: str) -> Pipeline:
        self._check_mode(mode, allow_cascade=False)
        with self._lock:
            if mode not in self._pipes:
                roles = self.manifest.modes[mode]
                shadow, backbone = (self.graph(roles[r]) if r in roles else None for r in ("shadow", "backbone"))
                self._pipes[mode] = Pipeline(self.graph(roles["head"]), shadow, backbone)
            return self._pipes[mode]

    @property
    def last_result(self) -> GenerationResult | None:
        """The result of the last stream that finished in the calling thread (prefer `stream.result`)."""
        return getattr(self._local, "last_result", None)

    @property
    def modes(self) -> tuple[str, ...]:
        """Modes this artifact runs: its graph modes (manifest order) and cascade when both halves exist."""
        graph_modes = tuple(self.manifest.modes)
        return graph_modes + ((CASCADE,) if set(GRAPH_MODES) <= set(graph_modes) else ())

    def _check_mode(self, mode: str, allow_cascade: bool = True) -> None:
        valid = self.modes if allow_cascade else tuple(m for m in self.modes if m != CASCADE)
        if not isinstance(mode, str) or mode not in valid:
            raise InputError(f"mode {mode!r} is not available; valid modes for this artifact: {', '.join(valid)}")

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, mode: str = "base_shadow") -> np.ndarray:
        """Logits [b, t, vocab] float32 of a full pass (empty past) over `input_ids` [t] or [b, t]."""
        self._check_mode(mode, allow_cascade=False)
        ids = inputs.token_array(input_ids)  # [b, t]
        check_ids(ids.tolist(), self.vocab_size)
        mask = np.ones_like(ids, dtype=np.int64) if attention_mask is None else \
            inputs.attention_mask(attention_mask, ids.shape)  # [b, t]
        if ids.shape[1] > self.max_positions:
            raise InputError(f"input_ids has {ids.shape[1]} tokens; the model allows {self.max_positions} "
                             "(model.max_positions)")
        pipe = self.pipeline(mode)
        ids = ids.astype(np.int64)
        logits = pipe.step(ids, mask, position_ids(mask), pipe.empty_caches(ids.shape[0], ids.shape[1]),
                           last_only=False)
        return logits

    # ---- generate / stream ---------------------------------------------------------------------
    def options(self, mode: str = "base_shadow", max_new_tokens: int = 32, do_sample: bool = False,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                stop=None, eos=None, chat: bool = False, cascade_threshold: float = 0.5) -> GenerationOptions:
        opts = GenerationOptions(mode, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, eos, chat,
                                 cascade_threshold)
        self._check_mode(opts.mode)
        if opts.stop and not self.has_tokenizer:
            raise InputError(NoTokenizer.MESSAGE.format(what="stop strings"))
        return opts

    def encode(self, prompt, chat: bool = False, max_new_tokens: int = 0) -> PromptBatch:
        """Tokenize (chat template if asked), check and left-pad one prompt or a batch."""
        batch = build_batch(prompt, chat, self.vocab_size, self.pad_id, self._chat_text if chat else str,
                            lambda text: self.codec.encode(text, add_special_tokens=not chat))
        longest = max(batch.lengths)
        if longest + max_new_tokens > self.max_positions:
            raise InputError(f"prompt has {longest} tokens + max_new_tokens {max_new_tokens} = "
                             f"{longest + max_new_tokens} > model.max_positions {self.max_positions}; shorten the "
                             "prompt or lower max_new_tokens")
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
                 stop=None, eos=None, chat: bool = False, cascade_threshold: float = 0.5) -> GenerationResult:
        """Generate new tokens for one prompt (flat result) or a list of prompts (one left-padded batch)."""
        opts = self.options(mode, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, eos, chat,
                            cascade_threshold)
        batch = self.encode(prompt_or_ids, opts.chat, opts.max_new_tokens)
        gen = self._cascade(batch, opts, False) if opts.mode == CASCADE else \
            self._pass(batch.input_ids, batch.attention_mask, opts.mode, opts, False, False)
        return _drain(gen, batch, opts)

    def stream(self, prompt_or_ids, mode: str = "base_shadow", max_new_tokens: int = 32, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop=None, eos=None, chat: bool = False, cascade_threshold: float = 0.5) -> GenerationStream:
        """Iterate the returned stream for text pieces as they are produced (one prompt); they join to
        `generate(...).text`. After the loop, `stream.result` holds this call's `GenerationResult`.

        cascade: the shadow's answer is held until its confidence is known; an escalated
        answer streams from base_shadow.
        """
        opts = self.options(mode, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, eos, chat,
                            cascade_threshold)
        batch = self.encode(prompt_or_ids, opts.chat, opts.max_new_tokens)
        if not batch.single:
            raise InputError("stream() takes one prompt; use generate() for a batch")
        if not self.has_tokenizer:
            raise InputError(NoTokenizer.MESSAGE.format(what="streaming text"))
        gen = self._cascade(batch, opts, True) if opts.mode == CASCADE else \
            self._pass(batch.input_ids, batch.attention_mask, opts.mode, opts, False, True)
        return GenerationStream(gen, lambda rows: self._finished(_result(rows, batch, opts)))  # checks ran eagerly

    def _finished(self, result: GenerationResult) -> GenerationResult:
        self._local.last_result = result
        return result

    def _pass(self, ids: np.ndarray, mask: np.ndarray, mode: str, opts: GenerationOptions, want_logprobs: bool,
              incremental: bool):
        """One generation pass in a graph mode. Yields (row, text piece); returns `_Rows`."""
        b = ids.shape[0]
        eos = opts.eos if opts.eos is not None else self.eos_ids
        eos_set = set(eos)
        rows, streams = _Rows(b), [TextStream(self.codec, opts.stop, incremental) for _ in range(b)]
        active = [True] * b
        state = LoopState(np.zeros(b, dtype=bool))
        sampler = Sampler(opts.do_sample, opts.temperature, opts.top_k, opts.top_p, opts.seed)
        for rec in decode_n(self.pipeline(mode), ids, mask, opts.max_new_tokens, sampler, eos, self.pad_id,
                            want_logprobs, state):
            for r in range(b):
                if not active[r]:
                    continue
                tok = int(rec.tokens[r])
                rows.ids[r].append(tok)
                if rec.logprobs is not None:
                    rows.logprobs[r].append(float(rec.logprobs[r]))
                if tok in eos_set:
                    rows.finish[r], active[r] = "eos", False
                    continue
                piece = streams[r].push(tok)
                if streams[r].stopped:
                    rows.finish[r], active[r] = "stop", False
                    state.done[r] = True
                if piece:
                    yield r, piece
        for r in range(b):
            piece = streams[r].finish()
            rows.text[r] = streams[r].emitted
            if piece:
                yield r, piece
        rows.timings = Timings(state.steps[0].ms, [s.ms for s in state.steps[1:]], b)
        return rows

    def _cascade(self, batch: PromptBatch, opts: GenerationOptions, incremental: bool):
        """shadow_only for every row; rows below the threshold are re-answered by base_shadow."""
        ids, mask = batch.input_ids, batch.attention_mask
        shadow = _silent(self._pass(ids, mask, "shadow_only", opts, True, False))
        conf = [shadow.confidence(r) for r in range(ids.shape[0])]
        low = [r for r, c in enumerate(conf) if c < opts.cascade_threshold]
        rows, stages = shadow, {"shadow_only": shadow.timings}
        if low:
            sub_ids, sub_mask = ids[low], mask[low]
            first = int(np.argmax(sub_mask.any(axis=0)))  # drop columns that are padding in every kept row
            base = yield from _remap(self._pass(sub_ids[:, first:], sub_mask[:, first:], "base_shadow", opts,
                                                False, incremental), low)
            for i, r in enumerate(low):
                rows.ids[r], rows.finish[r], rows.text[r] = base.ids[i], base.finish[i], base.text[i]
            stages["base_shadow"] = base.timings
        for r in range(ids.shape[0]):
            if r not in low and rows.text[r]:
                yield r, rows.text[r]  # the held shadow answer, in one piece
        rows.answered_by = ["base_shadow" if r in low else "shadow_only" for r in range(ids.shape[0])]
        rows.conf = conf
        rows.stages = stages
        rows.timings = Timings.combine(list(stages.values()))
        return rows


def _silent(gen):
    """Run a pass without forwarding its pieces; return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _remap(gen, rows: list[int]):
    """Forward a sub-batch pass's pieces with row indices mapped back to the full batch."""
    while True:
        try:
            r, piece = next(gen)
        except StopIteration as stop:
            return stop.value
        yield rows[r], piece


def _drain(gen, batch: PromptBatch, opts: GenerationOptions) -> GenerationResult:
    return _result(_silent(gen), batch, opts)


def _result(rows: _Rows, batch: PromptBatch, opts: GenerationOptions) -> GenerationResult:
    one = (lambda x: x[0]) if batch.single else (lambda x: list(x))
    cascade = opts.mode == CASCADE
    return GenerationResult(
        mode=opts.mode, token_ids=one(rows.ids), text=one(rows.text), finish_reason=one(rows.finish),
        prompt_tokens=one(batch.lengths), timings=rows.timings,
        answered_by=one(rows.answered_by) if cascade else None,
        confidence=one(rows.conf) if cascade else None,
        stages=rows.stages if cascade else {})
