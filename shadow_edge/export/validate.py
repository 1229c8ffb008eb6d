"""Validation of exported graphs against the reference PyTorch model, in onnxruntime.

Scenarios cover batch 1 and 2 (left padding), prompt lengths 1 and > 1, and a prefill
followed by decode steps that feed each graph's `present` back as `past`. Each output is
compared on real (non-padding) positions only; every output, padding rows included, must be
finite. The error allowed is `atol * max(1, max|reference|)` per output name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from shadow_edge import io_spec
from shadow_edge.core.model import KV, ShadowModel, StepInputs
from shadow_edge.errors import ExportError
from shadow_edge.runtime.session import session_options

# (prompt lengths per batch row, decode steps); shorter rows are left-padded.
SCENARIOS = (((1,), 3), ((6,), 3), ((6, 3), 3))


@dataclass
class _Worst:
    err: float = 0.0
    scale: float = 0.0

    def add(self, ours: np.ndarray, ref: np.ndarray) -> None:
        self.err = max(self.err, float(np.abs(ours - ref).max(initial=0.0)))
        self.scale = max(self.scale, float(np.abs(ref).max(initial=0.0)))


def _session(path: Path, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def _kv_feed(kv: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {io_spec.past_name(i // 2, "key" if i % 2 == 0 else "value"): a for i, a in enumerate(kv)}


def _empty_kv(batch: int, layers: int, kv_heads: int, head_dim: int) -> list[np.ndarray]:
    return [np.zeros((batch, kv_heads, 0, head_dim), np.float32) for _ in range(2 * layers)]


def _flat(kv: KV) -> list[np.ndarray]:
    return [t.numpy() for pair in kv for t in pair]


def validate_graphs(art_dir: Path, model: ShadowModel, graphs: dict[str, str], atol: float = 1e-4,
                    threads: int = 2, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run every graph in `graphs` (name -> file) against `model`; raise ExportError on a miss."""
    spec = model.spec
    sessions = {name: _session(art_dir / f, threads) for name, f in graphs.items()}
    heads = {n: t for n, t in ((io_spec.GRAPH_LM_HEAD, spec.lm_head),
                               (io_spec.GRAPH_SHADOW_LM_HEAD, spec.shadow_lm_head)) if n in sessions}
    worst: dict[str, _Worst] = {}
    nonfinite: list[str] = []
    gen = torch.Generator().manual_seed(0)
    for lengths, steps in SCENARIOS:
        progress(f"validating batch {len(lengths)}, prompt {max(lengths)}, {steps} decode steps")
        total = max(lengths) + steps
        ids = torch.randint(0, spec.vocab_size, (len(lengths), total), generator=gen)
        mask = torch.ones_like(ids)
        for r, n in enumerate(lengths):
            mask[r, : max(lengths) - n] = 0
        full = StepInputs.full(ids, mask)
        stacks = {"shadow": (io_spec.GRAPH_SHADOW, spec.shadow.config),
                  "base": (io_spec.GRAPH_BACKBONE, spec.base.config),
                  "plain": (io_spec.GRAPH_BACKBONE_PLAIN, spec.base.config)}
        ort_kv = {k: _empty_kv(len(lengths), c.num_layers, c.num_kv_heads, c.head_dim)
                  for k, (g, c) in stacks.items() if g in sessions}
        ref_kv: dict[str, KV | None] = {k: None for k in ort_kv}
        start = 0
        for end in [max(lengths)] + list(range(max(lengths) + 1, total + 1)):
            step = StepInputs(full.input_ids[:, start:end], full.attention_mask[:, :end], full.position_ids[:, start:end])
            real = step.attention_mask[:, start:end].bool().numpy()  # [b, t]
            kv_real = step.attention_mask.bool().numpy()  # [b, T]
            feed = {"input_ids": step.input_ids.numpy(), "attention_mask": step.attention_mask.numpy(),
                    "position_ids": step.position_ids.numpy()}
            ref_s, ref_kv["shadow"] = model.shadow_state(step, ref_kv["shadow"])
            outs = _run(sessions[io_spec.GRAPH_SHADOW], {**feed, **_kv_feed(ort_kv["shadow"])})
            ort_kv["shadow"] = _check(outs, {io_spec.SHADOW_HIDDEN: ref_s}, ref_kv["shadow"], real, kv_real, worst, nonfinite,
                                      prefix="shadow.")
            hidden = {"shadow": (outs[io_spec.SHADOW_HIDDEN], ref_s)}
            for key, adapter in (("base", True), ("plain", False)):
                if key not in ort_kv:
                    continue
                ref_h, ref_kv[key] = model.backbone(step, ref_s if adapter else None, ref_kv[key])
                extra = {io_spec.SHADOW_HIDDEN: outs[io_spec.SHADOW_HIDDEN]} if adapter else {}
                b_outs = _run(sessions[stacks[key][0]], {**feed, **extra, **_kv_feed(ort_kv[key])})
                ort_kv[key] = _check(b_outs, {io_spec.HIDDEN: ref_h}, ref_kv[key], real, kv_real, worst, nonfinite,
                                     prefix=f"{stacks[key][0]}.")
                hidden[key] = (b_outs[io_spec.HIDDEN], ref_h)
            for name, weight in heads.items():
                for key, (ours, ref) in hidden.items():
                    logits = _run(sessions[name], {io_spec.HIDDEN: ours})["logits"]
                    _compare(f"{name}.logits", logits, torch.nn.functional.linear(ref, weight).numpy(), real,
                             worst, nonfinite)
            start = end
    report = {name: {"max_abs_err": w.err, "ref_max_abs": w.scale, "allowed": atol * max(1.0, w.scale)}
              for name, w in sorted(worst.items())}
    if nonfinite:
        raise ExportError(f"validation: non-finite values in outputs {sorted(set(nonfinite))[:5]} "
                          "(padding rows must stay finite); this is an exporter bug, please report it")
    misses = [f"{n}: max |error| {r['max_abs_err']:.3g} > allowed {r['allowed']:.3g}" for n, r in report.items()
              if r["max_abs_err"] > r["allowed"]]
    if misses:
        raise ExportError("validation against PyTorch failed: " + "; ".join(misses[:4]) +
                          "; re-export with --no-validate only to debug")
    return {"atol": atol, "scenarios": [{"prompt_lengths": list(p), "decode_steps": s} for p, s in SCENARIOS],
            "outputs": report, "passed": True}


