"""Validation of exported graphs against the reference PyTorch model, through the runtime's own path.

Each mode of the manifest's mode map runs as the runtime runs it: the runtime's
`GraphSession`s (same session options, prepacking, I/O checks), its `DecodeState` (the prompt
through `advance`, each new token through the bound `step` a generation runs) and its in-place
`KVCache` (past and present bound to one preallocated buffer, grown on demand).
Scenarios cover batch 1 and 2 (left padding), prompt lengths 1 and > 1, a prefill followed
by decode steps, and caches that are exactly full, roomier than needed, or must grow.

Compared per mode: the logits of every real (non-padding) position, and each KV stack's
cache contents on real slots. Every logit, padding rows included, must be finite. The error
allowed is `atol * max(1, max|reference|)` per reported name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shadow_edge import io_spec
from shadow_edge.core.model import KV, ShadowModel, StepInputs
from shadow_edge.errors import ExportError
from shadow_edge.export.validate_arithmetic import RelativeError, add_cache_error, arithmetic_report
from shadow_edge.manifest import GraphEntry
from shadow_edge.manifest_schema import METHOD_FULL
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.generate import Pipeline
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, prepack_weights


@dataclass(frozen=True)
class Scenario:
    """One validation run: left-padded prompts of these lengths, then `decode_steps` single tokens."""

    prompt_lengths: tuple[int, ...]
    decode_steps: int
    spare: int  # cache capacity beyond the prompt; < decode_steps makes the runtime grow the buffers

    def inputs(self, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ids [b, prompt + decode_steps] and their left-padding mask [b, prompt + decode_steps]."""
        longest = max(self.prompt_lengths)
        ids = torch.randint(0, vocab, (len(self.prompt_lengths), longest + self.decode_steps), generator=gen)
        mask = torch.ones_like(ids)
        for r, n in enumerate(self.prompt_lengths):
            mask[r, : longest - n] = 0
        return ids, mask

    def to_dict(self) -> dict:
        return {"prompt_lengths": list(self.prompt_lengths), "decode_steps": self.decode_steps,
                "cache_capacity": max(self.prompt_lengths) + self.spare}


SCENARIOS = (Scenario((1,), 3, 0), Scenario((6,), 3, 8), Scenario((6, 3), 3, 3))


@dataclass
class Worst:
    err: float = 0.0
    scale: float = 0.0

    def add(self, ours: np.ndarray, ref: np.ndarray) -> None:
        self.err = max(self.err, float(np.abs(ours - ref).max(initial=0.0)))
        self.scale = max(self.scale, float(np.abs(ref).max(initial=0.0)))


class Reference:
    """The PyTorch reference of one mode: logits and the KV of each stack, role by role."""

    def __init__(self, model: ShadowModel, mode: str, roles: dict[str, str]):
        self.model, self.roles = model, roles
        self.mode = mode
        self.kv: dict[str, KV | None] = {r: None for r in io_spec.KV_ROLES if r in roles}

    def step(self, step: StepInputs) -> torch.Tensor:
        hidden = None
        if io_spec.ROLE_SHADOW in self.roles:
            hidden, self.kv[io_spec.ROLE_SHADOW] = self.model.shadow_state(step, self.kv[io_spec.ROLE_SHADOW])
        if io_spec.ROLE_BACKBONE in self.roles:
            hidden, self.kv[io_spec.ROLE_BACKBONE] = self.model.backbone(step, hidden, self.kv[io_spec.ROLE_BACKBONE])
        return self.model.logits(hidden, self.mode)  # [b, t, V or labels]


