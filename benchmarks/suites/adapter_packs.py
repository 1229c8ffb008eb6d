"""Many adapters, one backbone: memory, switch time and decode speed of a base artifact with N adapter packs.

    python -m benchmarks.suites.adapter_packs --preset small --packs 4 --root /work/cache --out /tmp/packs-small

Builds (or reuses) the preset's base model and N randomized adapters of the same shape,
exports the base artifact (--as-base, from adapter 0), one pack per adapter and adapter 0 as
a plain full artifact. Then, each in a fresh process (RSS after loading and one generation):
the full artifact, the base + 1 pack, the base + N packs. In one process, side by side and
interleaved rep by rep (their order rotated): decode tok/s of the full artifact, the base artifact with its own
adapter and the base with a pack active (same adapter as the full artifact), with the median
and interquartile range of the per-rep ratio pack / full artifact (paired: the same rep); then
the switch cost: the latency of a 1-token request that switches adapter minus that of one that
keeps it, paired rep by rep (alternating order). Medians printed as a markdown table.
Memory target (issue 13): RSS of the base + N packs <= (RSS of the full artifact + N x the pack's
bytes) x 1.1; each pack adds its bytes and its session's prepacked copy of its shadow weights.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.presets import PRESETS, build_preset
from benchmarks.lib.timing import run_rounds


def build(args) -> dict:
    import torch
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import AutoModelForCausalLM

    from shadow_edge.export import ExportOptions, export_artifact, export_pack

    base_dir, adapter0 = build_preset(args.preset, args.root)
    out, quiet = args.out, dict(progress=lambda m: None)
    adapters = [adapter0]
    for i in range(1, args.packs):
        d = out / f"adapter{i}"
        if not d.exists():
            base = AutoModelForCausalLM.from_pretrained(base_dir)
            model = get_shadow_model(base, ShadowConfig(**PRESETS[args.preset][1]))
            torch.manual_seed(i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.startswith("shadow_") and "norm" not in name:
                        p.normal_(0.0, 0.02)
            ShadowForCausalLM(model).save_pretrained(d)
        adapters.append(d)
    q = ExportOptions(quantize=args.quantize, validate=False)
    arts = {"full": out / "full", "base": out / "base_art"}
    if not arts["full"].exists():
        export_artifact(base_dir, adapter0, arts["full"], options=q, **quiet)
    if not arts["base"].exists():
        export_artifact(base_dir, adapter0, arts["base"],
                        options=ExportOptions(quantize=args.quantize, validate=False, as_base=True), **quiet)
    packs = {}
    for i, a in enumerate(adapters):
        packs[f"a{i}"] = out / f"pack{i}"
        if not packs[f"a{i}"].exists():
            export_pack(base_dir, a, packs[f"a{i}"], arts["base"], **quiet)
    return {"full": str(arts["full"]), "base": str(arts["base"]), "packs": {k: str(v) for k, v in packs.items()}}


RSS_CHILD = """
import json, sys, psutil
from shadow_edge.runtime import ShadowRuntime
art, packs, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
rt = ShadowRuntime.load(art, threads=threads, adapters=packs)
for a in list(packs) or [None]:
    for mode in ("shadow_only", "base_shadow"):
        rt.generate([[5, 6, 7, 8]], mode=mode, adapter=a, max_new_tokens=4)
