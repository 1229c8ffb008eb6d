"""`shadow-edge inspect`: an artifact's graphs, I/O tables, sizes, model dims and validation, from its manifest."""

from __future__ import annotations

import json
from pathlib import Path

from shadow_edge.commands.interop_info import interop_lines
from shadow_edge.io_spec import ROLES, is_kv
from shadow_edge.manifest import Manifest, read_manifest, verify_files
from shadow_edge.runtime.strategies.base import option_specs, registry


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def graph_bytes(m: Manifest, name: str) -> int:
    g = m.graphs[name]
    return sum(m.files[f]["bytes"] for f in {g.file, *g.data_files} if f in m.files)


def shape(spec) -> str:
    return "[" + ", ".join(str(d) for d in spec.shape) + "]"


def describe(m: Manifest, art: Path, verified: bool) -> list[str]:
    out = [f"artifact   {art}",
           f"format     {m.format} v{m.format_version}, written by shadow-edge {m.tool_version} at {m.created_utc}",
           f"weights    {m.dtype}, quantization {m.quantization}; "
           f"{mb(sum(f['bytes'] for f in m.files.values()))} in {len(m.files)} files"
           + ("; sha256 verified" if verified else "")]
    t = m.execution_target
    out.append(f"target     {t.device} ({', '.join(t.providers)}), KV {t.kv_dtype}, attention "
               f"{' or '.join(t.attention)}" + (f", quantized arithmetic {t.quant_compute}" if t.quant_compute else "")
               + ("" if m.target else " (recorded before targets: the CPU)"))
    mi = m.model
    out.append(f"model      vocab {mi.get('vocab_size')}, hidden {mi.get('hidden_size')}, "
               f"max positions {mi.get('max_positions')}, shadow {mi.get('shadow_kind', '?')}")
    for role in ("base", "shadow"):
        c = mi.get(role)
        if isinstance(c, dict):
            out.append(f"  {role:<8} {c.get('model_type')}: {c.get('num_layers')} layers, hidden {c.get('hidden_size')}, "
                       f"heads {c.get('num_heads')}/{c.get('num_kv_heads')} kv, head_dim {c.get('head_dim')}, "
                       f"mlp {c.get('intermediate_size')}")
    extra = {k: mi[k] for k in ("adapter_variant", "adapted_layers", "alpha", "injection_rank", "gate_size") if k in mi}
    if extra:
        out.append("  adapter  " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    if mi.get("task") == "seq_cls":
        out.append(f"  task     sequence classification, {mi.get('num_labels')} labels: "
                   f"{', '.join(map(str, mi.get('id2label') or []))} (`shadow-edge classify`)")
    tok = m.tokenizer
    out.append(f"tokenizer  {'yes' if tok.get('has_tokenizer', True) else 'none (token ids only)'}, eos "
               f"{tok.get('eos_token_ids')}, pad {tok.get('pad_token_id')}, bos {tok.get('bos_token_id')}, "
               f"chat template {'yes' if tok.get('has_chat_template') else 'no'}")
    out.append("modes")
    for mode, roles in m.modes.items():
        chain = " -> ".join(roles[r] for r in ROLES if r in roles)
        out.append(f"  {mode:<12} {chain}  ({mb(m.mode_bytes(mode))})")
    if mi.get("task") != "seq_cls":  # the strategies this artifact's graphs run, with their own options
        for name, s in registry().items():
            if name in m.modes or not s.listed or not s.available(m.modes):
                continue
            line = f"  {name:<12} runs {', '.join(s.uses)}"
            specs = option_specs((name,))
            if specs:
                line += "; options: " + ", ".join(f"{o.flag} ({o.name}, default {o.default!r})" for o in specs)
            out.append(line)
    out.append("graphs")
    for name, g in m.graphs.items():
        kv = f", KV {g.kv_layers} layers x {g.kv_heads} heads x {g.head_dim}, {g.attention}" if g.kv_layers else ""
        out.append(f"  {name}: {g.file} + {', '.join(g.data_files) or 'no external data'} "
                   f"({mb(graph_bytes(m, name))}{kv})")
        for kind, specs in (("in ", g.inputs), ("out", g.outputs)):
            shown = [s for s in specs if not is_kv(s.name)]
            kv_specs = [s for s in specs if is_kv(s.name)]
            for s in shown:
                out.append(f"    {kind} {s.name:<22} {s.dtype:<8} {shape(s)}")
            if kv_specs:
                out.append(f"    {kind} {kv_specs[0].name.split('.')[0]}.{{0..{g.kv_layers - 1}}}.key|value"
                           f"{'':<3} {kv_specs[0].dtype:<8} {shape(kv_specs[0])}")
    out.extend(interop_lines(m))
    v = m.validation
    if v.get("skipped"):
        out.append("validation skipped at export (--no-validate)")
    else:
        out.append(f"validation {'passed' if v.get('passed') else 'FAILED'} ({v.get('method', 'full')}, atol "
                   f"{v.get('atol')} x max|ref|)")
        for name, r in v.get("outputs", {}).items():
            out.append(f"  {name:<30} max |err| {r['max_abs_err']:.2e}  allowed {r['allowed']:.2e}")
        for graph, blocks in v.get("blocks", {}).items():  # streamed: the worst block of each graph
            name, r = max(blocks.items(), key=lambda kv: kv[1]["max_abs_err"] / kv[1]["allowed"])
            out.append(f"  {graph + ' blocks':<30} max |err| {r['max_abs_err']:.2e}  allowed {r['allowed']:.2e}  "
                       f"(worst: {name}, of {len(blocks)})")
    return out


def inspect(args) -> int:
    art = Path(args.artifact)
    m = read_manifest(art)
    if args.verify:
        verify_files(art, m)
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
    else:
        print("\n".join(describe(m, art, args.verify)))
    return 0
