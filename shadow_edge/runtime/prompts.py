"""Turn what users pass (text, chat messages, token ids; one or a batch) into a left-padded batch.

Accepted: "text" | ["text", ...] | [int, ...] | [[int, ...], ...] | np.ndarray [t] or [b, t];
with chat: "text" (one user message) | [{"role", "content"}, ...] (one conversation) |
a list of either (a batch). Rows are checked (non-empty, ids inside the vocabulary) and
left-padded with the artifact's pad id (mask 0 on pads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shadow_edge.errors import InputError
from shadow_edge.runtime.inputs import check_text, is_int


@dataclass(frozen=True)
class PromptBatch:
    input_ids: np.ndarray  # [b, t] int64, left-padded
    attention_mask: np.ndarray  # [b, t] int64, 0 on left padding
    lengths: list[int]  # real tokens per row
    single: bool  # the user passed one prompt: results are flat


def _is_conversation(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) for m in x)


def split_prompts(prompt, chat: bool) -> tuple[list, bool, bool]:
    """(rows, single, are_ids): each row is a str, a conversation, or a list of ids."""
    if isinstance(prompt, np.ndarray):
        if prompt.ndim not in (1, 2) or not np.issubdtype(prompt.dtype, np.integer):
            raise InputError(f"prompt array has shape {prompt.shape} and dtype {prompt.dtype}; expected "
                             "integer token ids of shape [t] or [batch, t]")
        return ([prompt.tolist()] if prompt.ndim == 1 else prompt.tolist()), prompt.ndim == 1, True
    if isinstance(prompt, str):
        return [prompt], True, False
    if chat and _is_conversation(prompt):
        return [list(prompt)], True, False
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InputError("prompt is an empty list; pass text, token ids or a list of prompts")
        if all(isinstance(t, (int, float, np.number)) for t in prompt):  # ids; check_ids names bad ones
            return [list(prompt)], True, True
        if all(isinstance(r, (list, tuple, np.ndarray)) and not _is_conversation(r) for r in prompt):
            return [list(r) for r in prompt], False, True
        if all(isinstance(r, str) or (chat and _is_conversation(r)) for r in prompt):
            return list(prompt), False, False
    raise InputError(f"prompt of type {type(prompt).__name__} is not understood; pass a string, a list of "
                     "strings, a list of token ids or a list of such lists"
                     + (" (or chat messages)" if chat else ""))


def check_ids(rows: list[list], vocab_size: int) -> list[list[int]]:
    out = []
    for r, row in enumerate(rows):
        if len(row) == 0:
            raise InputError(f"prompt {r} is empty (0 tokens); give at least one token")
        for j, t in enumerate(row):
            if not is_int(t) or not 0 <= int(t) < vocab_size:
                raise InputError(f"prompt {r} token {j} is {t!r}; token ids must be integers in "
                                 f"[0, {vocab_size - 1}] (vocab_size {vocab_size} from manifest.json)")
        out.append([int(t) for t in row])
    return out


def build_batch(prompt, chat: bool, vocab_size: int, pad_id: int,
                to_text: Callable[[object], str], encode: Callable[[str], list[int]]) -> PromptBatch:
    """Encode (if text), check and left-pad. `to_text` renders a row for chat (identity otherwise)."""
    rows, single, are_ids = split_prompts(prompt, chat)
    if are_ids:
        if chat:
            raise InputError("chat=True needs text or messages, not token ids; drop --chat or pass --prompt")
        ids = rows
    else:
        ids = []
        for r, row in enumerate(rows):
            if isinstance(row, str) and not row:
                raise InputError(f"prompt {r} is an empty string; give some text")
            if isinstance(row, str):
                check_text(row, f"prompt {r}")
            ids.append(encode(to_text(row)))
    ids = check_ids(ids, vocab_size)
    lengths = [len(r) for r in ids]
    t = max(lengths)
    input_ids = np.full((len(ids), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), t), dtype=np.int64)
    for r, row in enumerate(ids):
        input_ids[r, t - len(row):] = row
        mask[r, t - len(row):] = 1
    return PromptBatch(input_ids, mask, lengths, single)
