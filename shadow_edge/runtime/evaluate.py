"""Quality of an artifact on a text: perplexity per mode, shadow/combined agreement, drift against a second artifact.

Torch-free (numpy + the runtime). Teacher-forced over the text's tokens:

- **perplexity** per graph mode: windows of `window` tokens (default: the model's context)
  start every `stride` tokens; each window scores only the positions no earlier window
  scored, so every position 1..n-1 is scored exactly once, with at least `window - stride`
  tokens of context after the first window. ppl = exp(mean NLL);
- **agreement**: share of positions where `shadow_only` and `base_shadow` pick the same
  next token (argmax), the figure self-speculative decoding lives on; also by base_shadow's top-1
  probability, beside how often base_shadow's own argmax is the text's token there (where the combined
  model is unsure, even the text rarely picks its token: what bounds a draft there);
- **drift** (`compare=`): the same windows through a second artifact (e.g. int8 vs fp32):
  perplexity delta, mean cosine of the logits vectors, mean KL(first || second), top-1
  agreement, per mode;
- **speculative** (only when listed in `modes`: it runs a draft/verify round per position):
  acceptance of the shadow's drafts per k and speculative's own perplexity, which equals
  base_shadow's (`speculative_eval.py`).

The cascade curve (prompts cut from the text, generated) lives in `cascade_curve.py`;
`evaluate()` runs both and returns one `EvalReport`. A text file is tokenized in chunks
(`text_file.py`) and its ids kept as int32; agreement is counted window by window, so memory
is the ids plus one batch of logits, whatever the text's size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from shadow_edge.errors import InputError
from shadow_edge.runtime.cascade_curve import CurvePoint, cascade_curve
from shadow_edge.runtime.classify import check_task
from shadow_edge.runtime.options import CASCADE
from shadow_edge.runtime.prompts import check_ids
from shadow_edge.runtime.sampling import log_softmax
from shadow_edge.runtime.speculative_eval import CONFIDENCE_BINS, SpeculativeEval, scan, summarize
from shadow_edge.runtime.strategies import strategy
from shadow_edge.runtime.strategies.speculative import Speculative
from shadow_edge.runtime.text_file import file_token_ids

Progress = Callable[[int, int], None]  # (done, total)
SPECULATIVE = Speculative.name
LOGITS_BUDGET = 256 << 20  # bytes of float32 logits one batched forward may return


@dataclass(frozen=True)
class EvalOptions:
    """What to measure and how; every field is validated here."""

    modes: tuple[str, ...] | None = field(default=None, metadata={
        "help": "modes to evaluate (graph modes get perplexity; cascade gets the curve; speculative gets draft "
                "acceptance per k and its own perplexity); None = the artifact's graph modes and cascade"})
    max_tokens: int | None = field(default=None, metadata={"help": "evaluate only the text's first N tokens"})
    window: int | None = field(default=None, metadata={"help": "tokens per window (default: the model's context)"})
    stride: int | None = field(default=None, metadata={"help": "tokens between window starts (default: window/2)"})
    batch: int = field(default=8, metadata={
        "help": "windows per forward pass (fewer when their logits would pass LOGITS_BUDGET bytes)"})
    prompts: int = field(default=16, metadata={"help": "cascade curve: prompts cut from the text"})
    prompt_tokens: int = field(default=24, metadata={"help": "cascade curve: tokens per prompt"})
    answer_tokens: int = field(default=16, metadata={"help": "cascade curve: greedy tokens per answer"})
    thresholds: tuple[float, ...] = field(default=tuple(round(0.05 * i, 2) for i in range(21)), metadata={
        "help": "cascade curve: confidence thresholds swept"})
    draft_tokens: int = field(default=8, metadata={
        "help": "speculative: tokens drafted per position (k_max); acceptance is reported for every k up to it"})
    full_draft_vocab: bool = field(default=False, metadata={
        "help": "speculative: draft over the whole vocabulary even when the artifact has a reduced draft vocabulary"})

    def __post_init__(self) -> None:
        for name in ("max_tokens", "window", "stride"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 2):
                raise InputError(f"{name} is {v!r}; it must be an integer >= 2 (or None for the default)")
        if self.window is not None and self.stride is not None and self.stride >= self.window:
            raise InputError(f"stride {self.stride} must be smaller than window {self.window}, so that every "
                             "window after the first has context")
        for name in ("batch", "prompts", "prompt_tokens", "answer_tokens", "draft_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} is {v!r}; it must be an integer >= 1")
        if not self.thresholds or not all(isinstance(t, (int, float)) and 0.0 <= t <= 1.0 for t in self.thresholds):
            raise InputError(f"thresholds are {self.thresholds!r}; give one or more numbers in [0, 1]")
        if self.modes is not None:
            object.__setattr__(self, "modes", tuple(self.modes))
            if not self.modes:
                raise InputError("modes is empty; name at least one mode (or None for all)")


@dataclass(frozen=True)
class ModeQuality:
    """Teacher-forced quality of one mode over the scored positions."""

    mode: str
    nll: float  # mean negative log-likelihood (nats per token)
    perplexity: float
    top1_accuracy: float  # argmax == the text's next token
    tokens: int  # positions scored


@dataclass(frozen=True)
class Drift:
    """A second artifact against the first, one mode, same positions."""

    mode: str
    perplexity: float  # of the second artifact
    perplexity_delta: float  # second - first
    perplexity_rel: float  # (second - first) / first
    logits_cosine: float  # mean over positions
    kl: float  # mean KL(first || second), nats
    top1_agreement: float  # argmax equal


@dataclass(frozen=True)
class AgreementBin:
    """Scored positions where base_shadow's top-1 probability lies in [low, high) (the last bin: [low, 1])."""

    low: float
    high: float
    positions: int
    agreement: float | None  # shadow_only's argmax == base_shadow's (None: no position in the bin)
    base_shadow_accuracy: float | None  # base_shadow's argmax == the text's token