print(json.dumps({"rss_mb": psutil.Process().memory_info().rss / 2**20}))
"""


def rss(art: str, packs: dict, threads: int) -> float:
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, art, json.dumps(packs), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--packs", type=int, default=4)
    p.add_argument("--quantize", default="none", choices=("none", "int8", "int4"))
    p.add_argument("--root", type=Path, default=Path("/work/cache"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--switch-reps", type=int, default=30, help="paired same/switched requests for the switch cost")
    p.add_argument("--build-only", action="store_true",
                   help="only export (run it under `flock /work/bigmem.lock` for W1), measure in a later call")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = build(args)
    if args.build_only:
        print(json.dumps(paths, indent=2))
        return
    packs = paths["packs"]
    first = dict(list(packs.items())[:1])
    pack_mb = {k: sum(f.stat().st_size for f in Path(v).iterdir()) / 2**20 for k, v in packs.items()}
    mem = {"full artifact": rss(paths["full"], {}, args.threads),
           "base + 1 pack": rss(paths["base"], first, args.threads),
           f"base + {len(packs)} packs": rss(paths["base"], packs, args.threads)}

    from shadow_edge.runtime import ShadowRuntime

    full = ShadowRuntime.load(paths["full"], threads=args.threads)
    rt = ShadowRuntime.load(paths["base"], threads=args.threads, adapters=packs)
    prompt = [[5 + i for i in range(16)]]
    names = list(packs)
    variants = {"full artifact": (full, None), "base, own adapter": (rt, None), "base + pack": (rt, names[0])}
    modes = ("shadow_only", "base_shadow")

    def contestant(runtime, adapter):  # one run: each mode once; its decode tok/s per mode
        return lambda: {mode: runtime.generate(prompt, mode=mode, adapter=adapter,
                                               max_new_tokens=args.tokens).timings.tokens_per_s for mode in modes}

    # 1 warm-up round, then the variants interleaved rep by rep, their order rotated
    result = run_rounds({k: contestant(*v) for k, v in variants.items()}, reps=args.reps, warmup=1)
    tok_s = {m: {k: [s.value[m] for s in result.samples[k]] for k in variants} for m in modes}
    switch = switch_cost(rt, prompt, names, args.switch_reps)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    print(f"preset {args.preset}, quantize {args.quantize}, {len(packs)} packs, threads {args.threads}, "
          f"reps {args.reps}, {args.tokens} new tokens, switch reps {args.switch_reps}")
    print("\n| measure | value |\n|---|---|")
    for k, v in mem.items():
        print(f"| RSS {k} | {v:.0f} MiB |")
    print(f"| pack size on disk (each) | {', '.join(f'{v:.2f}' for v in pack_mb.values())} MiB |")
    budget = mem["full artifact"] + sum(pack_mb.values())
    many = mem[f"base + {len(packs)} packs"]
    print(f"| RSS base + {len(packs)} packs vs target (full artifact + {len(packs)} x pack bytes, +10%) | {many:.0f} vs "
          f"{budget * 1.1:.0f} MiB ({100 * (many / budget - 1):+.1f}% over full + pack bytes) |")
    print(f"| RSS added per pack after the first (pack bytes + its prepacked shadow copy) | "
          f"{(many - mem['base + 1 pack']) / max(1, len(packs) - 1):.0f} MiB |")
    for mode, d in tok_s.items():
        f = med(d["full artifact"])
        cells = " / ".join(f"{med(v):.2f}" + ("" if k == "full artifact" else f" ({100 * (med(v) / f - 1):+.1f}%)")
                           for k, v in d.items())
        print(f"| {mode} decode tok/s: {' / '.join(variants)} | {cells} |")
        ratio = 100 * (np.array(d["base + pack"]) / np.array(d["full artifact"]) - 1)  # paired by rep
        print(f"| {mode}: base + pack vs full artifact, per-rep paired % difference: median [p25, p75] | "
              f"{med(ratio):+.1f}% [{np.percentile(ratio, 25):+.1f}, {np.percentile(ratio, 75):+.1f}] |")
    print(f"| 1-token request (16-token prompt): same adapter / switched adapter, medians | "
          f"{med(switch['same']):.2f} / {med(switch['switched']):.2f} ms |")
    print(f"| switch cost: median of paired (switched - same) differences [p25, p75] | "
          f"{med(switch['diff']):+.2f} ms [{np.percentile(switch['diff'], 25):+.2f}, "
          f"{np.percentile(switch['diff'], 75):+.2f}] |")


def switch_cost(rt, prompt, names: list[str], reps: int) -> dict[str, list[float]]:
    """Per rep, after a request with adapter A: one more request with A (same) and one with another adapter B
    (switched), in alternating order, each preceded by its own A request; the paired difference is the switch cost."""
    def timed(adapter: str) -> float:
        t0 = time.perf_counter()
        rt.generate(prompt, mode="base_shadow", adapter=adapter, max_new_tokens=1)
        return (time.perf_counter() - t0) * 1e3

    for name in names:  # each pack's pipeline and first runs at these shapes, before any timing
        rt.generate(prompt, mode="base_shadow", adapter=name, max_new_tokens=1)
    others = itertools.cycle(names[1:] or names[:1])  # each switched request goes to the next other pack

    def request(key: str):
        def run() -> float:
            rt.generate(prompt, mode="base_shadow", adapter=names[0], max_new_tokens=1)  # the previous request: A
            return timed(names[0] if key == "same" else next(others))
        return run

    # "same" and "switched" alternate which goes first (rotation of two); round 0 warms up
    result = run_rounds({"switched": request("switched"), "same": request("same")}, reps=reps, warmup=1)
    same = [s.value for s in result.samples["same"]]
    switched = [s.value for s in result.samples["switched"]]
    return {"same": same, "switched": switched, "diff": [b - a for a, b in zip(same, switched)]}

if __name__ == "__main__":
    main()
