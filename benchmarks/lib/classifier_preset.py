"""Build and export a random sequence classifier at a preset's dims, for `shadow-edge bench`.

    .venv/bin/python -m benchmarks.lib.classifier_preset --preset small --root /work/cache --out /tmp/cls-small
    .venv/bin/shadow-edge bench /tmp/cls-small --batch 8 --prompt-len 64 --threads 2

The base is a random `Qwen3ForSequenceClassification` with the preset's Qwen3 dims and 4
labels; the adapter a PEFT Shadow SEQ_CLS adapter (mirror shadow of 1 layer, r 16) with every
adapter weight and both label heads randomized. Built once under `--root` (reused when complete).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.lib.presets import PRESETS


def build(name: str, root: Path) -> tuple[Path, Path]:
    import torch
    from peft import ShadowConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    out = Path(root) / f"classifier-{name}"
    base_dir, adapter_dir = out / "base", out / "adapter"
    if (out / "COMPLETE").exists():
        return base_dir, adapter_dir
    torch.manual_seed(0)
    labels = {i: f"label_{i}" for i in range(4)}
    base = Qwen3ForSequenceClassification(Qwen3Config(**PRESETS[name][0], num_labels=4, id2label=labels,
                                                      pad_token_id=0, initializer_range=0.02)).eval()
    base.save_pretrained(base_dir)
    model = get_peft_model(base, ShadowConfig(task_type="SEQ_CLS", r=16))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "shadow_" in n or "modules_to_save" in n:
                p.copy_(0.02 * torch.randn_like(p) + (1.0 if "norm.weight" in n else 0.0))
    model.save_pretrained(adapter_dir)
    (out / "COMPLETE").touch()
    return base_dir, adapter_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--root", default="/work/cache", help="where the checkpoint is built once")
    p.add_argument("--out", required=True, help="artifact directory to export to (replaced)")
    args = p.parse_args()
    from shadow_edge.export import ExportOptions, export_artifact

    base, adapter = build(args.preset, Path(args.root))
    export_artifact(base, adapter, args.out, options=ExportOptions(force=True))


if __name__ == "__main__":
    main()
