"""Sequence-classification heads: a label head per mode on the pooled last real token.

Both trainers classify with a Linear head on the hidden state of each row's last real
(non-padding) token: `base_shadow` applies the base model's `score` (or its trained copy) to
the final-normed base hidden, `shadow_only` applies the shadow's own copy to the shadow state
(shadow-peft: `classifier_head` / `shadow_classifier_head`; peft: `modules_to_save` score /
`shadow_head`). A classification spec carries these heads instead of the vocabulary heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shadow_edge.errors import MismatchError

# Where a HF *ForSequenceClassification model keeps its head (Llama family: `score`).
HEAD_NAMES = ("score", "classifier")


@dataclass
class ClassifierHeads:
    """The label heads of both modes and the label names."""

    weight: torch.Tensor  # [labels, hidden]  base_shadow
    shadow_weight: torch.Tensor  # [labels, hidden]  shadow_only; the same object as `weight` when equal
    id2label: tuple[str, ...]  # label names by id
    bias: torch.Tensor | None = None  # [labels]
    shadow_bias: torch.Tensor | None = None  # [labels]

    @property
    def num_labels(self) -> int:
        return int(self.weight.shape[0])

    def for_mode(self, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (self.shadow_weight, self.shadow_bias) if mode == "shadow_only" else (self.weight, self.bias)

    def validate(self, hidden: int) -> None:
        n = self.num_labels
        expect = {"weight": (n, hidden), "shadow_weight": (n, hidden), "bias": (n,), "shadow_bias": (n,)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise MismatchError(f"classifier {name}: shape {tuple(t.shape)}, expected {shape} "
                                    f"({n} labels, hidden size {hidden})")
        if len(self.id2label) != n:
            raise MismatchError(f"classifier: {len(self.id2label)} label names for {n} labels; fix id2label in the "
                                "base model's config.json")


def label_names(raw_config: dict, num_labels: int) -> tuple[str, ...]:
    """id2label of a HF config ({"0": "neg", ...}); LABEL_i where it says nothing."""
    given = raw_config.get("id2label") or {}
    return tuple(str(given.get(str(i), given.get(i, f"LABEL_{i}"))) for i in range(num_labels))


def pool_last_real(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """x [b, t, ...] at each row's last real position (left or right padding) -> [b, ...]."""
    pos = torch.arange(attention_mask.shape[-1])
    last = (attention_mask.ne(0) * pos).argmax(-1)  # [b]
    return x[torch.arange(x.shape[0]), last]
