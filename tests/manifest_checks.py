"""What "this export was validated" means in a test: passed, every output within its allowed error, every mode checked.

`assert manifest.validation` (or `validation["passed"]` alone) holds for a report that says little; use
`assert_validated(manifest)` instead.
"""

from __future__ import annotations

import math


def assert_validated(manifest, atol: float | None = None, method: str | None = None) -> dict:
    """Assert `manifest` (a Manifest, a PackManifest or their dict) records a real, passing validation; returns it.

    Checks: not skipped, `passed is True`, at least one output compared, each output's worst error finite and
    within its allowed error (and `atol`/`method` when given), for an artifact computing with int8 activations
    the int8 arithmetic report within its bound, and, for an artifact, each mode's outputs present (a mode
    never run cannot pass silently).
    """
    d = manifest if isinstance(manifest, dict) else manifest.to_dict()
    v = d["validation"]
    assert not v.get("skipped"), f"validation was skipped: {v}"
    assert v["passed"] is True, v
    outputs = v["outputs"]
    assert outputs, f"validation compared no output: {v}"
    for name, r in outputs.items():  # an adapter pack's report (per mode) records no `allowed`: its own check raised
        assert math.isfinite(r["max_abs_err"]) and r["max_abs_err"] <= r.get("allowed", math.inf), (name, r)
    compute = ((d.get("model") or {}).get("quantization") or {}).get("compute")
    if compute == "int8" and "modes" in d:  # an artifact computing with int8 activations: both steps ran
        assert v["int8_arithmetic"], v
    for name, r in v.get("int8_arithmetic", {}).items():
        assert math.isfinite(r["rel_rms"]) and r["rel_rms"] <= r["allowed_rel_rms"], (name, r)
    if atol is not None:
        assert v["atol"] == atol, v["atol"]
    if method is not None:
        assert v["method"] == method, v["method"]
    for mode in d.get("modes", {}):
        assert any(name == mode or name.startswith(f"{mode}.") for name in outputs), \
            f"mode {mode} was not validated: {list(outputs)}"
    return v
