"""Errors of the head_dim 4 / 12 / 20 test cases (ONNX Attention fallback) against PyTorch and shadow-peft.

    python benchmarks/head_dim_errors.py [--out /tmp/head_dim_errors]

Builds the `HEAD_DIM_RECIPES` cases of tests/factories.py (shadow-peft adapters with every
weight random), exports each with validation on, and prints per case: the attention kind and
head_dim of each KV-cached graph, the worst validation error (runtime path vs the PyTorch
reference), the max |logits error| of a left-padded batch of 2 against shadow-peft in both
modes, and whether 10 greedy tokens equal `ShadowForCausalLM.generate`. Needs the dev extra.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factories import HEAD_DIM_RECIPES, make_case  # noqa: E402
from test_runtime_parity import MODES, left_pad, oracle_greedy, oracle_logits, random_ids  # noqa: E402

from shadow_edge.export import export_artifact  # noqa: E402
from shadow_edge.runtime import ShadowRuntime  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/head_dim_errors"))
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    for name in HEAD_DIM_RECIPES:
        case = make_case(args.out, name)
        art = args.out / f"{name}_art"
        m = export_artifact(case.base_dir, case.adapter_dir, art, case.shadow_model_dir, progress=lambda s: None)
        kinds = ", ".join(f"{g} head_dim {e.head_dim} {e.attention}" for g, e in m.graphs.items() if e.kv_layers)
        worst = max(r["max_abs_err"] for r in m.validation["outputs"].values())
        rt = ShadowRuntime.load(art)
        ids, mask = left_pad(random_ids(case.vocab_size, 2, 8, seed=2), (8, 5))
        prompts = [ids[0].tolist(), ids[1, 3:].tolist()]
        parts = []
        for mode in MODES:
            err = np.abs(rt.forward(ids, mask, mode=mode) - oracle_logits(case, mode, ids, mask))[mask.astype(bool)]
            same = rt.generate(prompts, mode=mode, max_new_tokens=10).token_ids == \
                oracle_greedy(case, mode, ids, mask, 10)
            parts.append(f"{mode} {err.max():.1e} (greedy {'equal' if same else 'DIFFER'})")
        print(f"{name}: {kinds}\n  validation worst {worst:.1e}; vs shadow-peft logits: {'; '.join(parts)}")


if __name__ == "__main__":
    main()