@dataclass(frozen=True)
class EvalReport:
    """Everything `shadow-edge eval` measures (JSON: `to_dict()`)."""

    artifact: str
    tokens: int  # tokens of the text evaluated
    window: int
    stride: int
    modes: dict[str, ModeQuality]
    agreement: float | None  # shadow_only vs base_shadow, top-1, teacher-forced
    cascade: list[CurvePoint]
    compare_artifact: str | None = None
    drift: dict[str, Drift] = field(default_factory=dict)
    speculative: SpeculativeEval | None = None
    agreement_by_confidence: list[AgreementBin] = field(default_factory=list)  # by base_shadow's top-1 probability

    def to_dict(self) -> dict:
        return asdict(self)


def window_batches(ids: np.ndarray, spans: list[tuple[int, int, int]], batch: int):
    """Yield (input_ids [b, t], mask [b, t], rows) per group of `batch` spans, left-padded to the longest.

    rows[i] is the slice of row i's logits that predicts ids[first:end] of span i (its padding
    shifts it right); padding is masked, as the runtime pads prompts."""
    for i in range(0, len(spans), batch):
        group = spans[i:i + batch]
        t = max(end - begin for begin, end, _ in group)
        chunk = np.zeros((len(group), t), dtype=np.int64)  # [b, t]
        mask = np.zeros((len(group), t), dtype=np.int64)  # [b, t]
        rows = []
        for r, (begin, end, first) in enumerate(group):
            pad = t - (end - begin)
            chunk[r, pad:], mask[r, pad:] = ids[begin:end], 1
            rows.append(slice(pad + first - begin - 1, pad + end - begin - 1))
        yield group, chunk, mask, rows


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first): run ids[begin:end] and score targets first..end-1 (each target once, first >= 1)."""
    out, begin, first = [], 0, 1
    while True:
        end = min(begin + window, n)
        out.append((begin, end, first))
        if end == n:
            return out
        first, begin = end, begin + stride


class _Acc:
    """Running sums of one mode (and of its drift, when compared)."""

    def __init__(self):
        self.nll = self.correct = self.n = 0.0
        self.nll2 = self.cos = self.kl = self.agree = 0.0

    def add(self, logits: np.ndarray, targets: np.ndarray, other: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """logits [k, V] predicting targets [k]; other [k, V]: the compared artifact's logits. Returns the
        argmax [k] and its probability [k]."""
        lp = log_softmax(logits)  # [k, V]
        idx = np.arange(len(targets))
        top = logits.argmax(-1)  # [k]
        self.nll += float(-lp[idx, targets].sum())
        self.correct += float((top == targets).sum())
        self.n += len(targets)
        if other is not None:
            lq = log_softmax(other)
            self.nll2 += float(-lq[idx, targets].sum())
            a, b = logits.astype(np.float64), other.astype(np.float64)
            self.cos += float((np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
                                                     + 1e-30)).sum())
            self.kl += float((np.exp(lp) * (lp - lq)).sum())
            self.agree += float((top == other.argmax(-1)).sum())
        return top, np.exp(lp[idx, top])

    def quality(self, mode: str) -> ModeQuality:
        nll = self.nll / self.n
        return ModeQuality(mode, nll, math.exp(nll), self.correct / self.n, int(self.n))

    def drift(self, mode: str) -> Drift:
        ppl, ppl2 = math.exp(self.nll / self.n), math.exp(self.nll2 / self.n)
        return Drift(mode, ppl2, ppl2 - ppl, (ppl2 - ppl) / ppl, self.cos / self.n, self.kl / self.n,
                     self.agree / self.n)


class Agreement:
    """shadow_only's argmax against base_shadow's over the scored positions, overall and per bin of base_shadow's
    top-1 probability (CONFIDENCE_BINS), with base_shadow's own accuracy on the text in each bin."""

    def __init__(self):
        bins = len(CONFIDENCE_BINS) - 1
        self.n, self.agree, self.correct = np.zeros(bins, np.int64), np.zeros(bins, np.int64), np.zeros(bins, np.int64)

    def add(self, tops: dict[str, tuple[np.ndarray, np.ndarray]], targets: np.ndarray) -> None:
        """tops: mode -> (argmax [k], its probability [k]) at the scored positions predicting targets [k]."""
        if "shadow_only" not in tops or "base_shadow" not in tops:
            return
        (shadow, _), (base, prob) = tops["shadow_only"], tops["base_shadow"]
        at = np.clip(np.searchsorted(CONFIDENCE_BINS, prob, side="right") - 1, 0, len(self.n) - 1)
        np.add.at(self.n, at, 1)
        np.add.at(self.agree, at, shadow == base)
        np.add.at(self.correct, at, base == targets)

    def overall(self) -> float | None:
        return float(self.agree.sum() / self.n.sum()) if self.n.sum() else None

    def bins(self) -> list[AgreementBin]:
        if not self.n.sum():
            return []
        share = lambda x, n: float(x / n) if n else None
        return [AgreementBin(lo, hi, int(n), share(a, n), share(c, n)) for lo, hi, n, a, c in
                zip(CONFIDENCE_BINS, CONFIDENCE_BINS[1:], self.n, self.agree, self.correct)]


