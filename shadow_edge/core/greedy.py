"""Greedy decoding with the reference PyTorch model: one prefill, then one KV-cached step per token.

The golden reference for the runtime's generation loop. Positions come from the attention
mask (left padding allowed); the mask grows by one column per generated token.
"""

from __future__ import annotations

import torch

from shadow_edge.core.model import ShadowModel, StepInputs


@torch.no_grad()
def greedy_generate(model: ShadowModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str,
                    max_new_tokens: int) -> torch.LongTensor:
    """New tokens only, [batch, max_new_tokens] int64 (no early stop at EOS)."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()  # [b, past + t]
    out = torch.empty(input_ids.shape[0], 0, dtype=torch.long)  # [b, generated]
    if max_new_tokens <= 0:
        return out
    logits, past = model.forward(StepInputs.full(input_ids, mask), mode, last_only=True)  # prefill
    while True:
        token = logits[:, -1].argmax(-1, keepdim=True)  # [b, 1]
        out = torch.cat((out, token), dim=1)
        if out.shape[1] == max_new_tokens:
            return out
        mask = torch.cat((mask, torch.ones_like(token)), dim=1)
        position = mask.sum(-1, keepdim=True) - 1  # [b, 1] real tokens before this one
        logits, past = model.forward(StepInputs(token, mask, position), mode, past=past, last_only=True)
