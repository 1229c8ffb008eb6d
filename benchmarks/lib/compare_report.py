"""compare.py's outputs: results.json, summary.md (tables, ratios, targets), PNG plots, the block of benchmarks/results/speed.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

MB = 1e6
BEGIN, END = "<!-- BEGIN compare.py results -->", "<!-- END compare.py results -->"
OURS = ("shadow-edge/shadow_only", "shadow-edge/base_shadow", "shadow-edge-int4/shadow_only",
        "shadow-edge-int4/base_shadow")
# (anchor, metric compared, column title); "{mode}" is the row's own mode
ANCHORS = (("shadow-peft/{mode}", "e2e_tok_s", "shadow-peft reference, same mode (end to end)"),
           ("transformers/plain", "decode_tok_s", "transformers plain backbone, KV cache (decode)"),
           ("shadow-edge/base_plain", "decode_tok_s", "own backbone_plain graph (decode)"),
           ("ort-genai/fp32", "decode_tok_s", "onnxruntime-genai fp32 (decode)"),
           ("ort-genai/int4", "decode_tok_s", "onnxruntime-genai int4 (decode)"))
# greedy agreement: (system, whose tokens it should reproduce)
AGREEMENT = {"shadow-edge/shadow_only": "shadow-peft/shadow_only",
             "shadow-edge/base_shadow": "shadow-peft/base_shadow",
             "shadow-edge/base_plain": "transformers/plain", "ort-genai/fp32": "transformers/plain",
             "ort-genai/int4": "transformers/plain"}
TARGETS_PRESET = "qwen3-0.6b-shape"


def _ok(records: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in records if r["status"] == "ok"}


def ratio(recs: dict, a: str, b: str, metric: str) -> float | None:
    if a in recs and b in recs and recs[a].get(metric) and recs[b].get(metric):
        return recs[a][metric] / recs[b][metric]
    return None


def agreement(recs: dict, key: str) -> str:
    ref = AGREEMENT.get(key)
    if key not in recs or ref not in recs:
        return "-"
    a, b = recs[key]["tokens"], recs[ref]["tokens"]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{same}/{len(b)} = {ref}"


def adapter_overhead(recs: dict) -> float | None:
    r = ratio(recs, "shadow-edge/base_shadow", "shadow-edge/base_plain", "decode_ms_p50")
    return None if r is None else r - 1


def targets(recs: dict) -> list[dict]:
    """Issue 5's targets with the measured value and by how much each is met or missed."""
    se_b, se_s = recs.get("shadow-edge/base_shadow", {}), recs.get("shadow-edge/shadow_only", {})
    rows = [
        ("combined (base_shadow) decode tokens/s", se_b.get("decode_tok_s"), ">=", 12.0, ""),
        ("combined decode vs transformers plain backbone", ratio(recs, "shadow-edge/base_shadow",
                                                                 "transformers/plain", "decode_tok_s"), ">=", 2.0, "x"),
        ("combined end to end vs shadow-peft reference", ratio(recs, "shadow-edge/base_shadow",
                                                              "shadow-peft/base_shadow", "e2e_tok_s"), ">=", 15.0, "x"),
        ("shadow-only decode tokens/s", se_s.get("decode_tok_s"), ">=", 38.0, ""),
        ("shadow-only end to end vs shadow-peft reference", ratio(recs, "shadow-edge/shadow_only",
                                                                 "shadow-peft/shadow_only", "e2e_tok_s"), ">=", 10.0, "x"),
        ("combined prefill (TTFT) of the prompt, ms", se_b.get("ttft_ms"), "<=", 700.0, ""),
        ("adapter overhead per decoded token vs backbone_plain", adapter_overhead(recs), "<=", 0.05, "%"),
    ]
    out = []
    for name, value, op, target, unit in rows:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        if value is None:
            gap = "not measured"
        elif met:
            gap = "met"
        elif unit == "%":
            gap = f"missed by {(value - target) * 100:.1f} points"
        elif op == ">=":
            gap = f"missed by {(1 - value / target) * 100:.0f}% (needs {target / value:.2f}x)"
        else:
            gap = f"missed by {(value / target - 1) * 100:.0f}% (needs {value / target:.2f}x faster)"
        out.append({"target": name, "op": op, "goal": target, "unit": unit, "measured": value, "met": met,
                    "gap": gap})
    return out


def _n(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def _fmt_target(v, unit) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.1f}%" if unit == "%" else f"{v:.2f}x" if unit == "x" else f"{v:.1f}"


