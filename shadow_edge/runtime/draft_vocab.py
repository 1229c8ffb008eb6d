"""Speculative decoding's draft head: the artifact's reduced draft vocabulary (FR-Spec) or the shadow's full head.

An artifact exported with `--draft-vocab N` has graph `draft_head` (the shadow's head over N token rows) and
`draft_vocab.json` (those ids, ascending; manifest `draft_vocab`). Drafting with it costs the N rows instead of the
vocabulary; a draft is always one of the N, and verification (the full vocabulary) decides as before, so greedy
output equals base_shadow's either way. Sampled drafts stay exact too: the draft distribution q is zero outside the
N, and the acceptance rule min(1, p/q) with its residual max(p - q, 0) holds for any q the drafts are drawn from.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from shadow_edge import artifact_lock
from shadow_edge.errors import ArtifactError
from shadow_edge.io_spec import GRAPH_DRAFT_HEAD, MODE_BASE_SHADOW, MODE_SHADOW_ONLY, ROLE_SHADOW, STEP_DRAFT
from shadow_edge.manifest import member_path

_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # runtime -> its draft ids (read once)
_RATIOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # runtime -> {head graph: cost ratio}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class DraftHead:
    """The head a draft step runs, and the token id of each of its logits' columns."""

    session: object  # GraphSession: hidden_states [b, n, d] -> logits [b, n, width]
    ids: np.ndarray | None  # [width] int64 token ids of the columns; None: the full vocabulary (column = id)
    vocab: int  # the full vocabulary's size

    def tokens(self, columns: np.ndarray) -> np.ndarray:
        """Token ids of logits columns [b] (an index into `ids`, or the id itself)."""
        return columns if self.ids is None else self.ids[columns]

    def full(self, probs: np.ndarray) -> np.ndarray:
        """A draft distribution over the columns [b, width] as one over the vocabulary [b, vocab] (0 elsewhere)."""
        if self.ids is None:
            return probs
        out = np.zeros((probs.shape[0], self.vocab), dtype=probs.dtype)
        out[:, self.ids] = probs
        return out


def cost_ratio(rt, head: DraftHead) -> float:
    """Weight bytes a draft step reads (the shadow graph and this draft head) over those of a base_shadow step: the
    adaptive draft length's cost model (decode is memory-bound). Counted from the graphs' initializers
    (bench/weights.py), not the files' sizes: an embedding table feeding only a Gather reads one row per token (the
    tied 113 MB table of SmolLM2 made the file-size estimate 0.385 of a step where a draft token measures 0.12-0.2),
    and the head is the draft head's width. Read once per runtime and head."""
    with _LOCK:
        ratios = _RATIOS.setdefault(rt, {})
        if head.session.name not in ratios:
            from shadow_edge.bench.weights import weight_bytes  # torch-free; imported here: bench imports the runtime

            manifest = rt.manifest
            files = {g: rt.art_dir / rt.twins.get(g, manifest.graphs[g]).file for g in manifest.graphs}
            draft = (manifest.modes[MODE_SHADOW_ONLY][ROLE_SHADOW], head.session.name)
            with artifact_lock.shared(rt.art_dir):
                ratios[head.session.name] = (weight_bytes([files[g] for g in draft]) /
                                             weight_bytes([files[g] for g in manifest.modes[MODE_BASE_SHADOW].values()]))
        return ratios[head.session.name]


def draft_head(rt, full_vocab: bool = False) -> DraftHead:
    """`rt`'s draft head: graph `draft_head` with its ids when the artifact has one (and not `full_vocab`), else
    the shadow_only head over the whole vocabulary."""
    if full_vocab or not rt.manifest.draft_vocab:
        return DraftHead(rt.pipeline(MODE_SHADOW_ONLY).head, None, rt.vocab_size)
    with _LOCK:
        ids = _IDS.get(rt)
        if ids is None:
            ids = _IDS[rt] = read_draft_ids(rt.art_dir, rt.manifest)
    return DraftHead(rt.graph(GRAPH_DRAFT_HEAD), ids, rt.vocab_size)


def draft_graph(rt, head: DraftHead):
    """The merged single-session graph of a greedy draft step with `head` (the shadow, the head and its ArgMax, whose
    `next_token` is a vocabulary id): `step_draft.onnx` for the reduced draft head, shadow_only's step graph for the
    full one; None where the artifact has none (older exports) or `rt` steps the split graphs."""
    if head.ids is None:
        return rt.step_graph(MODE_SHADOW_ONLY)
    return rt.step_graph(STEP_DRAFT, stacks_of=MODE_SHADOW_ONLY, width=len(head.ids))


def read_draft_ids(art_dir, manifest) -> np.ndarray:
    """The token ids of `manifest.draft_vocab.file` [N] int64, checked: N distinct ids in [0, vocab), ascending."""
    section, vocab = manifest.draft_vocab, int(manifest.model["vocab_size"])
    path = member_path(art_dir, section["file"])
    redo = "re-export the artifact with --draft-vocab (or restore the file)"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable ({e}); {redo}") from None
    ids = raw.get("token_ids") if isinstance(raw, dict) else None
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ArtifactError(f"{path}: field `token_ids` must be a list of integers; {redo}")
    arr = np.asarray(ids, dtype=np.int64)
    if len(arr) != section["size"]:
        raise ArtifactError(f"{path}: holds {len(arr)} token ids, but manifest draft_vocab.size is "
                            f"{section['size']}; {redo}")
    if len(arr) and (arr.min() < 0 or arr.max() >= vocab or np.any(np.diff(arr) <= 0)):
        raise ArtifactError(f"{path}: token_ids must be distinct ascending ids in [0, {vocab}) (model.vocab_size); "
                            f"{redo}")
    return arr
