"""Bench output: the human table (stderr), JSON records (`--json`), and a PNG (`--plot`, matplotlib Agg)."""

from __future__ import annotations

import json
from pathlib import Path

from shadow_edge.errors import InputError

# Every record has these keys (tests check them; add, never rename).
RECORD_KEYS = (
    "schema", "tool", "versions", "machine", "threads", "provider", "read_bandwidth_gbs", "bandwidth_method",
    "artifact", "mode", "created_utc", "workload", "load_ms", "prefill_ms", "ttft_ms", "ttft_ms_p90",
    "decode_ms_p50", "decode_ms_p90", "decode_ms_mean", "decode_tok_s", "e2e_ms", "e2e_tok_s", "reps",
    "decode_steps", "peak_rss_bytes", "peak_rss_scope", "rss_before_load_bytes", "artifact_bytes",
    "weight_bytes_per_token", "achieved_gbs", "bandwidth_fraction", "speculative", "adapter", "adapter_bytes",
)
MB = 1e6


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.0f}" if n >= 10 * MB else f"{n / MB:.2f}"


def label(record: dict) -> str:
    """The mode, and the adapter pack that ran it (`base_shadow @support`)."""
    return record["mode"] + (f" @{record['adapter']}" if record.get("adapter") else "")


def format_table(records: list[dict]) -> str:
    """A fixed-width table, one row per record."""
    if not records:
        return "(no results)"
    r0 = records[0]
    w = r0["workload"]
    bw = r0["read_bandwidth_gbs"]
    head = (f"artifact {r0['artifact']['path']} ({r0['artifact']['dtype']}), prompt {w['prompt_len']}, "
            f"{w['new_tokens']} new tokens, batch {w['batch']}, {w['reps']} reps after {w['warmup']} warm-up, "
            f"{r0['threads']} threads, {r0['provider']}\n"
            f"CPU {r0['machine']['cpu_model']}; measured read bandwidth "
            f"{_f(bw, '.1f')} GB/s")
    cols = ("mode", "load s", "TTFT ms", "decode ms p50/p90", "tok/s decode", "tok/s e2e", "MB/token",
            "GB/s (% of meas.)", "peak RSS MB", "size MB")
    rows = []
    for r in records:
        frac = r["bandwidth_fraction"]
        rows.append((label(r), _f(r["load_ms"] / 1e3, ".2f"), _f(r["ttft_ms"], ".1f"),
                     f"{_f(r['decode_ms_p50'], '.2f')}/{_f(r['decode_ms_p90'], '.2f')}",
                     _f(r["decode_tok_s"], ".1f"), _f(r["e2e_tok_s"], ".1f"),
                     _mb(r["weight_bytes_per_token"]),
                     f"{_f(r['achieved_gbs'], '.1f')} ({_f(frac * 100 if frac else None, '.0f')}%)",
                     _mb(r["peak_rss_bytes"]), _mb(r["artifact_bytes"])))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w_) if i == 0 else c.rjust(w_) for i, (c, w_) in
                                   enumerate(zip(cells, widths)))
    notes = [f"{label(r)}: acceptance {_f(s['acceptance_rate'], '.3f')}, {_f(s['mean_accepted_length'], '.2f')} "
             f"drafts accepted per verify pass, draft {_f(s['draft_ms_per_round'], '.1f')} ms + verify "
             f"{_f(s['verify_ms_per_round'], '.1f')} ms per round (k: {s['draft_tokens'] or 'adaptive'})"
             for r in records if (s := r.get("speculative"))]
    return "\n".join([head, line(cols), *(line(r) for r in rows), *notes])


def write_json(records: list[dict] | dict, path: str | Path) -> None:
    """{"records": records} (or a whole document, a dict) as indented JSON at `path`."""
    path = Path(path)
    doc = records if isinstance(records, dict) else {"records": records}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise InputError(f"--json {path}: cannot write ({e.strerror}); choose a writable path") from None


def plot(records: list[dict], path: str | Path) -> None:
    """Four panels per mode: decode tokens/s, TTFT, achieved vs measured bandwidth, memory and size."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("--plot needs matplotlib; install it with pip install 'shadow-edge[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [label(r) for r in records]
    x = range(len(modes))
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    panels = [(ax[0, 0], [r["decode_tok_s"] or 0 for r in records], "decode tokens/s (p50)"),
              (ax[0, 1], [r["ttft_ms"] for r in records], "time to first token, ms")]
    for a, values, title in panels:
        bars = a.bar(x, values, color="#4878a8")
        a.bar_label(bars, fmt="%.1f")
        a.set_title(title)
    a = ax[1, 0]
    bars = a.bar(x, [r["achieved_gbs"] or 0 for r in records], color="#6a9f58")
    a.bar_label(bars, fmt="%.1f")
    bw = records[0]["read_bandwidth_gbs"]
    if bw:
        a.axhline(bw, color="#c44e52", linestyle="--", label=f"measured read bandwidth {bw:.1f} GB/s")
        a.set_ylim(0, 1.3 * max(bw, *(r["achieved_gbs"] or 0 for r in records)))
        a.legend(loc="upper left", fontsize=8)
    a.set_title("achieved weight-read bandwidth, GB/s")
    a = ax[1, 1]
    width = 0.4
    a.bar([i - width / 2 for i in x], [r["peak_rss_bytes"] / MB for r in records], width, label="peak RSS")
    a.bar([i + width / 2 for i in x], [r["artifact_bytes"] / MB for r in records], width, label="artifact bytes")
    a.legend(fontsize=8)
    a.set_title("memory and size, MB")
    for a in ax.flat:
        a.set_xticks(list(x), modes)
    w = records[0]["workload"]
    fig.suptitle(f"shadow-edge bench: prompt {w['prompt_len']}, {w['new_tokens']} new, batch {w['batch']}, "
                 f"{records[0]['threads']} threads, {records[0]['machine']['cpu_model']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise InputError(f"--plot {path}: cannot write ({e.strerror}); choose a writable path") from None
    finally:
        plt.close(fig)