def validate_graphs(art_dir: Path, model: ShadowModel, graphs: dict[str, GraphEntry],
                    modes: dict[str, dict[str, str]], quantization: str = "none", atol: float = 1e-4,
                    threads: int = 2, progress: Callable[[str], None] = lambda s: None,
                    int8_graphs: dict[str, GraphEntry] | None = None) -> dict:
    """Run every mode of `modes` (mode -> role -> graph) with the runtime against `model`; raise on a miss.
    `int8_graphs`: `graphs`' int8-arithmetic originals (`graphs` being their float32 twins), run beside them
    in the same pass and bounded against them (export/validate_arithmetic.py)."""
    sessions = open_sessions(art_dir, graphs, quantization, threads)
    int8 = open_sessions(art_dir, int8_graphs, quantization, threads) if int8_graphs else None
    worst: dict[str, Worst] = {}
    arithmetic: dict[str, RelativeError] = {}
    nonfinite: list[str] = []
    for mode, roles in modes.items():
        pipes = [mode_pipeline(s, roles) for s in (sessions, int8) if s is not None]
        gen = torch.Generator().manual_seed(0)
        for sc in SCENARIOS:
            progress(f"validating {mode}: batch {len(sc.prompt_lengths)}, prompt {max(sc.prompt_lengths)}, "
                     f"{sc.decode_steps} decode steps" + (" (float32 and int8 arithmetic)" if int8 else ""))
            _run_scenario(model, mode, roles, pipes, sc, gen, worst, nonfinite, arithmetic)
    report = {"method": METHOD_FULL, "atol": atol, "path": "runtime", "scenarios": [sc.to_dict() for sc in SCENARIOS],
              "outputs": checked_report(dict(sorted(worst.items())), nonfinite, atol), "passed": True}
    if int8:
        report["int8_arithmetic"] = arithmetic_report(arithmetic)
    return report


def open_sessions(art_dir: Path, graphs: dict[str, GraphEntry], quantization: str,
                  threads: int) -> dict[str, GraphSession]:
    return {name: GraphSession(name, entry, art_dir, threads=threads, prepack=prepack_weights(entry, quantization))
            for name, entry in graphs.items()}


def mode_pipeline(sessions: dict[str, GraphSession], roles: dict[str, str]) -> Pipeline:
    return Pipeline(sessions[roles[io_spec.ROLE_HEAD]], *(sessions[roles[r]] if r in roles else None
                                                         for r in io_spec.KV_ROLES))


def checked_report(worst: dict[str, "Worst"], nonfinite: list[str], atol: float, where: str = "") -> dict:
    """name -> {max_abs_err, ref_max_abs, allowed} in `worst`'s order; raises ExportError on a non-finite value
    or a miss (`raise_misses`)."""
    report = make_report(worst, atol)
    raise_misses(report, nonfinite, where)
    return report


def make_report(worst: dict[str, "Worst"], atol: float) -> dict:
    return {name: {"max_abs_err": w.err, "ref_max_abs": w.scale, "allowed": atol * max(1.0, w.scale)}
            for name, w in worst.items()}


def raise_misses(report: dict, nonfinite: list[str], where: str = "") -> None:
    """ExportError naming the first four non-finite outputs or misses of `report` (`where`: what was compared,
    for the message, e.g. " (blocks)")."""
    if nonfinite:
        raise ExportError(f"validation{where}: non-finite values in outputs {list(dict.fromkeys(nonfinite))[:5]} "
                          "(padding rows must stay finite); every weight is finite (checked at load), so either the checkpoint's "
                          "values overflow float32 in this model (check its weights) or this is an exporter bug (please "
                          "report it)")
    misses = [f"{n}: max |error| {r['max_abs_err']:.3g} > allowed {r['allowed']:.3g}" for n, r in report.items()
              if r["max_abs_err"] > r["allowed"]]
    if misses:
        raise ExportError(f"validation against PyTorch failed{where}: " + "; ".join(misses[:4]) +
                          "; re-export with --no-validate only to debug")


