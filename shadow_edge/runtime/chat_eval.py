"""Quality on chat JSONL, scoring the assistant turns only: perplexity per mode, agreement, drift (no torch).

Each line is {"messages": [{"role": ..., "content": ...}, ...]}, rendered with the artifact's chat template.
Only tokens of assistant turns are scored (from the end of the generation prompt before the turn to the end of
the turn, its end-of-turn token included): a repeated system prompt and the questions would otherwise dominate
(scored on the whole text, a "define the word" shadow's perplexity was 11x its answers-only figure). Each chat
is one row, run whole; rows longer than the model's context are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shadow_edge.errors import InputError
from shadow_edge.runtime.classify import check_task
from shadow_edge.runtime.evaluate import Agreement, EvalReport, Progress, _Acc, _check_modes


def chat_rows(rt, path: Path, max_chats: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids [n] int64, scored [n] bool: ids[i] is an assistant token) per chat of the JSONL file."""
    if not rt.has_tokenizer:
        raise InputError(f"artifact {rt.art_dir} has no tokenizer.json, so it cannot render chats; re-export it "
                         "with its tokenizer")
    encode = lambda text: rt.codec.encode(text, add_special_tokens=False)
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--chat {path}: cannot read it as UTF-8 text ({e})") from None
    for n, line in enumerate(lines, 1):
        if max_chats is not None and len(rows) == max_chats:
            break
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            messages = None
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise InputError(f"--chat {path}:{n}: expected a JSON object {{\"messages\": [{{\"role\": ..., "
                             "\"content\": ...}, ...]}}") from None
        ids = encode(rt.chat_text(messages, add_generation_prompt=False))
        scored = np.zeros(len(ids), dtype=bool)
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(encode(rt.chat_text(messages[:i], add_generation_prompt=True)))
                end = len(encode(rt.chat_text(messages[:i + 1], add_generation_prompt=False)))
                scored[start:end] = True
        if len(ids) > rt.max_positions:
            raise InputError(f"--chat {path}:{n}: the chat has {len(ids)} tokens, more than the model's context "
                             f"{rt.max_positions}; shorten it")
        scored[0] = False  # the first token has nothing to be predicted from
        if scored.any():
            rows.append((np.asarray(ids, dtype=np.int64), scored))
    if not rows:
        raise InputError(f"--chat {path}: no chat with an assistant turn to score")
    return rows


def evaluate_chats(rt, path: Path, modes: tuple[str, ...] | None = None, compare=None, batch: int = 8,
                   max_chats: int | None = None, progress: Progress | None = None) -> EvalReport:
    """Perplexity per graph mode, shadow/combined agreement and (compare=) drift on the assistant tokens."""
    for runtime in (rt, compare):
        if runtime is not None:
            check_task(runtime.manifest, "causal_lm")
    graph = tuple(rt.manifest.modes)
    modes = modes if modes is not None else graph
    _check_modes(rt, modes, "artifact")
    for mode in modes:
        if mode not in graph:
            raise InputError(f"eval --chat measures the graph modes ({', '.join(graph)}); {mode!r} is not one "
                             "(speculative acceptance and the cascade curve are measured on --text)")
    if compare is not None:
        _check_modes(compare, modes, "--compare artifact")
        if compare.vocab_size != rt.vocab_size:
            raise InputError(f"--compare artifact {compare.art_dir} has vocab_size {compare.vocab_size}, the "
                             f"first {rt.vocab_size}; compare exports of the same model")
    rows = chat_rows(rt, path, max_chats)
    accs = {m: _Acc() for m in modes}
    agreement = Agreement()
    total, done = len(rows), 0
    for i in range(0, len(rows), batch):
        group = rows[i:i + batch]
        t = max(len(ids) for ids, _ in group)
        chunk = np.zeros((len(group), t), dtype=np.int64)  # [b, t], left-padded
        mask = np.zeros((len(group), t), dtype=np.int64)  # [b, t]
        for r, (ids, _) in enumerate(group):
            chunk[r, t - len(ids):], mask[r, t - len(ids):] = ids, 1
        tops = {}
        for mode in modes:
            logits = rt.forward(chunk, mask, mode=mode)  # [b, t, V]
            other = compare.forward(chunk, mask, mode=mode) if compare is not None else None
            parts = []
            for r, (ids, scored) in enumerate(group):
                targets = np.flatnonzero(scored)  # positions of scored tokens; predicted from position - 1
                at = t - len(ids) + targets - 1
                parts.append(accs[mode].add(logits[r, at], ids[targets], None if other is None else other[r, at]))
            tops[mode] = tuple(np.concatenate(x) for x in zip(*parts))
        agreement.add(tops, np.concatenate([ids[scored] for ids, scored in group]))
        done += len(group)
        if progress:
            progress(done, total)
    scored_tokens = sum(int(s.sum()) for _, s in rows)
    return EvalReport(
        artifact=str(rt.art_dir), tokens=scored_tokens, window=max(len(ids) for ids, _ in rows), stride=0,
        modes={m: a.quality(m) for m, a in accs.items()}, agreement=agreement.overall(),
        agreement_by_confidence=agreement.bins(), cascade=[],
        compare_artifact=str(compare.art_dir) if compare is not None else None,
        drift={m: accs[m].drift(m) for m in modes} if compare is not None else {})
