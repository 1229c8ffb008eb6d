"""`shadow-edge inspect`'s interop lines: single-graph decoders and tool configs, and which tools load them."""

from __future__ import annotations

from shadow_edge.io_spec import STEP_DRAFT
from shadow_edge.manifest import Manifest

HOW = {("detached", "onnxruntime-genai"): "og.Model(ART)",
       ("detached", "optimum"): "ORTModelForCausalLM.from_pretrained(ART)",
       ("combined", "onnxruntime-genai"): "og.Config(ART) + overlay of model.decoder.filename",
       ("combined", "optimum"): 'ORTModelForCausalLM.from_pretrained(ART, file_name="{file}")'}


def interop_lines(m: Manifest) -> list[str]:
    """Lines describing `m.interop` (none for artifacts written before interop files existed)."""
    ix = m.interop
    if not ix:
        return ["interop    none (exported by an older shadow-edge; re-export for onnxruntime-genai / optimum files)"]
    out = ["interop"]
    files = m.files

    def size(name: str) -> str:
        if name not in files:
            return "missing"
        n = files[name]["bytes"]
        return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

    for key, what in (("detached", "detached shadow"), ("combined", "combined model")):
        e = ix.get(key)
        if not e:
            continue
        if e.get("file"):
            chain = " -> ".join(e.get("graphs", []))
            out.append(f"  {e['file']:<28} {what}, one graph ({chain}; {e.get('kv_layers')} KV layers; "
                       f"{size(e['file'])}, weights shared)")
            for tool in e.get("tools", []):
                out.append(f"  {'':<28} {tool}: {HOW.get((key, tool), '').format(file=e['file'])}")
            check = e.get("validation")
            if isinstance(check, dict) and "max_abs_err" in check:
                out.append(f"  {'':<28} matches the split graphs (max |err| {check['max_abs_err']:.2e})")
        for tool, why in e.get("limits", {}).items():
            out.append(f"  {what} {'not for ' + tool if tool != 'all' else 'single graph'}: {why}")
    for mode, e in (ix.get("step") or {}).items():
        check = e.get("validation")
        err = f"; matches the split graphs, max |err| {check['max_abs_err']:.2e}" if isinstance(check, dict) \
            and "max_abs_err" in check else ""
        what = "speculative's greedy draft step" if mode == STEP_DRAFT else f"{mode} decode step"
        out.append(f"  {e['file']:<28} {what}, one session (+ next_token = ArgMax; {size(e['file'])}{err})")
    for name, tool in ix.get("configs", {}).items():
        out.append(f"  {name:<28} {tool} ({size(name)})")
    ort = ix.get("ort")
    if ort:
        out.append(f"  {ort['file']:<28} ORT format of {ort['from']} ({size(ort['file'])}, weights inside): "
                   "onnxruntime / ONNX Runtime Mobile")
        out.append(f"  {ort['required_operators']:<28} operators for a reduced build "
                   f"(build.sh --minimal_build --include_ops_by_config {ort['required_operators']})")
    return out
