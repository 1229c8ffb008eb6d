"""The cascade curve: for a sweep of thresholds, how many prompts the shadow answers and how often the answer holds.

Prompts are cut from the evaluated text at evenly spaced positions. Each is answered once
greedily by the runtime's own cascade with threshold 0 (the shadow answers every prompt,
and the runtime reports its confidence, so the escalation rule is the runtime's, not a
copy) and once by `base_shadow`. For a threshold t the cascade keeps the shadow's answer
when confidence >= t and escalates otherwise (the runtime's rule: escalate when
confidence < t); its answer agrees with the combined model when it was escalated or the
shadow's tokens equal base_shadow's (`agreement`; `token_agreement` counts equal positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CurvePoint:
    """One threshold of the cascade curve."""

    threshold: float
    shadow_share: float  # prompts answered by the shadow
    agreement: float  # cascade answer == base_shadow's greedy answer, token for token (all prompts)
    token_agreement: float  # mean share of answer positions where the cascade's token equals base_shadow's
    shadow_agreement: float | None  # `agreement` among the prompts the shadow answered (None: it answered none)


def prompt_rows(ids: np.ndarray, prompts: int, prompt_tokens: int) -> list[list[int]]:
    """`prompts` windows of `prompt_tokens` ids (fewer, shorter when the text is short), evenly spaced."""
    length = max(1, min(prompt_tokens, len(ids) - 1))
    starts = np.linspace(0, len(ids) - length - 1, num=min(prompts, len(ids) - length)).round().astype(int)
    return [ids[s:s + length].tolist() for s in sorted(set(starts.tolist()))]


def cascade_curve(rt, ids: np.ndarray, prompts: int, prompt_tokens: int, answer_tokens: int,
                  thresholds: tuple[float, ...]) -> list[CurvePoint]:
    """The curve over `thresholds` for prompts cut from `ids` [n] (greedy answers of `answer_tokens`)."""
    rows = prompt_rows(ids, prompts, prompt_tokens)
    answer_tokens = min(answer_tokens, rt.max_positions - len(rows[0]))
    shadow = rt.generate(rows, mode="cascade", max_new_tokens=answer_tokens, cascade_threshold=0.0)
    combined = rt.generate(rows, mode="base_shadow", max_new_tokens=answer_tokens)
    conf = np.asarray(shadow.confidence)  # [p]
    same = np.asarray([a == b for a, b in zip(shadow.token_ids, combined.token_ids)])  # [p]
    per_token = np.asarray([sum(x == y for x, y in zip(a, b)) / max(len(a), len(b), 1)
                            for a, b in zip(shadow.token_ids, combined.token_ids)])  # [p]
    points = []
    for t in sorted(thresholds):
        kept = conf >= t  # the runtime escalates when confidence < t
        points.append(CurvePoint(float(t), float(kept.mean()), float((~kept | same).mean()),
                                 float(np.where(kept, per_token, 1.0).mean()),
                                 float(same[kept].mean()) if kept.any() else None))
    return points