def encode_text(rt, text, max_tokens: int | None) -> np.ndarray:
    """Token ids [n] of `text` (a string, a UTF-8 file as a Path, or token ids as-is), first max_tokens; at least
    two, else one clear error."""
    if isinstance(text, (str, Path)):
        if not rt.has_tokenizer:
            raise InputError(f"artifact {rt.art_dir} has no tokenizer.json, so it cannot read text; re-export it "
                             "with its tokenizer or pass token ids")
        if isinstance(text, Path):
            ids = file_token_ids(rt.codec, text, max_tokens)
        else:
            ids = np.asarray(rt.codec.encode(text, add_special_tokens=False), dtype=np.int32)
    else:
        ids = np.asarray(check_ids([list(np.ravel(text))], rt.vocab_size)[0] if np.size(text) else [],
                         dtype=np.int64)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise InputError(f"the text has {len(ids)} token(s); perplexity needs at least 2 (one to predict from, "
                         "one to predict)")
    return ids


def _check_modes(rt, modes: tuple[str, ...], what: str) -> None:
    for mode in modes:
        if mode not in rt.modes:
            hint = " (re-export with --plain-backbone for base_plain)" if mode == "base_plain" else ""
            raise InputError(f"{what} {rt.art_dir} has no mode {mode!r}; it has {', '.join(rt.modes)}{hint}")


