"""`export_pack`: one adapter's own weights -> an adapter pack against a base artifact, validated, atomic.

The pack's weights come from the same graph builder as a full export (export/artifact.py
`build_graphs`, with the base artifact's quantization), keeping only the adapter slots the
base declares (adapter_pack.py). Refused, each with one ExportError: a base artifact that
is not a base (`--as-base`), an adapter trained on another base checkpoint, a shadow whose
shape does not fill the base's slots, and trained vocabulary heads (they are vocabulary-sized:
export a full artifact for those; a classifier's label heads are small and travel in the pack). The pack is validated through the runtime (base + pack) against
PyTorch before it is published.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from shadow_edge import __version__
from shadow_edge.adapter_pack import (PARAMS_FILE, PackManifest, base_identity, read_pack_manifest,
                                      write_pack_manifest)
from shadow_edge.core.checkpoint import load_spec
from shadow_edge.core.model import ShadowModel, StepInputs
from shadow_edge.errors import ExportError
from shadow_edge.export.artifact import build_graphs, stderr_progress
from shadow_edge.export.options import ExportOptions
from shadow_edge.export.out_dir import (PARTIAL_MARKER, check_out, clean_stale_partials, signals_clean_up,
                                        write_partial_then_publish, writer_lock)
from shadow_edge.export.pack_tensors import adapter_slots
from shadow_edge.manifest import Manifest, file_table, read_manifest, verify_files

VALIDATION_MODES = ("shadow_only", "base_shadow")


def export_pack(base: str | Path, adapter: str | Path, out: str | Path, against: str | Path,
                shadow_model: str | Path | None = None, options: ExportOptions = ExportOptions(),
                progress: Callable[[str], None] = stderr_progress, adapter_name: str | None = None) -> PackManifest:
    """Export the adapter at `adapter` (trained on `base`) as a pack for the base artifact `against`."""
    out, against = Path(out), Path(against)
    inputs = {"base": Path(base), "adapter": Path(adapter), "base artifact": against}
    if shadow_model is not None:
        inputs["shadow model"] = Path(shadow_model)
    check_out(out, options.force, inputs)
    if options.as_base or options.plain_backbone or options.ort_format:
        raise ExportError("--against writes an adapter pack; --as-base, --plain-backbone and --ort-format belong to "
                          "full artifacts (drop them, or drop --against)")
    started = time.perf_counter()
    base_manifest = read_manifest(against)
    if options.quantize not in ("none", base_manifest.quantization):
        raise ExportError(f"--quantize {options.quantize}: the base artifact {against} is {base_manifest.quantization}"
                          "; a pack is quantized as its base (drop --quantize)")
    if not base_manifest.adapter_slots.get("params"):
        raise ExportError(f"--against {against}: is not a base artifact (its manifest has no adapter_slots); export "
                          "it with `shadow-edge export --base B --adapter A --out BASE_ART --as-base`")
    verify_files(against, base_manifest)
    with signals_clean_up(), writer_lock(out):
        for stale in clean_stale_partials(out):
            progress(f"removed the partial export {stale} of a process that is gone")
        check_out(out, options.force, inputs)
        progress(f"reading checkpoint: base {base}, adapter {adapter}")
        spec = load_spec(base, adapter, shadow_model, adapter_name)
        _check_base_checkpoint(spec.source, base_manifest, against)
        spec, params = _pack_params(spec, base_manifest, against, options, progress)
        pack = write_partial_then_publish(
            out, options.force, inputs, lambda tmp: _write(spec, params, base_manifest, against, tmp, options, progress),
            "adapter pack")
    progress(f"done in {time.perf_counter() - started:.1f}s: {out} ({pack.nbytes / 1e6:.2f} MB)")
    return pack


def _check_base_checkpoint(source: dict, base: Manifest, against: Path) -> None:
    mine = set((source.get("files") or {}).get("base", {}).values())
    theirs = set((base.source.get("files") or {}).get("base", {}).values())
    if mine != theirs:
        raise ExportError(f"--base: its files' sha256s differ from those the base artifact {against} was exported "
                          "from; an adapter pack needs the very same base checkpoint (export a full artifact, or "
                          "a new base artifact with --as-base, for another base)")


def _base_options(base: Manifest, options: ExportOptions) -> ExportOptions:
    """The pack is built as the base was: same quantization (scheme, block size, compute)."""
    q = base.model.get("quantization") or {}
    if base.quantization == "none":
        return ExportOptions(atol=options.atol)
    return ExportOptions(quantize=base.quantization, block_size=int(q.get("block_size", options.block_size)),
                         quant_compute=q.get("compute", options.quant_compute), atol=options.atol,
                         quant_scheme=q.get("base_layers", "symmetric"),  # older artifacts: symmetric everywhere
                         shadow_quant_scheme=q.get("shadow_layers", "symmetric"),
                         vocab_quantize=q.get("vocabulary", base.quantization).split()[0])


def _pack_params(spec, base: Manifest, against: Path, options: ExportOptions, progress) -> tuple:
    """(spec as built, graph -> weight key -> array) of the adapter slots; ExportError where they do not fit."""
    spec, _, store, _, builders = build_graphs(spec, _base_options(base, options), progress)
    slots = adapter_slots(builders, store)
    want = base.adapter_slots
    if slots["heads"] != want.get("heads"):
        raise ExportError(f"--adapter: its vocabulary heads (lm_head / shadow_lm_head) differ from the base "
                          f"artifact {against}'s; packs share the base's vocabulary heads, so an adapter with trained "
                          "vocabulary heads needs a full artifact (export without --against)")
    if slots["params"] != want.get("params"):
        diff = _first_difference(slots["params"], want.get("params") or {})
        raise ExportError(f"--adapter: its shadow/injection/update weights do not fit the base artifact {against}'s "
                          f"adapter slots ({diff}); a pack needs the same shadow architecture, adapted layers, "
                          "injection rank and gate size as the adapter the base was exported with (a base exported by "
                          "an older shadow-edge, whose slots have other shapes, needs exporting again)")
    return spec, {g: {k: store.array(k) for k in p} for g, p in slots["params"].items()}


def _first_difference(have: dict, want: dict) -> str:
    for graph in sorted(set(have) | set(want)):
        a, b = have.get(graph, {}), want.get(graph, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"graph {graph!r} weight {key!r}: adapter has {a.get(key)}, base slot is {b.get(key)}"
    return "none"


def _write(spec, params: dict, base: Manifest, against: Path, tmp: Path, options: ExportOptions,
           progress) -> PackManifest:
    progress(f"writing {PARAMS_FILE} ({sum(a.nbytes for p in params.values() for a in p.values()) / 1e6:.2f} MB)")
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))
                        for p in params.values() for k, a in p.items()})
    fmt.export_adapter(str(tmp / PARAMS_FILE))
    pack = PackManifest(
        tool_version=__version__, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=spec.source, base_identity=base_identity(base),
        params={g: {k: [str(a.dtype), list(a.shape)] for k, a in p.items()} for g, p in params.items()},
        validation={"passed": None, "skipped": True},
        files={n: e for n, e in file_table(tmp).items() if n != PARTIAL_MARKER})
    write_pack_manifest(tmp, pack)
    if options.validate:
        pack = _validate(spec, pack, against, tmp, options, progress)
        write_pack_manifest(tmp, pack)
    return read_pack_manifest(tmp)


def _validate(spec, pack: PackManifest, against: Path, tmp: Path, options: ExportOptions, progress) -> PackManifest:
    """Base + this pack through the runtime vs PyTorch: logits of a left-padded batch in both modes."""
    from shadow_edge.runtime import ShadowRuntime

    progress("validating the pack through the runtime (base artifact + pack) against PyTorch")
    with tempfile.TemporaryDirectory() as scratch:  # the partial dir carries a marker the loader does not list
        copy = Path(scratch) / "pack"
        copy.mkdir()
        shutil.copy2(tmp / PARAMS_FILE, copy / PARAMS_FILE)
        write_pack_manifest(copy, pack)
        # verify=False: export_pack hashed the base already, and the pack's files were just written
        rt = ShadowRuntime.load(against, adapters={"pack": copy}, modes=VALIDATION_MODES, verify=False)
        rng = np.random.default_rng(0)
        ids = rng.integers(0, spec.vocab_size, size=(2, 6))  # [2, 6]
        mask = np.ones_like(ids)
        mask[1, :2] = 0  # left padding
        ref_model, atol = ShadowModel(spec), _base_options(rt.manifest, options).validation_atol
        report = {}
        for mode in VALIDATION_MODES:
            ours = rt.forward(ids, mask, mode=mode, adapter="pack")  # [2, 6, V]
            ref = ref_model.forward(StepInputs.full(torch.from_numpy(ids), torch.from_numpy(mask)), mode)[0].numpy()
            real = mask.astype(bool)
            err, scale = float(np.abs(ours[real] - ref[real]).max()), float(np.abs(ref[real]).max())
            report[mode] = {"max_abs_err": err}
            if err > atol * max(1.0, scale):
                raise ExportError(f"pack validation failed: {mode} logits differ from PyTorch by {err:.3e} "
                                  f"(allowed {atol * max(1.0, scale):.3e}); this is an exporter bug, please report it")
    return PackManifest(**{**pack.to_dict(), "validation": {"passed": True, "atol": atol, "outputs": report}})
