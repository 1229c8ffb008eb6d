"""Is a mode's perplexity a matter of scale? One temperature on its logits, fit on some chats, scored on others.

    python -m benchmarks.experiments.logit_temperature ART --fit FIT.jsonl --heldout HELDOUT.jsonl \
        [--fit-chats 200] [--heldout-chats 48] [--modes shadow_only,base_shadow]

Teacher-forced logits of the assistant tokens (`eval --chat`'s scoring: `chat_rows`), one chat per forward. The
temperature T minimizing the fit chats' cross-entropy (a grid from 0.5 to 2 in steps of 0.01) is applied to the
held-out chats' logits. T divides the logits, so argmaxes (greedy output, agreement, acceptance) do not change; a T
far from 1 that lowers held-out cross-entropy would be a calibration a deployment could fold into the head's scale.
Never fit on the held-out chats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shadow_edge.errors import ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.chat_eval import chat_rows
from shadow_edge.runtime.sampling import chosen_logprobs

TEMPERATURES = np.round(np.arange(0.5, 2.0001, 0.01), 2)


def assistant_logits(rt, path: Path, chats: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, V] predicting each assistant token, the tokens [n]) over the first `chats` chats of `path`."""
    logits, targets = [], []
    for ids, scored in chat_rows(rt, path, chats):
        at = np.flatnonzero(scored)
        logits.append(rt.forward(ids[None], np.ones((1, len(ids)), np.int64), mode=mode)[0, at - 1])
        targets.append(ids[at])
    return np.concatenate(logits), np.concatenate(targets)


def cross_entropy(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    return float(-np.mean(chosen_logprobs(logits.astype(np.float64) / temperature, targets)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--fit", type=Path, required=True, help="chat JSONL the temperature is fit on")
    p.add_argument("--heldout", type=Path, required=True, help="chat JSONL it is scored on")
    p.add_argument("--fit-chats", type=int, default=200)
    p.add_argument("--heldout-chats", type=int, default=48)
    p.add_argument("--modes", default="shadow_only,base_shadow")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    rt = ShadowRuntime.load(args.artifact, threads=args.threads)
    print("| mode | fit tokens | T | fit cross-entropy at 1 / T | held-out perplexity at 1 / T |")
    print("|---|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        fit = assistant_logits(rt, args.fit, args.fit_chats, mode)
        held = assistant_logits(rt, args.heldout, args.heldout_chats, mode)
        losses = [cross_entropy(*fit, t) for t in TEMPERATURES]
        best = float(TEMPERATURES[int(np.argmin(losses))])
        print(f"| {mode} | {len(fit[1])} | {best:.2f} | {cross_entropy(*fit, 1.0):.4f} / {min(losses):.4f} | "
              f"{np.exp(cross_entropy(*held, 1.0)):.3f} / {np.exp(cross_entropy(*held, best)):.3f} |")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ShadowEdgeError as e:  # a missing artifact or chat file, a mode the artifact lacks: one line
        raise SystemExit(f"error: {e}") from None