def _run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in wanted})))


def _check(outs: dict, refs: dict[str, torch.Tensor], ref_kv: KV, real: np.ndarray, kv_real: np.ndarray,
           worst: dict, nonfinite: list, prefix: str = "") -> list[np.ndarray]:
    """Compare named outputs on real positions and the present KV on real cache slots; return present."""
    for name, ref in refs.items():
        _compare(prefix + name, outs[name], ref.numpy(), real, worst, nonfinite)
    present = [outs[io_spec.present_name(i // 2, "key" if i % 2 == 0 else "value")] for i in range(2 * len(ref_kv))]
    for ours, ref in zip(present, _flat(ref_kv)):  # [b, kv, T, hd] -> [b, T, kv, hd] to mask slots
        _compare(prefix + "present", ours.transpose(0, 2, 1, 3), ref.transpose(0, 2, 1, 3), kv_real, worst,
                 nonfinite)
    return present


def _compare(name: str, ours: np.ndarray, ref: np.ndarray, real: np.ndarray | None, worst: dict,
             nonfinite: list) -> None:
    if ours.shape != ref.shape:
        raise ExportError(f"validation: output {name} has shape {ours.shape}, PyTorch gives {ref.shape}")
    if not np.isfinite(ours).all():
        nonfinite.append(name)
    if real is not None:  # [b, t] mask over the sequence axis of [b, t, ...] outputs
        ours, ref = ours[real], ref[real]
    worst.setdefault(name, _Worst()).add(ours, ref)
