"""precision_table.py's outputs: results.json, summary.md (the table, the precision targets) and the block of benchmarks/results/precision.md."""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- BEGIN precision_table.py results -->", "<!-- END precision_table.py results -->"
W1 = "qwen3-0.6b-shape"
GENAI = "ort-genai"
OVERHEAD_GOAL = 0.03
# issue 14's absolute targets at the Qwen3-0.6B shape: (precision, system, metric, op, goal, label)
ABSOLUTE = (("int4", "base_shadow", "decode_tok_s", ">=", 50.0, "combined int4 decode tok/s"),
            ("int8", "base_shadow", "decode_tok_s", ">=", 34.0, "combined int8 decode tok/s"),
            ("int4", "shadow_only", "decode_tok_s", ">=", 200.0, "shadow-only int4 decode tok/s"),
            ("fp32", "base_shadow", "ttft_ms", "<=", 500.0, "combined fp32 prefill of the prompt (TTFT), ms"))


def _tok(g: dict, system: str, metric: str = "decode_tok_s") -> float | None:
    return (g["systems"].get(system) or {}).get(metric)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def mode_overhead(g: dict) -> float | None:
    """base_shadow's p50 decode step over backbone_plain's, minus 1 (same interleaved rounds)."""
    s = g["systems"]
    if "base_shadow" in s and "base_plain" in s:
        return s["base_shadow"]["decode_ms_p50"] / s["base_plain"]["decode_ms_p50"] - 1
    return None


def graph_overhead(g: dict) -> float | None:
    o = g.get("graph_overhead") or {}
    return o.get("overhead")


def byte_ratio(g: dict, a: str, b: str) -> float | None:
    """Weight bytes one decode step of system `a` reads over those of `b` (None for runs recorded before they were)."""
    w = g.get("weight_bytes_per_token") or {}
    return w[a] / w[b] if w.get(a) and w.get(b) else None


def _status(value: float | None, op: str, goal: float, unit: str = "") -> str:
    if value is None:
        return "not measured"
    met = value >= goal if op == ">=" else value <= goal
    if met:
        return "met"
    if unit == "%":
        return f"missed by {(value - goal) * 100:.1f} points"
    if op == ">=":
        return f"missed by {(1 - value / goal) * 100:.0f}% (needs {goal / value:.2f}x)"
    return f"missed by {(value / goal - 1) * 100:.0f}% (needs {value / goal:.2f}x faster)"


def targets(groups: list[dict]) -> list[dict]:
    rows = []
    for g in groups:
        where = f"{g['preset']} {g['precision']}"
        genai = _tok(g, GENAI)
        for system, label in (("base_shadow", "base_shadow"), ("base_plain", "own backbone_plain")):
            r, bound = _ratio(_tok(g, system), genai), byte_ratio(g, GENAI, system)
            rows.append({"where": where, "target": f"{label} vs onnxruntime-genai plain", "goal": ">= 1.00x",
                         "measured": None if r is None else f"{r:.2f}x", "status": _status(r, ">=", 1.0),
                         "bytes_bound": None if bound is None else f"{bound:.2f}x"})
        extra = byte_ratio(g, "base_shadow", "base_plain")
        for name, value in (("per mode p50s", mode_overhead(g)), ("per graph, interleaved", graph_overhead(g))):
            rows.append({"where": where, "target": f"adapter overhead ({name})", "goal": "<= 3.0%",
                         "measured": None if value is None else f"{value * 100:+.1f}%",
                         "status": _status(value, "<=", OVERHEAD_GOAL, "%"),
                         "bytes_bound": None if extra is None else f"{(extra - 1) * 100:+.1f}%"})
        if g["preset"] == W1:
            for precision, system, metric, op, goal, label in ABSOLUTE:
                if precision == g["precision"].partition("@")[0]:
                    v = (g["systems"].get(system) or {}).get(metric)
                    rows.append({"where": where, "target": label, "goal": f"{op} {goal:g}", "bytes_bound": None,
                                 "measured": None if v is None else f"{v:.1f}", "status": _status(v, op, goal)})
    return rows


