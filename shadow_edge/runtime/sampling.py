"""Token selection from logits: greedy, temperature, top-k, top-p. Pure numpy, explicit Generator.

All functions take logits [batch, vocab] (float) and return token ids [batch] (int64).
Conventions follow transformers' logits processors: temperature first, then top-k, then
top-p (the smallest set of most likely tokens whose probability reaches top_p; the most
likely token is always kept).
"""

from __future__ import annotations

import numpy as np


def greedy(logits: np.ndarray) -> np.ndarray:
    """argmax per row (the first index on ties, like torch.argmax)."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-probabilities [batch, vocab], in float64 for stable confidences."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def chosen_logprobs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(token) [batch] under the unshaped distribution softmax(logits)."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=-1))
    return x[np.arange(x.shape[0]), tokens] - lse


def shaped_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 ) -> np.ndarray:
    """The sampling distribution [batch, vocab] (float64, rows sum to 1) after temperature/top-k/top-p."""
    x = logits.astype(np.float64) / max(float(temperature), 1e-8)
    vocab = x.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(x, vocab - top_k, axis=-1)[:, vocab - top_k][:, None]  # k-th largest per row
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")  # [b, V] most likely first
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly above each token
        keep_sorted = before < top_p  # the first token always has before == 0
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> np.ndarray:
    """Draw one token per row from `shaped_probs` with the given Generator (one uniform per row)."""
    p = shaped_probs(logits, temperature, top_k, top_p)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(p.shape[0])[:, None] * cdf[:, -1:]
    tokens = (cdf <= u).sum(axis=-1)  # first index whose cdf exceeds u
    # Guard against rounding landing on a zero-probability tail token.
    tokens = np.minimum(tokens, p.shape[-1] - 1)
    bad = p[np.arange(p.shape[0]), tokens] == 0
    if bad.any():
        tokens[bad] = np.argmax(p[bad], axis=-1)
    return tokens.astype(np.int64)


class Sampler:
    """Chooses the next tokens for one generation: greedy or seeded sampling, settings fixed up front."""

    def __init__(self, do_sample: bool, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None):
        self.greedy = not do_sample or temperature == 0
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if self.greedy:
            return greedy(logits)
        return sample(logits, self.rng, self.temperature, self.top_k, self.top_p)
