"""The detached shadow in ONNX Runtime's ORT format (`model.ort`) for mobile apps, plus the operator list
(`model.required_operators.config`) that a reduced onnxruntime build needs (`build.sh --minimal_build
--include_ops_by_config model.required_operators.config`).

Conversion is onnxruntime's own tool (`python -m onnxruntime.tools.convert_onnx_models_to_ort`), in
a subprocess (its sessions need their own thread pools; the exporter's process has a global one)
on the single-graph `model.onnx`. An ORT-format file holds its weights inside (the
format has no external data), so this doubles the detached shadow's bytes: it is opt-in
(`shadow-edge export ... --ort-format`). Optimization style "Fixed": graph optimizations are applied
at conversion time, for the CPU execution provider.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from shadow_edge.errors import ExportError

ORT_FILE = "model.ort"
OPERATORS_FILE = "model.required_operators.config"
TOOL = "onnxruntime.tools.convert_onnx_models_to_ort"
# The tool's package imports torch when it can (4 s here, unused for conversion): block it.
LAUNCH = f"import runpy, sys; sys.modules['torch'] = None; runpy.run_module('{TOOL}', run_name='__main__')"


def write_ort_format(art_dir: Path, onnx_file: str) -> dict:
    """Convert `art_dir/onnx_file` to `art_dir/model.ort` + its operator config; the manifest's `ort` entry."""
    stem = Path(onnx_file).stem
    produced = {f"{stem}.ort": ORT_FILE, f"{stem}.required_operators.config": OPERATORS_FILE}
    with tempfile.TemporaryDirectory(dir=art_dir, prefix=".ort-") as tmp:
        done = subprocess.run([sys.executable, "-c", LAUNCH, str(art_dir / onnx_file), "--output_dir", tmp,
                               "--optimization_style", "Fixed"], capture_output=True, text=True)
        missing = [name for name in produced if not (Path(tmp) / name).is_file()]
        if done.returncode != 0 or missing:
            tail = " ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-3:])
            raise ExportError(f"ORT format: `python -m {TOOL} {onnx_file}` failed (exit {done.returncode}; "
                              f"missing {missing or 'nothing'}): {tail}; check that onnxruntime is installed with "
                              "its tools, or export without --ort-format")
        config = Path(tmp) / f"{stem}.required_operators.config"
        config.write_text(config.read_text(encoding="utf-8").replace(f"{Path(tmp).resolve()}/", ""),
                          encoding="utf-8")
        for src, dest in produced.items():
            shutil.move(str(Path(tmp) / src), str(art_dir / dest))
    return {"file": ORT_FILE, "from": onnx_file, "required_operators": OPERATORS_FILE, "optimization_style": "Fixed",
            "tool": TOOL}
