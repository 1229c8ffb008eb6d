"""benchmarks/lib/precision_report.py: issue 14's target verdicts and the RESULTS.md block, from a synthetic result."""

from __future__ import annotations

import pytest

from benchmarks.lib import precision_report as pr
from benchmarks.suites import precision_table


def _group(preset: str, precision: str, tok: dict[str, float], graph_overhead: float | None, ttft: float = 400.0):
    systems = {k: {"decode_tok_s": v, "decode_ms_p50": 1e3 / v, "ttft_ms": ttft} for k, v in tok.items()}
    return {"preset": preset, "precision": precision, "quantization": None if precision == "fp32" else
            {"scheme": precision.partition("@")[0], "block_size": 32, "compute": "int8"},
            "systems": systems, "graph_overhead": None if graph_overhead is None else {"overhead": graph_overhead}}


def _result(groups):
    return {"workload": {"prompt_len": 64, "new_tokens": 128, "threads": 2, "reps": 3}, "created_utc": "T",
            "elapsed_s": 1.0, "load_average_1min": [8.0, 9.0], "read_bandwidth_samples_gbs": [20.0, 21.0],
            "machine": {"cpu_model": "cpu", "usable_cores": 2, "cpu_flags": ["avx2"]}, "versions": {"onnxruntime": "1"},
            "command": "python -m benchmarks.suites.precision_table", "groups": groups}


def _tables(text: str) -> list[dict[tuple[str, str], list[str]]]:
    """Every markdown table of `text`: (first cell, second cell) -> the other cells, header and rule rows left out."""
    tables, rows = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if rows is None:
                rows = {}  # the header row
            elif not set(line) <= set("|-: "):
                rows[cells[0], cells[1]] = cells[2:]
        elif rows is not None:
            tables.append(rows)
            rows = None
    return tables


def _table(text: str, header: str) -> dict[tuple[str, str], list[str]]:
    """The rows of the one table whose header row starts with `header`."""
    starts = [i for i, line in enumerate(text.splitlines()) if line.startswith(header)]
    assert len(starts) == 1, (header, starts)
    return _tables("\n".join(text.splitlines()[starts[0]:]))[0]


def _num(cell: str) -> float:
    return float(cell.strip("*x%").replace("+", ""))


def test_targets_say_met_or_by_how_much():
    groups = [_group("small", "int4", {"shadow_only": 500, "base_plain": 100, "base_shadow": 96, "ort-genai": 80},
                     0.02),
              _group("qwen3-0.6b-shape", "int4@128",
                     {"shadow_only": 150, "base_plain": 45, "base_shadow": 40, "ort-genai": 50}, 0.05)]
    rows = {(t["where"], t["target"]): t for t in pr.targets(groups)}
    small = "small int4"
    assert rows[small, "base_shadow vs onnxruntime-genai plain"]["status"] == "met"
    assert rows[small, "adapter overhead (per mode p50s)"]["status"] == "missed by 1.2 points"  # 100/96 - 1 = 4.2%
    assert rows[small, "adapter overhead (per graph, interleaved)"]["status"] == "met"
    w1 = "qwen3-0.6b-shape int4@128"
    assert rows[w1, "base_shadow vs onnxruntime-genai plain"]["status"] == "missed by 20% (needs 1.25x)"
    assert rows[w1, "combined int4 decode tok/s"]["status"] == "missed by 20% (needs 1.25x)"
    assert rows[w1, "shadow-only int4 decode tok/s"]["measured"] == "150.0"
    assert not any(t["target"].startswith("combined int8") for t in pr.targets(groups))  # W1 int8 not in this run
    assert not any(w == small and "decode tok/s" in t for w, t in rows)  # absolute targets are W1's only


def test_markdown_block_keeps_hand_written_text(tmp_path):
    groups = [_group("qwen3-0.6b-shape", "fp32", {"shadow_only": 40, "base_plain": 10, "base_shadow": 9.5,
                                                  "ort-genai": 10.5}, None, ttft=650.0)]
    md = tmp_path / "RESULTS.md"
    md.write_text("# results\n\nhand-written text stays\n")
    text = pr.markdown(_result(groups))
    speed = _table(text, "| preset | shadow-edge precision |")
    assert list(speed) == [("qwen3-0.6b-shape", "fp32")]
    row = speed["qwen3-0.6b-shape", "fp32"]
    assert [_num(c) for c in row[:4]] == [40.0, 10.0, 9.5, 10.5]  # shadow_only, backbone_plain, base_shadow, genai
    assert [_num(c) for c in row[4:6]] == [0.90, 0.95]  # 9.5 / 10.5, 10 / 10.5
    assert row[7].split(" / ")[0] == "+5.3%" and _num(row[8]) == 650  # 10 / 9.5 - 1; TTFT ms
    ttft = next(v for (where, target), v in _table(text, "| preset, precision | target |").items() if "TTFT" in target)
    assert ttft[0] == "<= 500" and _num(ttft[1]) == 650.0 and ttft[3].startswith("missed by 30%")  # 650 / 500 - 1
    assert len(_tables(text)) == 2  # speed and targets: a run recorded without the bytes has no bytes table
    pr.update_block(md, text)
    pr.update_block(md, text)  # refreshing replaces the block, never appends a second one
    out = md.read_text()
    assert out.startswith("# results\n\nhand-written text stays\n") and out.count(pr.BEGIN) == 1


def test_runs_merge_into_one_table_and_different_workloads_are_refused():
    small = _result([_group("small", "fp32", {"base_plain": 10, "base_shadow": 9, "ort-genai": 10}, None)])
    w1 = _result([_group("qwen3-0.6b-shape", "int8", {"base_plain": 30, "base_shadow": 29, "ort-genai": 31}, None)])
    merged = precision_table.merge([small, w1])
    assert [g["preset"] for g in merged["groups"]] == ["small", "qwen3-0.6b-shape"]
    assert merged["load_average_1min"] == [8.0, 9.0, 8.0, 9.0] and " ; " in merged["command"]
    w1["workload"] = {**w1["workload"], "new_tokens": 32}
    with pytest.raises(SystemExit, match="different workloads"):
        precision_table.merge([small, w1])


def test_bytes_bound_the_targets_and_give_each_systems_rate():
    g = _group("small", "int4", {"shadow_only": 400, "base_plain": 100, "base_shadow": 80, "ort-genai": 110}, None)
    g["weight_bytes_per_token"] = {"shadow_only": 10e6, "base_plain": 40e6, "base_shadow": 50e6, "ort-genai": 40e6}
    rows = {t["target"]: t for t in pr.targets([g])}
    assert rows["base_shadow vs onnxruntime-genai plain"]["bytes_bound"] == "0.80x"  # 40 MB / 50 MB
    assert rows["own backbone_plain vs onnxruntime-genai plain"]["bytes_bound"] == "1.00x"
    assert rows["adapter overhead (per mode p50s)"]["bytes_bound"] == "+25.0%"
    text = pr.markdown(_result([g]))
    # MB per token and GB/s = bytes x tok/s: base_shadow 50e6 x 80 = 4.0 GB/s, genai 40e6 x 110 = 4.4 GB/s
    weights = _table(text, "| preset | precision |")
    mb_gbs = [[_num(x) for x in c.split(", ")] for c in weights["small", "int4 (block 32, int8 compute)"][:4]]
    assert mb_gbs == [[9.5, 4.0], [38.1, 4.0], [47.7, 4.0], [38.1, 4.4]]  # shadow_only, plain, base_shadow, genai
    assert weights["small", "int4 (block 32, int8 compute)"][4] == "+25.0%"  # 50 MB / 40 MB - 1
