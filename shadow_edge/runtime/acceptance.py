"""Speculative decoding's acceptance rules and its adaptive draft length. Pure numpy, explicit Generator.

Greedy: accept the longest prefix of the draft on which the target's argmax agrees, then
take the target's token at the first disagreement (or the bonus token after a full
match). Sampling (Leviathan et al. 2023, Chen et al. 2023): accept draft token d drawn
from q with probability min(1, p(d) / q(d)); at the first rejection draw from the
normalized residual max(0, p - q); after a full match draw the bonus token from p. Every
emitted token is then distributed exactly as p, the target's (shaped) distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def accept_greedy(drafts: np.ndarray, target_logits: np.ndarray) -> tuple[int, int]:
    """drafts [k] int; target_logits [k + 1, V]. Returns (drafts accepted n, the target's token after them)."""
    return accept_greedy_tokens(drafts, np.argmax(target_logits, axis=-1))


def accept_greedy_tokens(drafts: np.ndarray, targets: np.ndarray) -> tuple[int, int]:
    """drafts [k] int; targets [k + 1] the target's greedy token after each fed position (a graph's ArgMax).
    Returns (drafts accepted n, the target's token after them)."""
    n = 0
    while n < len(drafts) and drafts[n] == targets[n]:
        n += 1
    return n, int(targets[n])


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One token from probabilities p [V] (sums to ~1) by inverse CDF, never a zero-probability token."""
    cdf = np.cumsum(p)
    tok = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(p) - 1)
    return tok if p[tok] > 0 else int(np.argmax(p))


def accept_sampled(drafts: np.ndarray, p: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """drafts [k] drawn from q [k, V]; p [k + 1, V] the target's probabilities at the same positions.

    Returns (drafts accepted n, the next token: residual sample at the first rejection, or bonus from p[k]).
    """
    for j, d in enumerate(drafts):
        if rng.random() * q[j, d] < p[j, d]:  # u < p/q without dividing; q[j, d] > 0 as d was drawn from q
            continue
        residual = np.maximum(p[j] - q[j], 0.0)  # [V]
        return j, draw(residual if residual.sum() > 0 else p[j], rng)
    return len(drafts), draw(p[len(drafts)], rng)


@dataclass
class AdaptiveDraft:
    """Chooses the next round's draft length from the running acceptance rate (deterministic: no timings).

    Model: each draft token is accepted with probability `rate` (independently), so k drafts
    yield (1 - rate^(k+1)) / (1 - rate) tokens per verify pass; a round costs k draft steps
    of `cost_ratio` verify passes each, plus one verify pass (decode is memory-bound, so a
    verify over k + 1 positions costs about one decode step). The chosen k in 0..k_max
    maximizes tokens per cost; k = 0 is a plain base_shadow step, and while it wins a k = 1
    probe runs every `probe_every` rounds so that the rate keeps being measured.
    `rate` is an exponential moving average of per-draft-token acceptance (successes over
    trials: a round with n accepted of k counts n successes and one failure if n < k).
    """

    cost_ratio: float  # cost of one draft step / cost of one verify pass, > 0
    k_max: int = 8
    rate: float = 0.6  # prior acceptance rate, updated after every round
    smoothing: float = 0.3  # weight of the newest round in the moving average
    probe_every: int = 4
    _plain_rounds: int = field(default=0, repr=False)

    def tokens_per_cost(self, k: int) -> float:
        a = min(self.rate, 1 - 1e-9)
        return (1 - a ** (k + 1)) / (1 - a) / (1 + k * self.cost_ratio)

    def next_k(self) -> int:
        k = max(range(self.k_max + 1), key=self.tokens_per_cost)
        if k == 0:
            self._plain_rounds += 1
            if self._plain_rounds % self.probe_every == 0:
                return 1
        return k

    def update(self, accepted: int, trials: int) -> None:
        """After a round: `accepted` draft tokens over `trials` accept/reject decisions (summed over rows)."""
        if trials > 0:
            self.rate += self.smoothing * (accepted / trials - self.rate)
