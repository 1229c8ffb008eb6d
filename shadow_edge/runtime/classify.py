"""Sequence classification with a classifier artifact: label ids, probabilities, label names. No torch.

An artifact exported from a sequence-classification adapter (shadow-peft's
ShadowForSequenceClassification, or PEFT Shadow with task_type SEQ_CLS) has label heads
(`classifier`, `shadow_classifier`) where a causal LM has vocabulary heads. Prompts are
left-padded into batches, so each row's last real token sits in the last column: one full
pass per batch (empty KV caches sized to the batch) and the head on that column only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shadow_edge.errors import InputError
from shadow_edge.runtime.decode_state import DecodeState

TASK = "seq_cls"  # manifest model.task of classifier artifacts


@dataclass(frozen=True)
class ClassificationResult:
    """One input gives flat fields (`label_id: int`, `probabilities: [labels]`); a batch one entry per input."""

    label_ids: int | list[int]  # argmax label per input
    labels: str | list[str]  # their names (manifest model.id2label)
    probabilities: np.ndarray  # [labels] or [b, labels] float32, softmax of the label logits
    mode: str
    ms_per_sequence: float  # wall time of the passes / inputs (tokenization excluded)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "label_ids": self.label_ids, "labels": self.labels,
                "probabilities": self.probabilities.tolist(), "ms_per_sequence": self.ms_per_sequence}


def check_task(manifest, wanted: str) -> None:
    """Refuse generation on a classifier artifact and classification on a causal LM, naming the fix."""
    task = manifest.model.get("task", "causal_lm")
    if task == TASK and wanted != TASK:
        raise InputError("this artifact is a sequence classifier (manifest model.task seq_cls): it has label heads, "
                         "not a vocabulary; use ShadowRuntime.classify / `shadow-edge classify`")
    if task != TASK and wanted == TASK:
        raise InputError(f"this artifact is a {task} model, not a sequence classifier; export a classification "
                         "adapter (ShadowForSequenceClassification or PEFT task_type SEQ_CLS) to classify")


def classify(rt, texts_or_ids, mode: str = "base_shadow", batch_size: int = 16,
             adapter: str | None = None) -> ClassificationResult:
    """Classify one text / id list, or a list of them, in `mode` (shadow_only or base_shadow), with the
    classifier adapter pack loaded as `adapter` if given (its shadow, injection/update and label heads)."""
    check_task(rt.manifest, TASK)
    rt._check_graph_mode(mode)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size is {batch_size!r}; it must be an integer >= 1")
    batch = rt.encode(texts_or_ids)  # checked, left-padded [b, t]
    logits = []
    with rt.using(adapter):
        pipe = rt.pipeline(mode, adapter)
        started = time.perf_counter()
        for lo in range(0, batch.input_ids.shape[0], batch_size):
            ids, mask = batch.input_ids[lo:lo + batch_size], batch.attention_mask[lo:lo + batch_size]
            width = int(mask.sum(1).max())  # drop columns that are padding in every row of this chunk
            ids, mask = ids[:, -width:], mask[:, -width:]
            state = DecodeState(pipe, ids.shape[0], width)
            logits.append(state.prefill(ids, mask))  # [chunk, labels]: the last column is every row's last real token
        elapsed_ms = (time.perf_counter() - started) * 1e3
    z = np.concatenate(logits).astype(np.float64)  # [b, labels]
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    ids = z.argmax(-1).tolist()
    names = list(rt.manifest.model["id2label"])
    result = ClassificationResult(ids, [names[i] for i in ids], probs, mode, elapsed_ms / len(ids))
    if batch.single:
        result = ClassificationResult(ids[0], names[ids[0]], probs[0], mode, result.ms_per_sequence)
    return result