def markdown(result: dict, out: Path, md_dir: Path) -> str:
    recs = _ok(result["records"])
    w, m, v = result["workload"], result["machine"], result["versions"]
    samples = result.get("read_bandwidth_samples_gbs") or []
    rel = lambda name: os.path.relpath(out / name, md_dir).replace(os.sep, "/")
    L = [f"Preset **{result['preset']['name']}**, prompt {w['prompt_len']} random token ids, {w['new_tokens']} new "
         f"tokens, greedy, batch 1, {w['threads']} threads everywhere; {w['reps']} timed runs per system "
         f"({w['reference_reps']} for the shadow-peft reference) after {w['warmup']} warm-up run(s) of "
         f"{w['warmup_tokens']} tokens; medians. Generated {result['created_utc']} in {result['elapsed_s']:.0f} s.",
         "",
         f"- machine: {m['cpu_model']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), "
         f"{', '.join(m['cpu_flags'])}, {(m['memory_bytes'] or 0) / 2**30:.0f} GiB RAM; {m['platform']}",
         f"- measured memory read bandwidth: **{_n(result['read_bandwidth_gbs'])} GB/s** with {result['threads']} "
         f"threads ({result['bandwidth_method']}"
         + (f"; samples before/after the systems: {', '.join(f'{x:.1f}' for x in samples)}" if samples else "")
         + ")",
         "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
         f"- artifact: manifest sha256 `{result['artifact']['manifest_sha256'][:16]}`, "
         f"{result['artifact']['dtype']}, exported by shadow-edge {result['artifact']['tool_version']}",
         f"- command: `{result['command']}`",
         "", "| system | weights | load s | TTFT ms | decode ms/token p50 (p90) | decode tok/s | end-to-end tok/s "
         "| weights read GB/s (% of measured) | peak RSS growth MB (process peak) | size MB | greedy tokens equal to |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["records"]:
        if r["status"] != "ok":
            continue
        frac = r.get("bandwidth_fraction")
        L.append(f"| {r['key']} | {r['weights']} | {r['load_ms'] / 1e3:.1f} | {r['ttft_ms']:.0f} | "
                 f"{_n(r['decode_ms_p50'])} ({_n(r['decode_ms_p90'])}) | **{_n(r['decode_tok_s'], '.2f')}** | "
                 f"{r['e2e_tok_s']:.2f} | {_n(r['achieved_gbs'])}"
                 f"{f' ({frac * 100:.0f}%)' if frac else ''} | +{(r['peak_rss_bytes'] - r['rss_before_load_bytes']) / MB:.0f} "
                 f"({r['peak_rss_bytes'] / MB:.0f}) | "
                 f"{_n((r['size_bytes'] or 0) / MB, '.0f')} | {agreement(recs, r['key'])} |")
    L += ["", "*peak RSS growth*: the process's high-water mark while the system was loaded and run (reset before "
          "each system, earlier systems freed and trimmed) minus the RSS just before loading it; in brackets the "
          "high-water mark itself, which also holds the interpreter, torch, and whatever the allocator kept from "
          "earlier phases. One shared process: read these as indicative, and use `shadow-edge bench ART --modes "
          "M` for a clean per-mode figure. *weights read GB/s* = bytes of weights one "
          "decode step reads / its p50 time. *greedy tokens equal to*: length of the common prefix with the "
          "named system's greedy tokens.", "",
          "**Ratios** (shadow-edge tokens/s ÷ anchor tokens/s; the metric is in the column title):", "",
          "| shadow-edge mode | " + " | ".join(t for _, _, t in ANCHORS) + " |",
          "|---|" + "---:|" * len(ANCHORS)]
    for ours in OURS:
        if ours not in recs:
            continue
        mode = ours.split("/")[1]
        cells = [_n(ratio(recs, ours, a.format(mode=mode), metric), ".2f") + "x" if
                 ratio(recs, ours, a.format(mode=mode), metric) else "-" for a, metric, _ in ANCHORS]
        L.append(f"| {ours.replace('shadow-edge/', '')} | " + " | ".join(cells) + " |")
    ov = adapter_overhead(recs)
    if ov is not None:
        L += ["", f"**Adapter overhead** per decoded token (base_shadow vs backbone_plain, p50 ms): "
                  f"{ov * 100:+.1f}%."]
    if result["preset"]["name"] == TARGETS_PRESET:
        L += ["", "**Targets** (fp32, this workload):", "", "| target | goal | measured | status |",
              "|---|---:|---:|---|"]
        for t in targets(recs):
            goal = f"{t['op']} {_fmt_target(t['goal'], t['unit'])}"
            L.append(f"| {t['target']} | {goal} | {_fmt_target(t['measured'], t['unit'])} | {t['gap']} |")
    notes = [f"- {r['key']}: {r['status']}: {r['note']}" if r["status"] != "ok" else f"- {r['key']}: {r['note']}"
             for r in result["records"] if r.get("note")]
    if notes:
        L += ["", "Notes:", *notes]
    L += ["", f"![comparison]({rel('compare.png')})"]
    if any("sweep" in r for r in recs.values()):
        L += ["", sweep_table(recs), "", f"![scaling sweep]({rel('sweep.png')})"]
    return "\n".join(L) + "\n"


def sweep_table(recs: dict) -> str:
    L = ["**Scaling sweep** (one run per point; TTFT ms / mean decode ms per token):", ""]
    for kind, axis in (("prompt", "prompt_len"), ("new", "new_tokens")):
        swept = {k: r["sweep"][kind] for k, r in recs.items() if "sweep" in r}
        points = sorted({p[axis] for pts in swept.values() for p in pts})
        title = "prompt length" if kind == "prompt" else "new tokens"
        L += [f"| system \\ {title} | " + " | ".join(map(str, points)) + " |", "|---|" + "---:|" * len(points)]
        for key, pts in swept.items():
            by = {p[axis]: p for p in pts}
            L.append(f"| {key} | " + " | ".join(
                f"{by[x]['ttft_ms']:.0f} / {_n(by[x]['decode_ms_mean'])}" if x in by else "-" for x in points) + " |")
        L.append("")
    return "\n".join(L)


def plot_compare(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    recs = [r for r in result["records"] if r["status"] == "ok"]
    keys = [r["key"] for r in recs][::-1]
    recs = recs[::-1]
    colors = ["#4878a8" if r["family"].startswith("shadow-edge") else "#999999" for r in recs]
    fig, ax = plt.subplots(2, 2, figsize=(12, 1.2 + 0.45 * len(recs) * 2))
    panels = ((ax[0, 0], "decode_tok_s", "decode tokens/s (p50), log", True),
              (ax[0, 1], "e2e_tok_s", "end-to-end tokens/s (incl. prefill), log", True),
              (ax[1, 0], "ttft_ms", "time to first token, ms, log", True),
              (ax[1, 1], "rss_growth", "peak RSS growth over the RSS before loading, MB", False))
    for a, metric, title, log in panels:
        vals = [(r["peak_rss_bytes"] - r["rss_before_load_bytes"]) / MB if metric == "rss_growth" else
                (r.get(metric) or 0) for r in recs]
        bars = a.barh(keys, vals, color=colors)
        a.bar_label(bars, labels=[f"{x:,.0f}" if x >= 100 else f"{x:.3g}" for x in vals], fontsize=8, padding=2)
        if log:
            a.set_xscale("log")
            a.xaxis.set_minor_formatter(NullFormatter())
        a.set_title(title, fontsize=10)
        a.tick_params(axis="y", labelsize=8)
        a.margins(x=0.15)
    w = result["workload"]
    fig.suptitle(f"{result['preset']['name']}: prompt {w['prompt_len']}, {w['new_tokens']} new, greedy, batch 1, "
                 f"{w['threads']} threads - {result['machine']['cpu_model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [r for r in result["records"] if r["status"] == "ok" and "sweep" in r]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    for r in swept:
        style = "-o" if r["family"].startswith("shadow-edge") else "--s"
        pp, nn = r["sweep"]["prompt"], r["sweep"]["new"]
        ax[0].plot([p["prompt_len"] for p in pp], [p["ttft_ms"] for p in pp], style, label=r["key"])
        ax[1].plot([p["prompt_len"] for p in pp], [p["decode_ms_mean"] for p in pp], style, label=r["key"])
        ax[2].plot([p["new_tokens"] for p in nn], [p["e2e_ms"] / 1e3 for p in nn], style, label=r["key"])
    titles = ("time to first token (ms) vs prompt length", "mean decode ms/token vs prompt length",
              "generation time (s) vs new tokens")
    for a, t, xl in zip(ax, titles, ("prompt tokens", "prompt tokens", "new tokens")):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_title(t, fontsize=10)
        a.set_xlabel(xl)
        a.grid(True, which="both", alpha=0.3)
    ax[0].legend(fontsize=7)
    w = result["workload"]
    fig.suptitle(f"{result['preset']['name']} scaling ({w['threads']} threads; prompt sweep with "
                 f"{w['new_tokens']} new, new-token sweep with prompt {w['prompt_len']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def update_block(md_path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers in `md_path` (append the block if the markers are missing)."""
    text = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    new = f"{begin}\n{block}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + new + text[text.index(end) + len(end):]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + new + "\n"
    md_path.write_text(text, encoding="utf-8")


def write_outputs(result: dict, out: Path, results_md: Path | None) -> None:
    from benchmarks.lib.artifacts import say

    recs = _ok(result["records"])
    result["ratios"] = {f"{ours}|{a.format(mode=ours.split('/')[1])}|{metric}":
                        ratio(recs, ours, a.format(mode=ours.split("/")[1]), metric)
                        for ours in OURS for a, metric, _ in ANCHORS}
    result["adapter_overhead"] = adapter_overhead(recs)
    result["targets"] = targets(recs)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if recs:
        plot_compare(result, out / "compare.png")
        if any("sweep" in r for r in recs.values()):
            plot_sweep(result, out / "sweep.png")
    (out / "summary.md").write_text(markdown(result, out, out), encoding="utf-8")
    say(f"wrote {out / 'results.json'}, {out / 'summary.md'} and plots")
    print(markdown(result, out, out), file=__import__("sys").stderr)
    if results_md is not None:
        update_block(results_md, markdown(result, out, results_md.resolve().parent))
        say(f"refreshed the generated block of {results_md}")
