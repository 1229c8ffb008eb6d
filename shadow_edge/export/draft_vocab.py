"""The speculative draft head's reduced vocabulary (FR-Spec): rank the tokens by frequency, keep the N most frequent.

`export --draft-vocab N [--draft-vocab-from FILE]` adds graph `draft_head`: the shadow's head restricted to the
rows of N token ids (a gathered [N, d] sub-matrix, quantized like the full head), and `draft_vocab.json` with the
ids. Speculative decoding drafts with it; verification keeps the full vocabulary, so greedy output is unchanged and
only drafts of tokens outside the N are lost. The ranking: token counts of FILE tokenized with the base's tokenizer
(`.jsonl`: every string value of each line's JSON, e.g. chat messages; else plain UTF-8 text), ties and unseen
tokens by ascending id; without FILE, ascending id alone (a BPE tokenizer numbers its merges in the order its
training corpus made them, roughly by frequency). The end-of-sequence ids are always kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadow_edge.errors import ExportError
from shadow_edge.manifest import DRAFT_VOCAB_FILE, sha256_file

LINES_PER_BATCH = 2048  # lines tokenized per encode_batch call
MAX_TEXT_BYTES = 1 << 30  # a frequency list needs far less; refuse what would take minutes to tokenize


@dataclass(frozen=True)
class DraftVocab:
    """The N kept token ids (ascending, int64) and the manifest's `draft_vocab` section."""

    ids: np.ndarray  # [N] int64
    section: dict

    def write(self, out_dir: Path) -> None:
        text = json.dumps({"token_ids": [int(t) for t in self.ids]}, separators=(",", ":")) + "\n"
        (out_dir / DRAFT_VOCAB_FILE).write_text(text, encoding="utf-8")


def check_draft_args(size, source) -> None:
    """The export options' checks that need no checkpoint: N a positive integer, FILE an existing file, FILE only
    with N (ExportError names the flag and the fix). N above the vocabulary is refused once it is known."""
    if size is None:
        if source is not None:
            raise ExportError(f"--draft-vocab-from {source} needs --draft-vocab N (how many of its most frequent "
                              "tokens the draft head keeps, e.g. --draft-vocab 8192)")
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ExportError(f"--draft-vocab {size!r} must be a whole number of tokens >= 1 (e.g. 8192), at most the "
                          "model's vocabulary size")
    if source is not None and not Path(source).is_file():
        raise ExportError(f"--draft-vocab-from {source}: no such file; give a UTF-8 text or .jsonl file of text like "
                          "what the model will generate, or leave the flag out to rank by token id")


def draft_vocab(size: int, vocab: int, tokenizer_json: Path | None, source: str | Path | None,
                keep: tuple[int, ...] = ()) -> DraftVocab:
    """The `size` most frequent token ids of `source` (see the module docstring) plus the ids `keep`."""
    if size > vocab:
        raise ExportError(f"--draft-vocab {size} is more than the model's vocabulary ({vocab} tokens); choose "
                          f"1..{vocab} (e.g. {min(8192, vocab)})")
    counts = np.zeros(vocab, dtype=np.int64)
    section: dict = {"size": size, "file": DRAFT_VOCAB_FILE, "source": {"kind": "token_id_order"},
                     "coverage": None}
    if source is not None:
        counts = _count(Path(source), tokenizer_json, vocab)
        total = int(counts.sum())
        section["source"] = {"kind": "text", "file": Path(source).name, "sha256": sha256_file(Path(source)),
                             "tokens": total}
    boost = np.zeros(vocab, dtype=np.int64)
    boost[[t for t in keep if 0 <= t < vocab]] = 1
    order = np.lexsort((np.arange(vocab), -counts, -boost))  # kept ids, then by count, then by id
    ids = np.sort(order[:size]).astype(np.int64)
    if source is not None:
        section["coverage"] = round(float(counts[ids].sum()) / max(int(counts.sum()), 1), 6)
    return DraftVocab(ids, section)


