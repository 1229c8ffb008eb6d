"""A UTF-8 text file as token ids with bounded memory: read in chunks, tokenized piece by piece, ids kept as int32.

`file_token_ids(codec, path, max_tokens)` never holds more than about two chunks of text and
the ids (4 bytes per token) — a 200 MB file tokenized in one call took 16.9 GB and was killed.
Chunks are cut after a line break that is followed by a visible character (in a text without
line breaks: before a space between words), and a cut is kept
only where the tokenizer splits the same way with and without the cut (checked on the text
around it); so the ids equal those of tokenizing the whole file at once. A tokenizer that
never splits cleanly there (e.g. one that prepends a space marker to every input) simply gets
larger pieces. Reading stops once `max_tokens` ids are known.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np

from shadow_edge.errors import InputError

CHUNK_BYTES = 1 << 18  # text read per step (peak memory is a few hundred bytes per token of one chunk)
CONTEXT = 256  # characters each side of a cut that the split check tokenizes
CANDIDATES = 16  # cuts tried per chunk before the chunk grows instead


def _cuts(text: str, limit: int):
    """Candidate cut positions, last first: after a line break before a visible character; then (a text without
    line breaks) before a single space between two visible characters."""
    for mark, start in (("\n", 1), (" ", 0)):
        i = len(text) - 1
        for _ in range(limit):
            i = text.rfind(mark, 0, i)
            if i < 1:
                break
            if i + 1 < len(text) and not text[i + 1].isspace() and (mark == "\n" or not text[i - 1].isspace()):
                yield i + start


def _splits_cleanly(encode, text: str, cut: int) -> bool:
    left, right = text[max(0, cut - CONTEXT):cut], text[cut:cut + CONTEXT]
    return encode(left + right) == encode(left) + encode(right)


def file_token_ids(codec, path: str | Path, max_tokens: int | None = None, chunk_bytes: int = CHUNK_BYTES,
                   what: str = "--text") -> np.ndarray:
    """Token ids [n] int32 (no special tokens) of a UTF-8 file, the first `max_tokens` if given; one clear error for
    a missing, unreadable, empty or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file; give a UTF-8 text file to evaluate on")

    def encode(text: str) -> list[int]:
        return codec.encode(text, add_special_tokens=False)

    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces: list[np.ndarray] = []
    count, read, pending, visible = 0, 0, "", False
    try:
        with path.open("rb") as f:
            while max_tokens is None or count < max_tokens:
                raw = f.read(chunk_bytes)
                held = len(decoder.getstate()[0])  # bytes of a character split by the previous read
                try:
                    pending += decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    at = read - held + e.start
                    raise InputError(f"{what} {path}: not UTF-8 text (byte {at} is {e.object[e.start]:#04x}); "
                                     "convert it, e.g. iconv -f latin1 -t utf-8") from None
                read += len(raw)
                visible = visible or bool(pending.strip())
                cut = len(pending) if not raw else next(
                    (c for c in _cuts(pending, CANDIDATES) if _splits_cleanly(encode, pending, c)), 0)
                if cut:
                    pieces.append(np.asarray(encode(pending[:cut]), dtype=np.int32))
                    count += len(pieces[-1])
                    pending = pending[cut:]
                if not raw:
                    break
    except OSError as e:
        raise InputError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if not visible:
        raise InputError(f"{what} {path}: the file is empty; give text with at least two tokens")
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return ids[:max_tokens] if max_tokens is not None else ids