def evaluate(rt, text, options: EvalOptions = EvalOptions(), compare=None,
             progress: Progress | None = None) -> EvalReport:
    """Measure `rt` (a loaded ShadowRuntime) on `text` (a string, a UTF-8 file as a Path, or token ids [n]).

    compare: a second runtime (same vocabulary) to measure drift against; progress(done, total)
    is called after each unit of work."""
    for runtime in (rt, compare):
        if runtime is not None:  # a classifier has label heads, no next-token logits to score
            check_task(runtime.manifest, "causal_lm")
    graph = tuple(rt.manifest.modes)  # modes backed by graphs: the ones with logits to score
    modes = options.modes if options.modes is not None else tuple(m for m in rt.modes if m in graph + (CASCADE,))
    _check_modes(rt, modes, "artifact")
    for mode in modes:
        if mode not in graph + (CASCADE, SPECULATIVE):
            raise InputError(f"eval measures the graph modes ({', '.join(graph)}), cascade and speculative; "
                             f"{mode!r} is not one of them")
    if SPECULATIVE in modes:
        strategy(SPECULATIVE).check(rt, rt.options(SPECULATIVE), 1)  # e.g. one shadow graph shared by both modes
    graph_modes = tuple(m for m in modes if m not in (CASCADE, SPECULATIVE))
    if compare is not None:
        _check_modes(compare, graph_modes, "--compare artifact")
        if compare.vocab_size != rt.vocab_size:
            raise InputError(f"--compare artifact {compare.art_dir} has vocab_size {compare.vocab_size}, the "
                             f"first {rt.vocab_size}; compare exports of the same model")
    ids = encode_text(rt, text, options.max_tokens)
    window = min(options.window or rt.max_positions, rt.max_positions, len(ids))
    stride = options.stride or max(1, window // 2)
    if stride >= window and window < len(ids):
        raise InputError(f"stride {stride} must be smaller than the window {window}")
    spans = windows(len(ids), window, stride)
    curve_runs = 2 if CASCADE in modes else 0
    spec_runs = len(spans) if SPECULATIVE in modes else 0
    total, done = len(spans) * len(graph_modes) * (2 if compare is not None else 1) + spec_runs + curve_runs, 0
    accs = {m: _Acc() for m in graph_modes}
    agreement = Agreement()  # shadow_only vs base_shadow, counted window by window
    batch = max(1, min(options.batch, LOGITS_BUDGET // (4 * window * rt.vocab_size)))
    for group, chunk, mask, rows in window_batches(ids, spans, batch):
        tops = {}  # mode -> (argmax, its probability) at this group's scored positions
        for mode in graph_modes:
            logits = rt.forward(chunk, mask, mode=mode)  # [b, t, V]
            other = compare.forward(chunk, mask, mode=mode) if compare is not None else None
            parts = [accs[mode].add(logits[r, rows[r]], ids[first:end], None if other is None else other[r, rows[r]])
                     for r, (_, end, first) in enumerate(group)]
            tops[mode] = tuple(np.concatenate(x) for x in zip(*parts))
            done += len(group) * (2 if compare is not None else 1)
            if progress:
                progress(done, total)
        agreement.add(tops, np.concatenate([ids[first:end] for _, end, first in group]))
    speculative = None
    if SPECULATIVE in modes:
        result = scan(rt, ids.astype(np.int64), spans, options.draft_tokens, full_draft_vocab=options.full_draft_vocab,
                      progress=(lambda w: progress(done + w, total)) if progress else None)
        done += len(spans)
        accs[SPECULATIVE], gap = _Acc(), 0.0
        for (begin, end, first), logits in zip(spans, result.logits):
            targets, idx = ids[first:end], np.arange(end - first)
            accs[SPECULATIVE].add(logits, targets, None)
            base = rt.forward(ids[None, begin:end], mode="base_shadow")[0, first - begin - 1:end - begin - 1]
            gap = max(gap, float(np.abs(log_softmax(logits)[idx, targets] - log_softmax(base)[idx, targets]).max()))
        speculative = summarize(result, options.draft_tokens, gap)
    curve = []
    if CASCADE in modes:
        curve = cascade_curve(rt, ids, options.prompts, options.prompt_tokens, options.answer_tokens,
                              options.thresholds)
        if progress:
            progress(total, total)
    return EvalReport(
        artifact=str(rt.art_dir), tokens=len(ids), window=window, stride=stride,
        modes={m: a.quality(m) for m, a in accs.items()}, agreement=agreement.overall(), cascade=curve,
        agreement_by_confidence=agreement.bins(),
        compare_artifact=str(compare.art_dir) if compare is not None else None,
        drift={m: accs[m].drift(m) for m in graph_modes} if compare is not None else {}, speculative=speculative)