def _strings(value) -> list[str]:
    """Every string value inside a parsed JSON value (dict keys excluded)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _count(path: Path, tokenizer_json: Path | None, vocab: int) -> np.ndarray:
    """Token counts [vocab] of the text of `path`, tokenized with `tokenizer_json` (no special tokens added)."""
    if tokenizer_json is None or not tokenizer_json.is_file():
        raise ExportError(f"--draft-vocab-from {path}: counting tokens needs the base's tokenizer.json, which this "
                          "base does not have; leave --draft-vocab-from out to rank by token id")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ExportError(f"--draft-vocab-from {path}: {path.stat().st_size / 1e9:.1f} GB is more text than a "
                          f"frequency list needs (at most {MAX_TEXT_BYTES / 1e9:.1f} GB); give a sample of it")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    counts = np.zeros(vocab, dtype=np.int64)
    jsonl = path.suffix == ".jsonl"
    batch: list[str] = []

    def flush() -> None:
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            counts[:] += np.bincount(ids[ids < vocab], minlength=vocab)
        batch.clear()

    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if jsonl:
                    try:
                        batch.extend(_strings(json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ExportError(f"--draft-vocab-from {path}: line {n} is not JSON ({e.msg}); a .jsonl "
                                          "file holds one JSON value per line (or rename it to .txt)") from None
                else:
                    batch.append(line)
                if len(batch) >= LINES_PER_BATCH:
                    flush()
    except UnicodeDecodeError as e:
        raise ExportError(f"--draft-vocab-from {path}: not UTF-8 text ({e.reason} at byte {e.start}); give a "
                          "UTF-8 text or .jsonl file") from None
    flush()
    if not counts.any():
        raise ExportError(f"--draft-vocab-from {path}: holds no text to count tokens in; give a file of text like "
                          "what the model will generate")
    return counts


def head_rows(head, ids: np.ndarray):
    """Rows `ids` of the [vocab, d] head (lazy or not) as a [N, d] tensor; a quantized head's rows are quantized
    the same way (rows are quantized independently, so they equal the full head's columns)."""
    import torch

    from shadow_edge.core.lazy_tensor import rows
    from shadow_edge.export.quantize import Dequantized

    index = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    if isinstance(head, Dequantized):
        return Dequantized(rows(head.source, index), head.bits, head.block)
    return rows(head, index).contiguous()


def check_draft_head(art_dir: Path, graphs: dict, modes: dict, ids: np.ndarray, atol: float, threads: int = 2,
                     ) -> dict:
    """Run graph `draft_head` and the shadow's full head on the same hidden states through the runtime's sessions:
    the draft logits must equal the full logits' columns `ids`. Returns the validation report entry
    {max_abs_err, ref_max_abs, allowed}; ExportError on a miss."""
    from shadow_edge import io_spec
    from shadow_edge.export.validate import raise_misses
    from shadow_edge.runtime.session import GraphSession, ov

    full_name = modes[io_spec.MODE_SHADOW_ONLY][io_spec.ROLE_HEAD]
    full, part = (GraphSession(n, graphs[n], art_dir, threads=threads) for n in (full_name, io_spec.GRAPH_DRAFT_HEAD))
    d = graphs[full_name].inputs[0].shape[-1]
    hidden = np.random.default_rng(0).standard_normal((2, 3, d)).astype(np.float32)  # [b, n, d]
    want = full.run({io_spec.HIDDEN: ov(hidden)})[0].numpy()[..., ids]  # [b, n, N]
    got = part.run({io_spec.HIDDEN: ov(hidden)})[0].numpy()
    scale = float(np.abs(want).max())
    report = {"max_abs_err": float(np.abs(got - want).max()), "ref_max_abs": scale, "allowed": atol * max(1.0, scale)}
    raise_misses({f"{io_spec.GRAPH_DRAFT_HEAD}.logits (vs {full_name}'s columns)": report}, [])
    return report