def _run_scenario(model: ShadowModel, mode: str, roles: dict[str, str], pipes: list[Pipeline], sc: Scenario,
                  gen: torch.Generator, worst: dict, nonfinite: list, arithmetic: dict) -> None:
    """`pipes[0]` against the reference; `pipes[1]`, when given, against `pipes[0]` (relative errors)."""
    ids, mask = sc.inputs(model.spec.vocab_size, gen)
    longest, total = max(sc.prompt_lengths), ids.shape[1]
    full = StepInputs.full(ids, mask)
    ref = Reference(model, mode, roles)
    states = [DecodeState(p, ids.shape[0], longest + sc.spare) for p in pipes]  # the decode state users run
    kv_graphs = [roles[r] for r in io_spec.KV_ROLES if r in roles]  # the order of pipe.stacks / caches
    start = 0
    for end in [longest] + list(range(longest + 1, total + 1)):
        step = StepInputs(full.input_ids[:, start:end], full.attention_mask[:, :end], full.position_ids[:, start:end])
        logits = [run_step(state, step, start, end) for state in states]  # [b, t, V] each
        ref_logits = ref.step(step).numpy()
        real = step.attention_mask[:, start:end].bool().numpy()
        compare(f"{mode}.logits", logits[0], ref_logits, real, worst, nonfinite)
        kv_real = step.attention_mask.bool().numpy()  # [b, T]
        for graph, cache, role in zip(kv_graphs, states[0].caches, (r for r in io_spec.KV_ROLES if r in roles)):
            compare_cache(f"{mode}.{graph}.present", cache, ref.kv[role], kv_real, worst, nonfinite)
        if len(states) > 1:
            arithmetic.setdefault(f"{mode}.logits", RelativeError()).add(logits[1][real], logits[0][real])
            for graph, exact, ours in zip(kv_graphs, states[0].caches, states[1].caches):
                add_cache_error(arithmetic.setdefault(f"{mode}.{graph}.present", RelativeError()), ours, exact,
                                kv_real)
        start = end


def run_step(state: DecodeState, step: StepInputs, start: int, end: int) -> np.ndarray:
    """The runtime's logits [b, end - start, V] of one scenario step: the prompt through `advance` (every
    position), one new token per row through the bound `step` (copied: its buffer is reused)."""
    mask = step.attention_mask[:, start:end].numpy()
    if end - start > 1 or state.length == 0:
        return state.advance(step.input_ids.numpy(), mask, last_only=False, positions=step.position_ids.numpy())
    return state.step(step.input_ids[:, 0].numpy(), mask[:, 0])[:, None].copy()


def compare_cache(name: str, cache: KVCache, ref_kv: KV, kv_real: np.ndarray, worst: dict,
                   nonfinite: list) -> None:
    """The cache's first `length` slots against the reference KV, on real slots only."""
    ref_flat = [t.numpy() for pair in ref_kv for t in pair]  # key, value per layer: [b, kv, T, hd]
    if len(ref_flat) != len(cache.arrays) or cache.length != ref_flat[0].shape[2]:
        raise ExportError(f"validation: {name} holds {len(cache.arrays)} buffers of {cache.length} positions, "
                          f"PyTorch gives {len(ref_flat)} of {ref_flat[0].shape[2]}; exporter bug")
    for buf, r in zip(cache.arrays, ref_flat):  # [b, kv, T, hd] -> [b, T, kv, hd] to mask slots
        ours = buf[:, :, : cache.length]
        compare(name, ours.transpose(0, 2, 1, 3), r.transpose(0, 2, 1, 3), kv_real, worst, nonfinite)


def compare(name: str, ours: np.ndarray, ref: np.ndarray, real: np.ndarray, worst: dict, nonfinite: list) -> None:
    """Compare [b, t, ...] arrays on the rows where `real` [b, t] is set; any non-finite value is an error."""
    if ours.shape != ref.shape:
        raise ExportError(f"validation: output {name} has shape {ours.shape}, PyTorch gives {ref.shape}")
    if not np.isfinite(ours).all():
        nonfinite.append(name)
    worst.setdefault(name, Worst()).add(ours[real], ref[real])
