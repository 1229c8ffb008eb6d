"""`shadow-edge web ART --out DIR`: a static site that runs the detached shadow in the browser.

DIR holds index.html and one ES module (shadow-edge.js, from shadow_edge/web/assets), the vendored
JavaScript (vendor/, copied from npm's node_modules: vendor.py), the transformers.js model folder
(model/: model_dir.py) and manifest.json: the page's settings (`page`, read by the module) and the
sha256 of every file. It is written like an export (export/out_dir.py): beside DIR as a partial, moved
into place at the end; `--force` replaces only a directory this command wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from shadow_edge import __version__
from shadow_edge.manifest import MANIFEST_NAME, file_table, read_manifest, sha256_file
from shadow_edge.web.model_dir import MODEL_DIR, write_model_dir
from shadow_edge.web.options import WebOptions
from shadow_edge.web.vendor import VENDOR_DIR, copy_vendor, default_node_modules

SITE_FORMAT = "shadow-edge-web"
SITE_FORMAT_VERSION = 1
ASSETS = Path(__file__).parent / "assets"
PAGE_FILES = ("index.html", "shadow-edge.js")


def write_site(art: str | Path, out: str | Path, options: WebOptions = WebOptions(),
               progress=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Write the page for artifact `art` into `out`; returns the site's manifest."""
    # out_dir lives in the export package, whose import loads torch: only when a site is written, not for --help
    from shadow_edge.export.out_dir import (check_out, clean_stale_partials, signals_clean_up,
                                            write_partial_then_publish, writer_lock)

    art, out = Path(art), Path(out)
    inputs = {"artifact": art}
    node_modules = options.node_modules or default_node_modules()
    formats = (SITE_FORMAT,)
    check_out(out, options.force, inputs, formats)
    manifest = read_manifest(art)
    started = time.perf_counter()
    with signals_clean_up(), writer_lock(out):
        for stale in clean_stale_partials(out):
            progress(f"removed the partial output {stale} of a process that is gone")
        check_out(out, options.force, inputs, formats)
        site = write_partial_then_publish(out, options.force, inputs,
                                          lambda tmp: _write(art, manifest, node_modules, tmp, options),
                                          what="web page", formats=formats)
    page = site["page"]
    progress(f"done in {time.perf_counter() - started:.1f}s: {out} (model {page['dtype']}, "
             f"{page['model_mb']:.1f} MB; {site['bytes'] / 1e6:.1f} MB in all)")
    if manifest.quantization != "none" and (manifest.model.get("quantization") or {}).get("compute") == "int8":
        progress("note: the artifact computes its quantized matmuls with int8 activations (--quant-compute int8); "
                 "onnxruntime-web computes them in float32, so the page's logits differ slightly from "
                 "`shadow-edge run` (re-export with --quant-compute float32 for the same tokens)")
    return site


def _write(art: Path, manifest, node_modules: Path, tmp: Path, options: WebOptions) -> dict:
    versions = copy_vendor(node_modules, tmp / VENDOR_DIR)
    model = write_model_dir(art, manifest, tmp / MODEL_DIR, verify=options.verify)
    for name in PAGE_FILES:
        shutil.copyfile(ASSETS / name, tmp / name)
    cfg = model.config
    page = {"model_dir": MODEL_DIR, "dtype": model.dtype, "model_type": cfg["model_type"],
            "num_layers": cfg["num_hidden_layers"], "kv_heads": cfg["num_key_value_heads"], "head_dim": cfg["head_dim"],
            "model_mb": model.graph_bytes / 1e6,
            "context": int(manifest.model["max_positions"]),
            "eos_token_ids": [int(t) for t in manifest.tokenizer.get("eos_token_ids") or []],
            "threshold": options.threshold, "max_new_tokens": options.max_new_tokens,
            "escalate_to": options.escalate_to, "escalate_timeout_s": options.escalate_timeout_s}
    compute = (manifest.model.get("quantization") or {}).get("compute")
    files = file_table(tmp)
    files.pop(".shadow-edge-partial", None)
    site = {"format": SITE_FORMAT, "format_version": SITE_FORMAT_VERSION, "tool_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "artifact": {"path": str(art.resolve()), "manifest_sha256": sha256_file(art / MANIFEST_NAME),
                         "quantization": manifest.quantization, "quant_compute_native": compute,
                         "quant_compute_page": "float32" if compute else None},
            "vendor": versions, "page": page, "bytes": sum(f["bytes"] for f in files.values()),
            "files": files}
    (tmp / MANIFEST_NAME).write_text(json.dumps(site, indent=2) + "\n", encoding="utf-8")
    return site