def _n(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def _p10_ratios(g: dict) -> str:
    """base_shadow and backbone_plain over onnxruntime-genai at the p10 step (the least contended steps)."""
    genai = _tok(g, GENAI, "decode_tok_s_p10")
    r = [_ratio(_tok(g, s, "decode_tok_s_p10"), genai) for s in ("base_shadow", "base_plain")]
    return " / ".join("-" if x is None else f"{x:.2f}x" for x in r)


def _quant(g: dict) -> str:
    q = g.get("quantization")
    return "fp32" if not q else f"{q['scheme']} (block {q['block_size']}, {q['compute']} compute)"


def _load_orders(w: dict) -> str:
    if w.get("load_orders", 1) < 2:  # runs recorded before load orders were measured: one pass
        return ""
    if w.get("load_order_rule") == "rotate":  # benchmarks.lib.timing: pass p loads in the order rotated by p
        return (f", in each of {w['load_orders']} passes (pass p loads the systems freshly in the order rotated by "
                "p: in one process a system loaded later decoded faster), the rounds of all passes pooled")
    return (", in each of two passes (the systems loaded in one order, then freshly in the reverse order: in one "
            "process a system loaded later decoded faster), the rounds of both pooled")


def markdown(result: dict) -> str:
    w, m, v = result["workload"], result["machine"], result["versions"]
    bw = result["read_bandwidth_samples_gbs"]
    L = [f"Prompt {w['prompt_len']} random token ids, {w['new_tokens']} new tokens, greedy, batch 1, {w['threads']} "
         f"threads; per (preset, precision) the four systems loaded together and run round-robin, 1 warm-up run "
         f"each, then {w['reps']} timed rounds{_load_orders(w)}; decode tok/s = 1000 / p50 of every decode step. "
         f"Generated "
         f"{result['created_utc']} in {result['elapsed_s']:.0f} s; 1-minute load average "
         f"{', '.join(f'{x:.1f}' for x in result['load_average_1min'])} (start and end of each run): other "
         "engineers' jobs shared the 2 cores, so absolute figures are samples and the ratios within a group are the "
         "comparable figures.",
         "",
         f"- machine: {m['cpu_model']}, {m['usable_cores']} usable cores, {', '.join(m['cpu_flags'])}; "
         f"memory read bandwidth samples {', '.join(f'{x:.1f}' for x in bw)} GB/s (2 threads, per preset and at "
         "the end)",
         "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
         f"- command: `{result['command']}`",
         "", "| preset | shadow-edge precision | shadow_only | backbone_plain | base_shadow | onnxruntime-genai plain "
         "| base_shadow ÷ genai | backbone_plain ÷ genai | same at p10 | adapter overhead: mode p50s / graphs "
         "interleaved | base_shadow TTFT ms |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in result["groups"]:
        genai = _tok(g, GENAI)
        mo, go = mode_overhead(g), graph_overhead(g)
        L.append(f"| {g['preset']} | {_quant(g)} | {_n(_tok(g, 'shadow_only'))} | {_n(_tok(g, 'base_plain'))} | "
                 f"**{_n(_tok(g, 'base_shadow'))}** | {_n(genai)} | "
                 f"{_n(_ratio(_tok(g, 'base_shadow'), genai), '.2f')}x | "
                 f"{_n(_ratio(_tok(g, 'base_plain'), genai), '.2f')}x | {_p10_ratios(g)} | "
                 f"{'-' if mo is None else f'{mo * 100:+.1f}%'} / {'-' if go is None else f'{go * 100:+.1f}%'} | "
                 f"{_n((g['systems'].get('base_shadow') or {}).get('ttft_ms'), '.0f')} |")
    L += ["", "Decode tokens/s (p50). *same at p10*: base_shadow / backbone_plain over onnxruntime-genai using each "
          "system's 10th-percentile step (its least contended steps). onnxruntime-genai: its model builder's "
          "defaults for `-p fp32|int8|int4 -e cpu` (int8/int4: MatMulNBits, block 32 or the group's @BLOCK, "
          "accuracy level 4 = int8 activations; int4 shares the quantized "
          "tied embedding with the head, int8 keeps a float32 embedding). *graphs interleaved*: "
          "`benchmarks/profile/adapter_overhead.py` (one decode step of backbone, backbone_plain, shadow and head back to "
          "back), (backbone - backbone_plain + shadow) / (backbone_plain + head).",
          ""] + bytes_table(result)
    L += ["", "**Targets**. *Bound on bytes*: what the target's measure would be if both sides read "
          "their weights at the same GB/s (a decode step is bound by the weight bytes it reads): the ratio of "
          "weight bytes per token for the speed targets, the adapter's extra bytes for the overhead targets.", "",
          "| preset, precision | target | goal | measured | bound on bytes | status |", "|---|---|---:|---:|---:|---|"]
    for t in targets(result["groups"]):
        L.append(f"| {t['where']} | {t['target']} | {t['goal']} | {t['measured'] or '-'} | "
                 f"{t.get('bytes_bound') or '-'} | {t['status']} |")
    return "\n".join(L) + "\n"


def bytes_table(result: dict) -> list[str]:
    """Weight MB each system reads per decoded token and the GB/s its p50 step reaches (`bench/weights.py`)."""
    groups = [g for g in result["groups"] if g.get("weight_bytes_per_token")]
    if not groups:
        return []
    systems = ("shadow_only", "base_plain", "base_shadow", GENAI)
    probes = ", ".join(f"{x:.1f}" for x in result["read_bandwidth_samples_gbs"])
    L = ["Weights read per decoded token (MB, `shadow_edge/bench/weights.py`) and the rate each system's p50 step "
         f"reads them at (GB/s; the memory-read probes gave {probes} GB/s):", "",
         "| preset | precision | " + " | ".join(f"{s} MB, GB/s" for s in systems) + " | adapter's extra bytes |",
         "|---|---|" + "---:|" * (len(systems) + 1)]
    for g in groups:
        w = g["weight_bytes_per_token"]
        cells = [f"{w[s] / 2**20:.1f}, {w[s] * _tok(g, s) / 1e9:.1f}" if w.get(s) and _tok(g, s) else "-"
                 for s in systems]
        extra = byte_ratio(g, "base_shadow", "base_plain")
        L.append(f"| {g['preset']} | {_quant(g)} | " + " | ".join(cells) + f" | {(extra - 1) * 100:+.1f}% |")
    return L


def update_block(md_path: Path, block: str) -> None:
    """Replace the text between this script's markers in `md_path` (append the block if they are missing)."""
    from benchmarks.lib.compare_report import update_block as replace_between

    replace_between(md_path, block, BEGIN, END)


def write_outputs(result: dict, out: Path, results_md: Path | None) -> None:
    from benchmarks.lib.artifacts import say

    result["targets"] = targets(result["groups"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    (out / "summary.md").write_text(text, encoding="utf-8")
    say(f"wrote {out / 'results.json'} and {out / 'summary.md'}")
    print(text)
    if results_md is not None:
        update_block(results_md, text)
        say(f"refreshed the precision_table.py block of {results_md}")
