"""Real model sizes (issue 16): export, validate and run random-weight Qwen3 0.6B-8B checkpoints, with their memory.

For each model: build the checkpoint (benchmarks/lib/big_checkpoints.py: the public Qwen3 config,
bf16, sharded as HF ships it, written tensor by tensor), export it with the CLI for each
precision, then decode with each mode in a fresh process (benchmarks/suites/run_memory.py); with
--genai also build onnxruntime-genai's int4 model of the plain backbone with its own builder
and decode it. Every heavy step runs alone under `--lock` (default /work/bigmem.lock) and
within `--timeout` seconds. Recorded per step: wall time, peak RSS (the kernel's high-water
mark of the process, from wait4) and peak anonymous RSS (sampled every 0.2 s), artifact size,
the manifest's validation method and worst error, decode tok/s and peak RSS at run against
1.1 x weight bytes + KV cache. Artifacts are deleted after measuring (checkpoints too unless
--keep-checkpoints). Results go to --json after every step; a table goes to stdout.

examples:
  python -m benchmarks.suites.big_models --models qwen3-0.6b --precisions int4,fp32
  python -m benchmarks.suites.big_models --models qwen3-1.7b,qwen3-4b --precisions int4 --genai \\
      --scratch /work/scratch/big --json benchmarks/results/big_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.lib.artifacts import locked
from benchmarks.lib.big_checkpoints import QWEN3, build_checkpoint

REPO = Path(__file__).resolve().parents[2]
PRECISIONS = {"int4": "int4", "int8": "int8", "fp32": "none"}  # name -> --quantize
MODES = ("shadow_only", "base_shadow")


def say(msg: str) -> None:
    print(f"[big_models] {msg}", file=sys.stderr, flush=True)


def measured(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `cmd`; wall time, peak RSS (wait4's ru_maxrss), peak RssAnon (sampled), exit code, output tail."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    done, killed, peak_anon = threading.Event(), threading.Event(), [0]

    def sample() -> None:  # never waits on the child: wait4 below reaps it
        status = Path(f"/proc/{proc.pid}/status")
        while not done.wait(0.2):
            try:
                line = next(x for x in status.read_text().splitlines() if x.startswith("RssAnon:"))
                peak_anon[0] = max(peak_anon[0], int(line.split()[1]) * 1024)
            except (OSError, StopIteration):
                pass

    def kill() -> None:
        killed.set()
        proc.kill()

    out = {"stdout": [], "stderr": []}
    threads = [threading.Thread(target=sample, daemon=True)] + [
        threading.Thread(target=lambda s=s, k=k: out[k].extend(s), daemon=True)
        for s, k in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
    for t in threads:
        t.start()
    timer = threading.Timer(timeout, kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    return {"rc": proc.returncode, "timed_out": killed.is_set(), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss": usage.ru_maxrss * 1024, "peak_rss_anon": peak_anon[0],
            "stdout": "".join(out["stdout"]), "stderr_tail": "".join(out["stderr"]).strip().splitlines()[-3:]}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export(model: str, precision: str, base: Path, adapter: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "shadow_edge.cli", "export", "--base", str(base), "--adapter", str(adapter),
           "--out", str(out), "--force", "--quantize", PRECISIONS[precision], "--validation", args.validation]
    if precision != "fp32":
        cmd += ["--block-size", str(args.block_size)]
    say(f"{model} {precision}: {' '.join(cmd[1:])}")
    r = measured(cmd, args.timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    rec = {k: v for k, v in r.items() if k != "stdout"}
    if r["rc"] == 0:
        m = json.loads((out / "manifest.json").read_text())
        v = m["validation"]
        worst = max(x["max_abs_err"] / x["allowed"] for x in v["outputs"].values())
        blocks = [b for graph in v.get("blocks", {}).values() for b in graph.values()]
        rec.update(size_bytes=dir_bytes(out), validation_method=v.get("method", "full"),
                   validation_worst_logits_err=max(x["max_abs_err"] for k, x in v["outputs"].items()
                                                   if k.endswith("logits")),
                   validation_worst_of_allowed=worst,
                   validation_worst_block_err=max((b["max_abs_err"] for b in blocks), default=None),
                   validation_memory=v.get("memory"))
    return rec


def run(path: Path, mode: str | None, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.suites.run_memory", str(path),
           "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    cmd += ["--genai"] if mode is None else ["--mode", mode]
    r = measured(cmd, args.timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    if r["rc"] != 0:
        return {k: v for k, v in r.items() if k != "stdout"}
    return {**json.loads(r["stdout"].strip().splitlines()[-1]), "wall_s": r["wall_s"]}


def genai_build(model: str, base: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base), "-o", str(out),
           "-p", "int4", "-e", "cpu", "-c", str(out.parent / f".hf-cache-{model}")]
    say(f"{model} onnxruntime-genai int4: {' '.join(cmd[1:])}")
    r = measured(cmd, args.timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    shutil.rmtree(out.parent / f".hf-cache-{model}", ignore_errors=True)
    rec = {k: v for k, v in r.items() if k != "stdout"}
    if r["rc"] == 0:
        rec["size_bytes"] = dir_bytes(out)
    return rec


def key(precision: str, args) -> str:
    """The results key of a precision: int4, or int4-b128 for another quantization block size."""
    return precision if precision == "fp32" or args.block_size == 32 else f"{precision}-b{args.block_size}"


def bench_model(model: str, args, results: dict, save) -> None:
    rec = results.setdefault(model, {})
    t0 = time.perf_counter()
    base, adapter = build_checkpoint(model, args.scratch, say)
    rec.setdefault("checkpoint", {"build_s": round(time.perf_counter() - t0, 1), "bytes": dir_bytes(base),
                                  "files": sorted(p.name for p in base.glob("*.safetensors*"))})
    for precision in args.precisions:
        name = key(precision, args)
        out = args.scratch / f"{model}-{name}"
        with locked(args.lock):
            rec[name] = {"export": export(model, precision, base, adapter, out, args)}
            save()
            if rec[name]["export"]["rc"] == 0:
                for mode in MODES:
                    say(f"{model} {precision}: run {mode}")
                    rec[name][mode] = run(out, mode, args)
                    save()
        if not args.keep_artifacts:
            shutil.rmtree(out, ignore_errors=True)
    if args.genai:
        out = args.scratch / f"{model}-genai-int4"
        with locked(args.lock):
            rec["genai_int4"] = {"build": genai_build(model, base, out, args)}
            save()
            if rec["genai_int4"]["build"]["rc"] == 0:
                rec["genai_int4"]["plain"] = run(out, None, args)
                save()
        shutil.rmtree(out, ignore_errors=True)
    if not args.keep_checkpoints:
        shutil.rmtree(args.scratch / model, ignore_errors=True)


def gb(x) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def table(results: dict) -> str:
    rows = ["| model | precision | export wall s | export peak RSS GB (anon) | size GB | validation (worst err) | "
            "shadow_only tok/s | base_shadow tok/s | run peak RSS GB / 1.1xW+KV |", "|" + "---|" * 9]
    for model, rec in results.items():
        for precision in [p for p in rec if p.split("-")[0] in PRECISIONS]:
            e = rec[precision]["export"]
            if e["rc"] != 0:
                rows.append(f"| {model} | {precision} | {e['wall_s']} | {gb(e['peak_rss'])} | - | FAILED "
                            f"({'timeout' if e['timed_out'] else e['stderr_tail'][-1:]}) | | | |")
                continue
            so, bs = rec[precision].get("shadow_only", {}), rec[precision].get("base_shadow", {})
            peak = max((r.get("peak_rss", 0) for r in (so, bs)), default=0)
            bound = max((r.get("bound_bytes", 0) for r in (so, bs)), default=0)
            rows.append(f"| {model} | {precision} | {e['wall_s']} | {gb(e['peak_rss'])} ({gb(e['peak_rss_anon'])}) | "
                        f"{gb(e['size_bytes'])} | {e['validation_method']} ({e['validation_worst_logits_err']:.2e}) | "
                        f"{so.get('tok_s', 0):.1f} | {bs.get('tok_s', 0):.1f} | {gb(peak)} / {gb(bound)} |")
        g = rec.get("genai_int4")
        if g:
            b, p = g["build"], g.get("plain", {})
            rows.append(f"| {model} | genai int4 (plain) | {b['wall_s']} | {gb(b['peak_rss'])} ({gb(b['peak_rss_anon'])})"
                        f" | {gb(b.get('size_bytes'))} | - | - | {p.get('tok_s', 0):.1f} (plain) | "
                        f"{gb(p.get('peak_rss'))} / {gb(p.get('bound_bytes'))} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen3-0.6b", help=f"comma list of {', '.join(QWEN3)}")
    p.add_argument("--precisions", default="int4", help=f"comma list of {', '.join(PRECISIONS)}")
    p.add_argument("--validation", default="auto", choices=("auto", "full", "streamed"))
    p.add_argument("--genai", action="store_true", help="also build and run onnxruntime-genai's int4 model")
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch/big_models"),
                   help="where checkpoints and artifacts are written (deleted after measuring)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--keep-artifacts", action="store_true", help="keep the exported artifacts (default: deleted)")
    p.add_argument("--block-size", type=int, default=32, help="quantization block size of int4/int8 (default 32)")
    p.add_argument("--lock", type=Path, default=Path("/work/bigmem.lock"), help="flock file for heavy steps")
    p.add_argument("--timeout", type=float, default=600, help="seconds per export / run / build (default 600)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "big_models.json")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    if unknown := [x for x in args.precisions if x not in PRECISIONS]:
        p.error(f"unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}")
    args.scratch.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.json.read_text()).get("results", {}) if args.json.is_file() else {}
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
            "note": "shared machine: other jobs were running; timings are noisy"}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    for model in [m for m in args.models.split(",") if m]:
        bench_model(model, args, results, save)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
